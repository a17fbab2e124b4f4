//! The target's settings: one list that both parses the config and renders
//! `--about`, plus the connection settings shared with the tap.

use std::collections::HashMap;

use singer_core::{Config, ConfigError, Setting, SettingKind};

/// Environment variable prefix (`TARGET_POSTGRES_RS_HOST`, ...).
pub const ENV_PREFIX: &str = "TARGET_POSTGRES_RS";

const DEFAULT_TARGET_SCHEMA: Setting = Setting::new(
    "default_target_schema",
    SettingKind::String,
    "Schema every stream lands in (unless `schema_mapping` maps its source schema). Unset: the stream's `<schema>-` prefix, or `public`.",
);
const SCHEMA_MAPPING: Setting = Setting::new(
    "schema_mapping",
    SettingKind::Object,
    "Source schema → target schema, e.g. `{\"public\": \"raw\"}` (a value may also be `{\"target_schema\": \"raw\"}`).",
);
const ADD_RECORD_METADATA: Setting = Setting::new(
    "add_record_metadata",
    SettingKind::Boolean,
    "Add the `_sdc_*` metadata columns (extracted/received/batched/deleted at, sequence, table version).",
)
.aliases(&["add_metadata_columns"])
.default_boolean(true);
const HARD_DELETE: Setting = Setting::new(
    "hard_delete",
    SettingKind::Boolean,
    "Delete rows whose record has `_sdc_deleted_at` set (and rows of older versions on ACTIVATE_VERSION) instead of marking them.",
)
.default_boolean(false);
const LOAD_METHOD: Setting = Setting::new(
    "load_method",
    SettingKind::String,
    "`upsert` (last record per key wins), `append-only` (every record is a new row), `overwrite` (each stream's table is emptied before its first batch).",
)
.default_text("upsert")
.choices(&["upsert", "append-only", "overwrite"]);
const BATCH_SIZE_ROWS: Setting = Setting::new(
    "batch_size_rows",
    SettingKind::Integer,
    "Rows a stream buffers before everything pending is committed and the newest STATE is emitted.",
)
.default_integer(100_000);
const SANITIZE_NUL: Setting = Setting::new(
    "sanitize_null_text_characters",
    SettingKind::Boolean,
    "Strip NUL (`\\u0000`) characters from text and JSON values (Postgres can't store them); default: fail naming the field.",
)
.default_boolean(false);
const INTERPRET_CONTENT_ENCODING: Setting = Setting::new(
    "interpret_content_encoding",
    SettingKind::Boolean,
    "Land `contentEncoding: base16` strings without an `x-sql-datatype` as bytea (decoded: `0x` prefix stripped, odd length left-padded with 0); default: text, as sent.",
)
.default_boolean(false);
const NOTIFY_CHANNEL: Setting = Setting::new(
    "notify_channel",
    SettingKind::String,
    "After each committed flush, `NOTIFY` this channel with `{\"tables\":[{\"schema\",\"table\",\"rows\"}]}`. Unset: off.",
);
const TEXT_COPY: Setting = Setting::new(
    "text_copy",
    SettingKind::Boolean,
    "Force text COPY for every column (binary COPY is used where every column has a binary form), for comparison.",
)
.default_boolean(false);
const PROCESS_ACTIVATE_VERSION: Setting = Setting::new(
    "process_activate_version_messages",
    SettingKind::Boolean,
    "Act on ACTIVATE_VERSION: rows of older table versions are deleted (`hard_delete`) or marked deleted. Off: ACTIVATE_VERSION is ignored and those rows are kept.",
)
.aliases(&["activate_version"])
.default_boolean(true);
const VALIDATE_RECORDS: Setting = Setting::new(
    "validate_records",
    SettingKind::Boolean,
    "Check each record against its stream's SCHEMA (JSON Schema Draft 7, formats checked) before loading; a mismatch stops the load naming the stream, input line and field. Off: Postgres' casts guard the types.",
)
.default_boolean(false);
const FLATTENING_ENABLED: Setting = Setting::new(
    "flattening_enabled",
    SettingKind::Boolean,
    "Spread nested object properties into `parent__child` columns, down to `flattening_max_depth` levels (as Meltano SDK targets do); deeper objects and arrays land as jsonb.",
)
.default_boolean(false);
/// pipelinewise' name: setting it above 0 turns flattening on (its default, 0, is off).
const PIPELINEWISE_MAX_LEVEL: &str = "data_flattening_max_level";
const FLATTENING_MAX_DEPTH: Setting = Setting::new(
    "flattening_max_depth",
    SettingKind::Integer,
    "Levels of nesting `flattening_enabled` spreads into columns (1: `a__b`; 2: `a__b__c`); required with it. pipelinewise' `data_flattening_max_level` above 0 also turns flattening on.",
)
.aliases(&[PIPELINEWISE_MAX_LEVEL]);

