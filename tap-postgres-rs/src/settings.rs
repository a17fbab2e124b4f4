//! The tap's settings: one list that parses the config and renders `--about`
//! and `--help`, on top of pg-connect's connection settings.

use std::collections::BTreeMap;

use pg_connect::{ConnectionSettings, CONNECTION_SETTINGS};
use serde_json::Value;
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
)
.aliases(&["replication_max_run_seconds"]);
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

const STREAM_OPTIONS: Setting = Setting::new(
    "stream_options",
    SettingKind::Object,
    "Per-stream options, by tap_stream_id: {\"<stream id>\": {\"custom_where_clauses\": [\"<SQL condition>\", ...]}} reads only the rows every clause matches (ANDed), in all three methods; LOG_BASED filters on the server through the publication's row filter (PostgreSQL 15+; refused on older servers), where PostgreSQL allows only replica identity columns and immutable built-in functions in the clauses. A clause is one SQL condition: a `;` or an unbalanced parenthesis, quote or comment is refused.",
);
const MAX_RECORD_COUNT: Setting = Setting::new(
    "max_record_count",
    SettingKind::Integer,
    "For trial runs: each stream stops after this many RECORDs. FULL_TABLE and INCREMENTAL stop as if interrupted, so the next run goes on from the bookmark (the rows it sends again, those changed before a FULL_TABLE bookmark or at an INCREMENTAL one, do not count); LOG_BASED stops reading the log at the first transaction boundary after a stream reached it (its initial copy is never cut short). Default: no limit.",
);
const USE_SECONDARY: Setting = Setting::new(
    "use_secondary",
    SettingKind::Boolean,
    "Read FULL_TABLE and INCREMENTAL streams, and discover, from a standby (`secondary_host`) instead of the primary; LOG_BASED keeps its slot, its initial copy and its replication on the primary (pipelinewise's setting).",
)
.default_boolean(false);
const SECONDARY_HOST: Setting = Setting::new(
    "secondary_host",
    SettingKind::String,
    "With use_secondary: the standby's host (the other connection settings, user and TLS included, are the primary's).",
);
const SECONDARY_PORT: Setting = Setting::new(
    "secondary_port",
    SettingKind::Integer,
    "With use_secondary: the standby's port. Default: `port`.",
);

const MAX_PARALLEL_STREAMS: Setting = Setting::new(
    "max_parallel_streams",
    SettingKind::Integer,
    "FULL_TABLE and INCREMENTAL streams read at once, each on its own connection, all from one snapshot (pg_export_snapshot); their messages interleave, whole. Memory grows with this number (a few MB per stream). 1: one stream after another, each in its own snapshot.",
)
.default_integer(1);
const KEYLESS_ROW_IDENTITY: Setting = Setting::new(
    "keyless_row_identity",
    SettingKind::Boolean,
    "FULL_TABLE streams without a key (tables without a primary key, views): send each row's identity as the stream's key, `_sdc_source_ctid` (the row's ctid) or, for relations without ctid, `_sdc_row_number` (its position in the copy), so that rows sent again after an interrupted run or a re-copy replace themselves in any target instead of landing twice. Off: such streams have no key and are appended.",
)
.default_boolean(true);

const SPLIT_TABLE_MIN_PAGES: Setting = Setting::new(
    "split_table_min_pages",
    SettingKind::Integer,
    "With max_parallel_streams > 1: a FULL_TABLE stream of a table with at least this many pages (of block_size, 8 kB by default: 10000 pages is about 80 MB) is read as up to max_parallel_streams ctid ranges at once, all from one snapshot, each range resumable on its own. PostgreSQL 14+ reads each range with a TID range scan; on 12 and 13 every range scans the whole table (correct, but costing one full scan per range). 0: never split.",
)
.default_integer(10_000);

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
    STREAM_OPTIONS,
    MAX_RECORD_COUNT,
    USE_SECONDARY,
    SECONDARY_HOST,
    SECONDARY_PORT,
    MAX_PARALLEL_STREAMS,
    KEYLESS_ROW_IDENTITY,
    SPLIT_TABLE_MIN_PAGES,
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

/// What `stream_options` sets for one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `custom_where_clauses`, each checked by [`crate::row_filter::check_clause`].
    pub where_clauses: Vec<String>,
}

/// The options a stream's entry in `stream_options` may set.
const STREAM_OPTION_KEYS: &[&str] = &["custom_where_clauses"];

