//! The tap's settings: one list that parses the config and renders `--about`
//! and `--help`, on top of pg-connect's connection settings.

use pg_connect::{ConnectionSettings, CONNECTION_SETTINGS};
use singer_core::{Config, ConfigError, Setting, SettingKind};

/// Environment variables `TAP_POSTGRES_RS_<SETTING>` fill settings no file set.
pub const ENV_PREFIX: &str = "TAP_POSTGRES_RS";

const FILTER_SCHEMAS: Setting = Setting::new(
    "filter_schemas",
    SettingKind::Array,
    "Schemas to discover (a list or a comma-separated string); default: every non-system schema.",
);
const DEFAULT_METHOD: Setting = Setting::new(
    "default_replication_method",
    SettingKind::String,
    "Replication method for streams whose catalog names none (the catalog always wins).",
)
.default_text("FULL_TABLE")
.choices(&["FULL_TABLE", "INCREMENTAL", "LOG_BASED"]);
const STATE_INTERVAL: Setting = Setting::new(
    "state_interval_records",
    SettingKind::Integer,
    "Emit a STATE message at least every this many records (and at the end of every stream).",
)
.default_integer(10_000);

const SPECIAL_VALUES: Setting = Setting::new(
    "special_values",
    SettingKind::String,
    "How a SCHEMA admits values its plain type cannot hold (NaN, infinity, BC dates, arrays with bounds), which travel as their Postgres text: widen_schema writes a new SCHEMA widening that one column before its first such value; string_columns declares every column that can hold one as also a string from the start (for targets that cannot take a SCHEMA change mid-stream).",
)
.default_text("widen_schema")
.choices(&["widen_schema", "string_columns"]);

/// The tap's own settings (connection settings come first in [`all`]).
const SLOT_NAME: Setting = Setting::new(
    "replication_slot_name",
    SettingKind::String,
    "LOG_BASED: the logical replication slot (created on first use). Default: tap_postgres_rs_<database>.",
);
const PUBLICATION_NAME: Setting = Setting::new(
    "publication_name",
    SettingKind::String,
    "LOG_BASED: the publication to read through; created for the selected tables (or extended) when this role may, else it must exist. Default: tap_postgres_rs_<database>.",
);
const MAX_RUN_SECONDS: Setting = Setting::new(
    "max_run_seconds",
    SettingKind::Integer,
    "LOG_BASED: stop reading the log after this many seconds, at a transaction boundary (the next run goes on from there). Default: no limit; a run always ends at the WAL position it saw at start.",
);
const SLOT_LAG_WARNING: Setting = Setting::new(
    "slot_lag_warning_bytes",
    SettingKind::Integer,
    "LOG_BASED: warn when the slot keeps more WAL than this on the server.",
)
.default_integer(1 << 30);

const ON_LOST_CHANGES: Setting = Setting::new(
    "on_lost_changes",
    SettingKind::String,
    "LOG_BASED: what to do when the state's position can no longer be read from the slot (the slot was dropped, recreated or invalidated by max_slot_wal_keep_size, or has moved past it): `fail` says so and stops; `resync` copies the affected streams again as new table versions.",
)
.default_text("fail")
.choices(&["fail", "resync"]);

const KEYLESS_ROW_IDENTITY: Setting = Setting::new(
    "keyless_row_identity",
    SettingKind::Boolean,
    "FULL_TABLE streams without a key (tables without a primary key, views): send each row's identity as the stream's key, `_sdc_source_ctid` (the row's ctid) or, for relations without ctid, `_sdc_row_number` (its position in the copy), so that rows sent again after an interrupted run or a re-copy replace themselves in any target instead of landing twice. Off: such streams have no key and are appended.",
)
.default_boolean(true);

pub const TAP_SETTINGS: &[Setting] = &[
    FILTER_SCHEMAS,
    DEFAULT_METHOD,
    STATE_INTERVAL,
    SPECIAL_VALUES,
    SLOT_NAME,
    PUBLICATION_NAME,
    MAX_RUN_SECONDS,
    SLOT_LAG_WARNING,
    ON_LOST_CHANGES,
    KEYLESS_ROW_IDENTITY,
];

/// Every setting, for `--about`, `--help` and the environment.
pub fn all() -> Vec<Setting> {
    CONNECTION_SETTINGS
        .iter()
        .chain(TAP_SETTINGS)
        .copied()
        .collect()
}

/// How a stream is replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    FullTable,
    Incremental,
    LogBased,
}

impl Method {
    /// Parses `FULL_TABLE`, `INCREMENTAL`, `LOG_BASED` (any case, `-` or `_`).
    pub fn parse(s: &str) -> Option<Method> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "FULL_TABLE" => Some(Method::FullTable),
            "INCREMENTAL" => Some(Method::Incremental),
            "LOG_BASED" => Some(Method::LogBased),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::FullTable => "FULL_TABLE",
            Method::Incremental => "INCREMENTAL",
            Method::LogBased => "LOG_BASED",
        }
    }
}

/// LOG_BASED, when changes between the state's position and the slot's are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLostChanges {
    Fail,
    Resync,
}

/// How SCHEMAs admit special values (see [`crate::record::Widening`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialValues {
    WidenSchema,
    StringColumns,
}