const SELECT_PERMISSION: Setting = Setting::new(
    "default_target_schema_select_permission",
    SettingKind::Array,
    "Roles (a name or a list) granted USAGE on every schema and SELECT on every table the target creates, so they can read new tables without a DBA (pipelinewise's name). A `schema_mapping` entry's `target_schema_select_permissions` replaces it for that source schema. Unset: no grants.",
);

const PARALLELISM: Setting = Setting::new(
    "parallelism",
    SettingKind::Integer,
    "Streams loaded at once, each table on one of this many workers with its own connections and transactions (pipelinewise's name); a STATE is still printed only after every stream's rows before it are committed. Key-less streams all load on one worker. `0`: one per CPU core. `1`: one loader, every flush one transaction.",
)
.default_integer(1);

/// The target's own settings (connection settings come from pg-connect).
pub const TARGET_SETTINGS: &[Setting] = &[
    DEFAULT_TARGET_SCHEMA,
    SCHEMA_MAPPING,
    ADD_RECORD_METADATA,
    HARD_DELETE,
    LOAD_METHOD,
    BATCH_SIZE_ROWS,
    SANITIZE_NUL,
    INTERPRET_CONTENT_ENCODING,
    NOTIFY_CHANNEL,
    TEXT_COPY,
    PROCESS_ACTIVATE_VERSION,
    VALIDATE_RECORDS,
    FLATTENING_ENABLED,
    FLATTENING_MAX_DEPTH,
    SELECT_PERMISSION,
    PARALLELISM,
];

/// How records land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMethod {
    Upsert,
    AppendOnly,
    Overwrite,
}

/// The parsed target settings.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    pub default_target_schema: Option<String>,
    pub schema_mapping: HashMap<String, String>,
    pub add_record_metadata: bool,
    pub hard_delete: bool,
    pub load_method: LoadMethod,
    pub batch_size_rows: usize,
    pub sanitize_nul: bool,
    /// `contentEncoding: base16` (without `x-sql-datatype`) → bytea, decoded.
    pub interpret_content_encoding: bool,
    pub notify_channel: Option<String>,
    /// Text COPY for every column, never binary.
    pub text_copy: bool,
    /// ACTIVATE_VERSION deletes or marks rows of older versions (else ignored).
    pub process_activate_version: bool,
    pub validate_records: bool,
    /// Nesting levels spread into `parent__child` columns; `None`: off.
    pub flattening_max_depth: Option<usize>,
    /// Roles granted USAGE/SELECT on what the target creates.
    pub select_roles: Vec<String>,
    /// Source schema → its `target_schema_select_permissions`, replacing `select_roles`.
    pub schema_select_roles: HashMap<String, Vec<String>>,
    /// Loader workers (1: the one loader, as without the setting).
    pub parallelism: usize,
}