/// `stream_options`, by tap_stream_id. An unknown option is an error: a
/// misspelled filter would otherwise send every row.
fn stream_options(config: &Config) -> Result<BTreeMap<String, StreamOptions>, ConfigError> {
    let invalid = |key: String, problem: String| ConfigError::Invalid { key, problem };
    let mut all = BTreeMap::new();
    for (stream, value) in config.object(&STREAM_OPTIONS)?.unwrap_or_default() {
        let at = format!("{}.{stream}", STREAM_OPTIONS.name);
        let Value::Object(options) = value else {
            return Err(invalid(
                at,
                "must be an object such as {\"custom_where_clauses\": [\"id > 0\"]}".into(),
            ));
        };
        let mut parsed = StreamOptions::default();
        for (key, value) in options {
            let at = format!("{at}.{key}");
            if !STREAM_OPTION_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    at,
                    format!(
                        "is not a stream option (the options are: {})",
                        STREAM_OPTION_KEYS.join(", ")
                    ),
                ));
            }
            let clauses = match value {
                Value::String(s) => vec![s],
                Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        other => Err(invalid(
                            at.clone(),
                            format!("must be a list of SQL conditions (strings), not {other}"),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(invalid(
                        at,
                        format!("must be a list of SQL conditions (strings), not {other}"),
                    ))
                }
            };
            for (i, clause) in clauses.iter().enumerate() {
                crate::row_filter::check_clause(clause)
                    .map_err(|problem| invalid(format!("{at}[{i}]"), problem))?;
            }
            parsed.where_clauses = clauses;
        }
        all.insert(stream, parsed);
    }
    Ok(all)
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
    /// `stream_options`, by tap_stream_id.
    pub stream_options: BTreeMap<String, StreamOptions>,
    /// `max_record_count`: RECORDs per stream and run.
    pub max_record_count: Option<u64>,
    /// With `use_secondary`: where FULL_TABLE, INCREMENTAL and discovery read.
    pub secondary: Option<ConnectionSettings>,
    /// FULL_TABLE and INCREMENTAL streams read at once (1: one after another).
    pub max_parallel_streams: usize,
    /// See [`crate::record::RowIdentity`].
    pub keyless_row_identity: bool,
    /// Tables of at least this many pages are read in ctid ranges (None: never).
    pub split_table_min_pages: Option<u64>,
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
        let max_record_count = match config.integer(&MAX_RECORD_COUNT)? {
            None => None,
            Some(n) if n > 0 => Some(n as u64),
            Some(n) => {
                return Err(ConfigError::Invalid {
                    key: MAX_RECORD_COUNT.name.into(),
                    problem: format!("must be a positive number of records, not {n}"),
                })
            }
        };
        let secondary = if config.boolean_or_default(&USE_SECONDARY)? {
            let host = config
                .string(&SECONDARY_HOST)?
                .filter(|h| !h.trim().is_empty())
                .ok_or_else(|| ConfigError::Invalid {
                    key: SECONDARY_HOST.name.into(),
                    problem: "is required with use_secondary: true (the standby's host)".into(),
                })?;
            let port = match config.integer(&SECONDARY_PORT)? {
                None => connection.port,
                Some(p) => u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                    ConfigError::Invalid {
                        key: SECONDARY_PORT.name.into(),
                        problem: format!("must be a port number (1-65535), not {p}"),
                    }
                })?,
            };
            Some(ConnectionSettings {
                host,
                port,
                ..connection.clone()
            })
        } else {
            None
        };
        let max_parallel_streams = config.integer_or_default(&MAX_PARALLEL_STREAMS)?;
        if !(1..=1024).contains(&max_parallel_streams) {
            return Err(ConfigError::Invalid {
                key: MAX_PARALLEL_STREAMS.name.into(),
                problem: format!("must be from 1 to 1024, not {max_parallel_streams}"),
            });
        }
        let split_table_min_pages = match config.integer_or_default(&SPLIT_TABLE_MIN_PAGES)? {
            0 => None,
            n if n > 0 => Some(n as u64),
            n => {
                return Err(ConfigError::Invalid {
                    key: SPLIT_TABLE_MIN_PAGES.name.into(),
                    problem: format!("must be a number of pages (0: never split), not {n}"),
                })
            }
        };
        Ok(TapSettings {
            split_table_min_pages,
            stream_options: stream_options(config)?,
            max_record_count,
            secondary,
            max_parallel_streams: max_parallel_streams as usize,
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
        assert_eq!(
            s.max_parallel_streams, 1,
            "one stream at a time unless asked"
        );
        let bad = json!({"user": "u", "database": "d", "max_parallel_streams": 0});
        assert_eq!(
            TapSettings::from_config(&config(bad))
                .unwrap_err()
                .to_string(),
            "config: `max_parallel_streams` must be from 1 to 1024, not 0"
        );
        let missing = json!({"database": "d"});
        assert_eq!(
            TapSettings::from_config(&config(missing))
                .unwrap_err()
                .to_string(),
            "config: `user` is required"
        );
    }

    #[test]
    fn secondary_is_the_primary_but_for_host_and_port() {
        let c = config(
            json!({"host": "primary", "port": 5433, "user": "u", "database": "d",
            "password": "pw", "use_secondary": true, "secondary_host": "standby"}),
        );
        let s = TapSettings::from_config(&c).unwrap();
        let standby = s.secondary.unwrap();
        assert_eq!((standby.host.as_str(), standby.port), ("standby", 5433));
        assert_eq!(standby.password.as_deref(), Some("pw"));
        let c = config(
            json!({"user": "u", "database": "d", "use_secondary": "true",
            "secondary_host": "standby", "secondary_port": "6432"}),
        );
        assert_eq!(
            TapSettings::from_config(&c)
                .unwrap()
                .secondary
                .unwrap()
                .port,
            6432
        );
        let c = config(json!({"user": "u", "database": "d", "secondary_host": "standby"}));
        assert!(TapSettings::from_config(&c).unwrap().secondary.is_none());
        let c = config(json!({"user": "u", "database": "d", "use_secondary": true}));
        assert_eq!(
            TapSettings::from_config(&c).unwrap_err().to_string(),
            "config: `secondary_host` is required with use_secondary: true (the standby's host)"
        );
    }
}