/// The validated config.
#[derive(Debug)]
pub struct TapSettings {
    pub connection: ConnectionSettings,
    /// Empty: every non-system schema.
    pub filter_schemas: Vec<String>,
    pub default_method: Method,
    pub state_interval: u64,
    pub special_values: SpecialValues,
    pub replication_slot: String,
    pub publication: String,
    pub max_run_seconds: Option<u64>,
    pub slot_lag_warning_bytes: i64,
    pub on_lost_changes: OnLostChanges,
    /// See [`crate::record::RowIdentity`].
    pub keyless_row_identity: bool,
}

impl TapSettings {
    pub fn from_config(config: &Config) -> Result<TapSettings, ConfigError> {
        let connection = ConnectionSettings::from_config(config)?;
        let filter_schemas = config.string_list(&FILTER_SCHEMAS)?.unwrap_or_default();
        let method = config.string_or_default(&DEFAULT_METHOD)?;
        let default_method = Method::parse(&method).ok_or_else(|| ConfigError::Invalid {
            key: DEFAULT_METHOD.name.into(),
            problem: format!("must be one of FULL_TABLE, INCREMENTAL, LOG_BASED, not {method:?}"),
        })?;
        let interval = config.integer_or_default(&STATE_INTERVAL)?;
        if interval < 1 {
            return Err(ConfigError::Invalid {
                key: STATE_INTERVAL.name.into(),
                problem: format!("must be at least 1, not {interval}"),
            });
        }
        let special_values = match config.string_or_default(&SPECIAL_VALUES)?.trim() {
            "widen_schema" => SpecialValues::WidenSchema,
            "string_columns" => SpecialValues::StringColumns,
            other => {
                return Err(ConfigError::Invalid {
                    key: SPECIAL_VALUES.name.into(),
                    problem: format!("must be one of widen_schema, string_columns, not {other:?}"),
                })
            }
        };
        let derived =
            pg_logical::slot::object_name(&format!("tap_postgres_rs_{}", connection.database));
        let object = |setting: &Setting| -> Result<String, ConfigError> {
            Ok(
                match config.string(setting)?.filter(|v| !v.trim().is_empty()) {
                    Some(v) => v,
                    None => derived.clone(),
                },
            )
        };
        let replication_slot = object(&SLOT_NAME)?;
        if replication_slot != pg_logical::slot::object_name(&replication_slot) {
            return Err(ConfigError::Invalid {
                key: SLOT_NAME.name.into(),
                problem: format!(
                    "must use only lower-case letters, digits and underscores (at most 63), not {replication_slot:?}"
                ),
            });
        }
        let max_run_seconds = match config.integer(&MAX_RUN_SECONDS)? {
            None | Some(0) => None,
            Some(n) if n > 0 => Some(n as u64),
            Some(n) => {
                return Err(ConfigError::Invalid {
                    key: MAX_RUN_SECONDS.name.into(),
                    problem: format!("must be a positive number of seconds, not {n}"),
                })
            }
        };
        let on_lost_changes = match config.string_or_default(&ON_LOST_CHANGES)?.as_str() {
            "fail" => OnLostChanges::Fail,
            "resync" => OnLostChanges::Resync,
            other => {
                return Err(ConfigError::Invalid {
                    key: ON_LOST_CHANGES.name.into(),
                    problem: format!("must be fail or resync, not {other:?}"),
                })
            }
        };
        Ok(TapSettings {
            on_lost_changes,
            keyless_row_identity: config.boolean_or_default(&KEYLESS_ROW_IDENTITY)?,
            publication: object(&PUBLICATION_NAME)?,
            replication_slot,
            max_run_seconds,
            slot_lag_warning_bytes: config.integer_or_default(&SLOT_LAG_WARNING)?,
            connection,
            filter_schemas,
            default_method,
            state_interval: interval as u64,
            special_values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: serde_json::Value) -> Config {
        Config::from_map(v.as_object().unwrap().clone())
    }

    #[test]
    fn parses_and_names_bad_keys() {
        let base = json!({"host": "h", "port": "5433", "user": "u", "dbname": "d",
            "filter_schemas": "a, b", "default_replication_method": "incremental"});
        let s = TapSettings::from_config(&config(base)).unwrap();
        assert_eq!(s.connection.port, 5433);
        assert_eq!(s.connection.database, "d");
        assert_eq!(s.filter_schemas, vec!["a", "b"]);
        assert_eq!(s.default_method, Method::Incremental);
        assert_eq!(s.state_interval, 10_000);

        let bad = json!({"user": "u", "database": "d", "state_interval_records": "x"});
        assert_eq!(
            TapSettings::from_config(&config(bad))
                .unwrap_err()
                .to_string(),
            "config: `state_interval_records` must be a whole number, not \"x\""
        );
        let bad = json!({"user": "u", "database": "d", "default_replication_method": "SOMETIMES"});
        assert_eq!(
            TapSettings::from_config(&config(bad)).unwrap_err().to_string(),
            "config: `default_replication_method` must be one of FULL_TABLE, INCREMENTAL, LOG_BASED, not \"SOMETIMES\""
        );
        let missing = json!({"database": "d"});
        assert_eq!(
            TapSettings::from_config(&config(missing))
                .unwrap_err()
                .to_string(),
            "config: `user` is required"
        );
    }
}