impl TargetSettings {
    pub fn from_config(config: &Config) -> Result<TargetSettings, ConfigError> {
        let invalid = |key: &str, problem: &str| ConfigError::Invalid {
            key: key.to_owned(),
            problem: problem.to_owned(),
        };
        let mut schema_mapping = HashMap::new();
        let mut schema_select_roles = HashMap::new();
        for (source, target) in config.object(&SCHEMA_MAPPING)?.unwrap_or_default() {
            let target = match &target {
                serde_json::Value::String(s) => s.clone(),
                // pipelinewise's shape: {"src": {"target_schema": "dst",
                // "target_schema_select_permissions": ["role"]}}
                serde_json::Value::Object(o) => {
                    if let Some(roles) = o.get("target_schema_select_permissions") {
                        let roles = role_list(roles).ok_or_else(|| {
                            invalid(
                                SCHEMA_MAPPING.name,
                                "`target_schema_select_permissions` must be a role name or a list of role names",
                            )
                        })?;
                        schema_select_roles.insert(source.clone(), roles);
                    }
                    o.get("target_schema")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            invalid(
                                SCHEMA_MAPPING.name,
                                "values must be schema names or {\"target_schema\": name}",
                            )
                        })?
                }
                _ => {
                    return Err(invalid(
                        SCHEMA_MAPPING.name,
                        "values must be schema names or {\"target_schema\": name}",
                    ))
                }
            };
            schema_mapping.insert(source, target);
        }
        let batch = config.integer_or_default(&BATCH_SIZE_ROWS)?;
        if batch < 1 {
            return Err(invalid(BATCH_SIZE_ROWS.name, "must be at least 1"));
        }
        // `string` already checked the value against the declared choices.
        let load_method = match config.string_or_default(&LOAD_METHOD)?.as_str() {
            "append-only" => LoadMethod::AppendOnly,
            "overwrite" => LoadMethod::Overwrite,
            _ => LoadMethod::Upsert,
        };
        let flattening_max_depth = flattening(config)?;
        let parallelism = match config.integer_or_default(&PARALLELISM)? {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n < 0 => {
                return Err(invalid(
                    PARALLELISM.name,
                    "must be 0 (one per core) or more",
                ))
            }
            n => n as usize,
        };
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Ok(TargetSettings {
            default_target_schema: non_empty(config.string(&DEFAULT_TARGET_SCHEMA)?),
            schema_mapping,
            add_record_metadata: config.boolean_or_default(&ADD_RECORD_METADATA)?,
            hard_delete: config.boolean_or_default(&HARD_DELETE)?,
            load_method,
            batch_size_rows: batch as usize,
            sanitize_nul: config.boolean_or_default(&SANITIZE_NUL)?,
            interpret_content_encoding: config.boolean_or_default(&INTERPRET_CONTENT_ENCODING)?,
            notify_channel: non_empty(config.string(&NOTIFY_CHANNEL)?),
            text_copy: config.boolean_or_default(&TEXT_COPY)?,
            process_activate_version: config.boolean_or_default(&PROCESS_ACTIVATE_VERSION)?,
            validate_records: config.boolean_or_default(&VALIDATE_RECORDS)?,
            flattening_max_depth,
            select_roles: config.string_list(&SELECT_PERMISSION)?.unwrap_or_default(),
            schema_select_roles,
            parallelism,
        })
    }
}

/// The flattening depth, when flattening is on: `flattening_enabled` with
/// `flattening_max_depth` (the SDK requires the depth too), or pipelinewise'
/// `data_flattening_max_level` above 0 alone. An explicit
/// `flattening_enabled: false` wins. Depth 0 flattens nothing: off.
fn flattening(config: &Config) -> Result<Option<usize>, ConfigError> {
    let depth = config.integer(&FLATTENING_MAX_DEPTH)?;
    if depth.is_some_and(|d| d < 0) {
        return Err(ConfigError::Invalid {
            key: FLATTENING_MAX_DEPTH.name.to_owned(),
            problem: "must be 0 or more".to_owned(),
        });
    }
    let pipelinewise = Setting::new(PIPELINEWISE_MAX_LEVEL, SettingKind::Integer, "");
    let enabled = if config.raw(&FLATTENING_ENABLED).is_some() {
        config.boolean_or_default(&FLATTENING_ENABLED)?
    } else {
        config.raw(&pipelinewise).is_some() && depth.is_some_and(|d| d > 0)
    };
    if !enabled {
        return Ok(None);
    }
    match depth {
        None => Err(ConfigError::Invalid {
            key: FLATTENING_MAX_DEPTH.name.to_owned(),
            problem: "is required when `flattening_enabled` is on (the levels of nesting to spread into columns, e.g. 1)".to_owned(),
        }),
        Some(0) => Ok(None),
        Some(d) => Ok(Some(d as usize)),
    }
}

/// A role name or a list of them; `None` for anything else.
fn role_list(v: &serde_json::Value) -> Option<Vec<String>> {
    match v {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<TargetSettings, ConfigError> {
        TargetSettings::from_config(&Config::from_map(v.as_object().unwrap().clone()))
    }

    #[test]
    fn defaults() {
        let s = parse(json!({})).unwrap();
        assert!(s.add_record_metadata);
        assert!(!s.hard_delete);
        assert_eq!(s.load_method, LoadMethod::Upsert);
        assert_eq!(s.batch_size_rows, 100_000);
        assert_eq!(s.default_target_schema, None);
        assert_eq!(s.notify_channel, None);
        assert!(!s.text_copy);
        assert!(s.process_activate_version);
        assert!(!s.validate_records);
        assert_eq!(s.flattening_max_depth, None);
    }

    #[test]
    fn activate_version_alias() {
        let on = |v: serde_json::Value| parse(v).unwrap().process_activate_version;
        assert!(!on(json!({"activate_version": false})));
        assert!(!on(json!({"process_activate_version_messages": false})));
        assert!(on(json!({"activate_version": true})));
    }

    #[test]
    fn flattening_names() {
        let depth = |v: serde_json::Value| parse(v).map(|s| s.flattening_max_depth);
        assert_eq!(
            depth(json!({"flattening_enabled": true, "flattening_max_depth": 2})).unwrap(),
            Some(2)
        );
        assert_eq!(depth(json!({"flattening_max_depth": 2})).unwrap(), None);
        assert_eq!(
            depth(json!({"flattening_enabled": true, "flattening_max_depth": 0})).unwrap(),
            None
        );
        // pipelinewise' name alone turns it on; its default, 0, is off.
        assert_eq!(
            depth(json!({"data_flattening_max_level": 3})).unwrap(),
            Some(3)
        );
        assert_eq!(
            depth(json!({"data_flattening_max_level": 0})).unwrap(),
            None
        );
        assert_eq!(
            depth(json!({"data_flattening_max_level": 3, "flattening_enabled": false})).unwrap(),
            None
        );
        assert_eq!(
            depth(json!({"flattening_enabled": true})).unwrap_err().to_string(),
            "config: `flattening_max_depth` is required when `flattening_enabled` is on (the levels of nesting to spread into columns, e.g. 1)"
        );
        assert_eq!(
            depth(json!({"flattening_enabled": true, "flattening_max_depth": -1}))
                .unwrap_err()
                .to_string(),
            "config: `flattening_max_depth` must be 0 or more"
        );
    }

    #[test]
    fn text_copy_from_the_environment() {
        // `TARGET_POSTGRES_RS_TEXT_COPY=1` has always forced text COPY.
        for (value, want) in [("1", true), ("true", true), ("0", false), ("false", false)] {
            let config = Config::default().with_env(ENV_PREFIX, TARGET_SETTINGS, |k| {
                (k == "TARGET_POSTGRES_RS_TEXT_COPY").then(|| value.to_owned())
            });
            assert_eq!(
                TargetSettings::from_config(&config).unwrap().text_copy,
                want,
                "{value}"
            );
        }
    }

    #[test]
    fn orchestrator_spellings() {
        let s = parse(json!({"batch_size_rows": "20", "hard_delete": "true", "load_method": "APPEND-ONLY",
            "schema_mapping": {"a": "b", "c": {"target_schema": "d"}}, "default_target_schema": ""}))
        .unwrap();
        assert_eq!(s.batch_size_rows, 20);
        assert!(s.hard_delete);
        assert_eq!(s.load_method, LoadMethod::AppendOnly);
        assert_eq!(s.schema_mapping["a"], "b");
        assert_eq!(s.schema_mapping["c"], "d");
        assert_eq!(s.default_target_schema, None);
        assert!(s.select_roles.is_empty());
    }

    #[test]
    fn select_permissions_in_pipelinewise_shapes() {
        let s = parse(json!({"default_target_schema_select_permission": "analysts",
            "schema_mapping": {"a": {"target_schema": "b", "target_schema_select_permissions": ["x", "Y z"]},
                               "c": {"target_schema": "d", "target_schema_select_permissions": "solo"}}}))
        .unwrap();
        assert_eq!(s.select_roles, ["analysts"]);
        assert_eq!(s.schema_select_roles["a"], ["x", "Y z"]);
        assert_eq!(s.schema_select_roles["c"], ["solo"]);
        let s = parse(json!({"default_target_schema_select_permission": ["r1", "r2"]})).unwrap();
        assert_eq!(s.select_roles, ["r1", "r2"]);
        assert_eq!(
            parse(json!({"schema_mapping": {"a": {"target_schema": "b", "target_schema_select_permissions": 3}}}))
                .unwrap_err()
                .to_string(),
            "config: `schema_mapping` `target_schema_select_permissions` must be a role name or a list of role names"
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            parse(json!({"batch_size_rows": 0}))
                .unwrap_err()
                .to_string(),
            "config: `batch_size_rows` must be at least 1"
        );
        assert_eq!(
            parse(json!({"load_method": "merge"}))
                .unwrap_err()
                .to_string(),
            "config: `load_method` must be one of upsert, append-only, overwrite, not \"merge\""
        );
    }
}
