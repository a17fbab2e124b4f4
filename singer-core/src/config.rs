//! Connector settings: one list of definitions that both parses the config and
//! describes it (`--about`), so the two can never drift.
//!
//! Config comes from `--config` files (repeatable, later files win) and from
//! environment variables named `<PREFIX>_<SETTING>` (e.g. `TAP_POSTGRES_RS_HOST`,
//! `TAP_POSTGRES_RS_SSH_TUNNEL__HOST` for nested keys), the files winning.

use std::path::Path;

use serde_json::{json, Map, Value};

/// The kind of a setting, as Meltano names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    String,
    Integer,
    Boolean,
    /// A list of strings (JSON array, or a comma-separated string).
    Array,
    Object,
    /// A secret string: never logged.
    Password,
}

/// A setting's default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    Text(&'static str),
    Integer(i64),
    Boolean(bool),
}

impl DefaultValue {
    pub fn to_json(self) -> Value {
        match self {
            DefaultValue::Text(t) => Value::String(t.to_owned()),
            DefaultValue::Integer(n) => Value::from(n),
            DefaultValue::Boolean(b) => Value::Bool(b),
        }
    }
}

/// One setting of a connector.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key, with `.` for nesting (`ssh_tunnel.host`).
    pub name: &'static str,
    pub kind: SettingKind,
    pub description: &'static str,
    /// The value used when the config sets none: the only place a
    /// default is written (parsing, `--about` and `--help` all read it).
    pub default: Option<DefaultValue>,
    pub required: bool,
    /// Other keys accepted for the same setting (e.g. `dbname` for `database`).
    pub aliases: &'static [&'static str],
    /// Allowed values, for enumerations.
    pub choices: &'static [&'static str],
}

impl Setting {
    pub const fn new(name: &'static str, kind: SettingKind, description: &'static str) -> Setting {
        Setting {
            name,
            kind,
            description,
            default: None,
            required: false,
            aliases: &[],
            choices: &[],
        }
    }
    pub const fn default_text(mut self, value: &'static str) -> Setting {
        self.default = Some(DefaultValue::Text(value));
        self
    }
    pub const fn default_integer(mut self, value: i64) -> Setting {
        self.default = Some(DefaultValue::Integer(value));
        self
    }
    pub const fn default_boolean(mut self, value: bool) -> Setting {
        self.default = Some(DefaultValue::Boolean(value));
        self
    }
    pub const fn required(mut self) -> Setting {
        self.required = true;
        self
    }
    pub const fn aliases(mut self, aliases: &'static [&'static str]) -> Setting {
        self.aliases = aliases;
        self
    }
    pub const fn choices(mut self, choices: &'static [&'static str]) -> Setting {
        self.choices = choices;
        self
    }
}

/// A config problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config: `{key}` is required")]
    Missing { key: String },
    #[error("config: `{key}` {problem}")]
    Invalid { key: String, problem: String },
    #[error("config file {path}: {problem}")]
    File { path: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// The merged config: files in order (later wins), then environment variables
/// for keys no file set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    values: Map<String, Value>,
}

impl Config {
    pub fn from_map(values: Map<String, Value>) -> Config {
        Config { values }
    }

    /// Reads and merges config files (later files win, nested objects merged).
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Config, ConfigError> {
        let mut values = Map::new();
        for path in paths {
            let path = path.as_ref();
            let file_err = |problem: String| ConfigError::File {
                path: path.display().to_string(),
                problem,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| file_err(format!("not valid JSON: {e}")))?;
            let Value::Object(obj) = v else {
                return Err(file_err("must be a JSON object".into()));
            };
            merge(&mut values, obj);
        }
        Ok(Config { values })
    }

    /// Fills settings the files left unset from `<PREFIX>_<NAME>` environment
    /// variables (upper-cased, `.` as `__`), parsing non-string kinds as JSON.
    pub fn with_env(
        mut self,
        prefix: &str,
        settings: &[Setting],
        env: impl Fn(&str) -> Option<String>,
    ) -> Config {
        for s in settings {
            // `SSH_TUNNEL__HOST`, and Meltano's spelling of nested settings, `SSH_TUNNEL_HOST`.
            let upper = s.name.to_ascii_uppercase();
            let Some(raw) = [upper.replace('.', "__"), upper.replace('.', "_")]
                .iter()
                .find_map(|name| env(&format!("{prefix}_{name}")))
            else {
                continue;
            };
            if self.lookup(s.name).is_some() || s.aliases.iter().any(|a| self.lookup(a).is_some()) {
                continue;
            }
            let value = match s.kind {
                SettingKind::String | SettingKind::Password => Value::String(raw),
                _ => serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
            };
            self.insert(s.name, value);
        }
        self
    }

    /// Checks every key the config sets against the declared settings and
    /// their aliases (nested objects such as `ssh_tunnel` key by key).
    pub fn check_keys(&self, settings: &[Setting]) -> KeyCheck {
        let mut check = KeyCheck::default();
        self.check_object(&self.values, "", settings, &mut check);
        check
    }

    fn check_object(
        &self,
        object: &Map<String, Value>,
        prefix: &str,
        settings: &[Setting],
        check: &mut KeyCheck,
    ) {
        for (key, value) in object {
            let dotted = format!("{prefix}{key}");
            let declared = settings
                .iter()
                .any(|s| s.name == dotted || s.aliases.contains(&dotted.as_str()));
            if declared {
                continue;
            }
            let parent = format!("{dotted}.");
            match value {
                Value::Object(nested) if settings.iter().any(|s| s.name.starts_with(&parent)) => {
                    self.check_object(nested, &parent, settings, check)
                }
                _ if prefix.is_empty() && SDK_SETTINGS.contains(&key.as_str()) => {
                    check.unsupported.push(dotted)
                }
                _ => {
                    let suggestion = closest(&dotted, settings);
                    check.unknown.push((dotted, suggestion));
                }
            }
        }
    }

    fn lookup(&self, dotted: &str) -> Option<&Value> {
        let mut parts = dotted.split('.');
        let mut cur = self.values.get(parts.next()?)?;
        for p in parts {
            cur = cur.get(p)?;
        }
        (!cur.is_null()).then_some(cur)
    }

    fn insert(&mut self, dotted: &str, value: Value) {
        let parts: Vec<&str> = dotted.split('.').collect();
        let mut cur = &mut self.values;
        for p in &parts[..parts.len() - 1] {
            let entry = cur.entry(p.to_string()).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            cur = entry.as_object_mut().expect("just made an object");
        }
        cur.insert(parts[parts.len() - 1].to_owned(), value);
    }

    /// The raw value of a setting (or of one of its aliases).
    pub fn raw(&self, setting: &Setting) -> Option<&Value> {
        self.lookup(setting.name)
            .or_else(|| setting.aliases.iter().find_map(|a| self.lookup(a)))
    }

    fn value_or_default(&self, s: &Setting) -> Result<Option<Value>, ConfigError> {
        if let Some(v) = self.raw(s) {
            return Ok(Some(v.clone()));
        }
        if s.required {
            return Err(ConfigError::Missing {
                key: s.name.to_owned(),
            });
        }
        Ok(s.default.map(DefaultValue::to_json))
    }

    /// A setting's value or else its declared default; `Missing` when it
    /// has neither (a setting read this way should declare a default).
    fn defaulted<T>(s: &Setting, read: Result<Option<T>, ConfigError>) -> Result<T, ConfigError> {
        read?.ok_or_else(|| ConfigError::Missing {
            key: s.name.to_owned(),
        })
    }

    /// [`Config::string`] of a setting with a default.
    pub fn string_or_default(&self, s: &Setting) -> Result<String, ConfigError> {
        Config::defaulted(s, self.string(s))
    }

    /// [`Config::integer`] of a setting with a default.
    pub fn integer_or_default(&self, s: &Setting) -> Result<i64, ConfigError> {
        Config::defaulted(s, self.integer(s))
    }

    /// [`Config::boolean`] of a setting with a default.
    pub fn boolean_or_default(&self, s: &Setting) -> Result<bool, ConfigError> {
        Config::defaulted(s, self.boolean(s))
    }

    /// A string setting (numbers and booleans are taken as their text).
    pub fn string(&self, s: &Setting) -> Result<Option<String>, ConfigError> {
        let v = match self.value_or_default(s)? {
            None => return Ok(None),
            Some(Value::String(v)) => v,
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(other) => {
                return Err(invalid(
                    s.name,
                    format!("must be a string, not {}", kind_of(&other)),
                ))
            }
        };
        if !s.choices.is_empty() {
            if let Some(c) = s.choices.iter().find(|c| c.eq_ignore_ascii_case(&v)) {
                return Ok(Some((*c).to_owned()));
            }
            return Err(invalid(
                s.name,
                format!("must be one of {}, not {v:?}", s.choices.join(", ")),
            ));
        }
        Ok(Some(v))
    }

    /// An integer setting; a numeric string is accepted (orchestrators send them).
    pub fn integer(&self, s: &Setting) -> Result<Option<i64>, ConfigError> {
        match self.value_or_default(s)? {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(s.name, format!("must be a whole number, not {n}"))),
            Some(Value::String(t)) => t
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| invalid(s.name, format!("must be a whole number, not {t:?}"))),
            Some(other) => Err(invalid(
                s.name,
                format!("must be a whole number, not {}", kind_of(&other)),
            )),
        }
    }

    /// A boolean setting; `"true"`/`"false"` strings are accepted.
    pub fn boolean(&self, s: &Setting) -> Result<Option<bool>, ConfigError> {
        match self.value_or_default(s)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            // `VAR=1` in the environment arrives as the number.
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Some(true)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(false)),
            Some(Value::String(t)) if t.eq_ignore_ascii_case("true") || t == "1" => Ok(Some(true)),
            Some(Value::String(t))
                if t.eq_ignore_ascii_case("false") || t == "0" || t.is_empty() =>
            {
                Ok(Some(false))
            }
            Some(other) => Err(invalid(
                s.name,
                format!("must be true or false, not {other}"),
            )),
        }
    }

    /// A list of strings: a JSON array, or a comma-separated string.
    pub fn string_list(&self, s: &Setting) -> Result<Option<Vec<String>>, ConfigError> {
        match self.value_or_default(s)? {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|i| match i {
                    Value::String(t) => Ok(t),
                    other => Err(invalid(
                        s.name,
                        format!("must be a list of strings, found {other}"),
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(Value::String(t)) => {
                // A JSON array inside a string (some orchestrators' env vars).
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&t) {
                    return Ok(Some(
                        items
                            .iter()
                            .filter_map(|i| i.as_str().map(str::to_owned))
                            .collect(),
                    ));
                }
                Ok(Some(
                    t.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ))
            }
            Some(other) => Err(invalid(
                s.name,
                format!("must be a list of strings, not {}", kind_of(&other)),
            )),
        }
    }

    /// An object setting (a JSON object, or one encoded in a string).
    pub fn object(&self, s: &Setting) -> Result<Option<Map<String, Value>>, ConfigError> {
        match self.value_or_default(s)? {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(Value::String(t)) => match serde_json::from_str::<Value>(&t) {
                Ok(Value::Object(o)) => Ok(Some(o)),
                _ => Err(invalid(s.name, "must be a JSON object")),
            },
            Some(other) => Err(invalid(
                s.name,
                format!("must be a JSON object, not {}", kind_of(&other)),
            )),
        }
    }
}

/// Settings the Meltano SDK gives every SDK-built connector (stream maps,
/// flattening, BATCH messages, ...): Meltano users carry them over from other
/// plugins, so they are recognised and reported as not implemented here,
/// rather than called misspellings. A connector's own declaration wins.
pub const SDK_SETTINGS: &[&str] = &[
    "stream_maps",
    "stream_map_config",
    "faker_config",
    "flattening_enabled",
    "flattening_max_depth",
    "batch_config",
    "activate_version",
    "validate_records",
];

/// What [`Config::check_keys`] found among the keys the config files set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyCheck {
    /// Keys no setting declares (dotted when nested), each with the closest
    /// declared name when one is close.
    pub unknown: Vec<(String, Option<&'static str>)>,
    /// [`SDK_SETTINGS`] that are set, though this connector does not implement them.
    pub unsupported: Vec<String>,
}

impl KeyCheck {
    /// The warning for one unknown key.
    pub fn unknown_message(key: &str, suggestion: Option<&str>) -> String {
        match suggestion {
            Some(s) => format!("unknown setting {key:?} (did you mean {s:?}?); it is ignored"),
            None => format!("unknown setting {key:?} (not a setting of this connector: see --about); it is ignored"),
        }
    }
}

/// The declared setting closest to `key`, when close enough to be a typo:
/// a small edit distance, or one name containing the other (`hostname`).
fn closest(key: &str, settings: &[Setting]) -> Option<&'static str> {
    let limit = (key.len() / 4).clamp(1, 3);
    settings
        .iter()
        .flat_map(|s| {
            std::iter::once(s.name)
                .chain(s.aliases.iter().copied())
                .map(move |n| (s.name, n))
        })
        .filter_map(|(name, spelled)| {
            let distance = strsim::levenshtein(key, spelled);
            let (short, long) = if key.len() < spelled.len() {
                (key, spelled)
            } else {
                (spelled, key)
            };
            let contains = short.len() >= 3 && long.contains(short);
            (distance <= limit || contains).then_some((distance, name))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// The settings as `--help` text (for clap's `after_long_help`).
pub fn settings_help(env_prefix: &str, settings: &[Setting]) -> String {
    let mut out = format!("Settings (in --config files, or {env_prefix}_<NAME> env vars):\n");
    for s in settings {
        let mut line = format!("  {}", s.name);
        if !s.aliases.is_empty() {
            line.push_str(&format!(" (alias {})", s.aliases.join(", ")));
        }
        if s.required {
            line.push_str(" [required]");
        }
        if let Some(d) = s.default {
            line.push_str(&format!(" [default: {}]", d.to_json()));
        }
        out.push_str(&format!("{line}\n      {}\n", s.description));
    }
    out
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// What `--about` describes.
pub struct About<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub version: &'a str,
    pub capabilities: &'a [&'a str],
    pub settings: &'a [Setting],
    /// Environment variable prefix (e.g. `TAP_POSTGRES_RS`).
    pub env_prefix: &'a str,
}

impl About<'_> {
    /// The Meltano SDK's `--about --format json` shape; settings as a JSON Schema.
    pub fn to_json(&self) -> Value {
        let mut properties = Map::new();
        let mut required: Vec<Value> = Vec::new();
        for s in self.settings {
            let parts: Vec<&str> = s.name.split('.').collect();
            let mut schema = setting_schema(s);
            // Nested settings become nested object schemas.
            let mut target = &mut properties;
            for p in &parts[..parts.len() - 1] {
                let entry = target
                    .entry(p.to_string())
                    .or_insert_with(|| json!({"type": ["object", "null"], "properties": {}}));
                target = entry["properties"].as_object_mut().expect("object schema");
            }
            if let Some(first) = s.aliases.first() {
                schema["description"] =
                    json!(format!("{} (also accepted as `{first}`)", s.description));
            }
            target.insert(parts[parts.len() - 1].to_owned(), schema);
            if s.required {
                required.push(json!(s.name));
            }
        }
        json!({
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "sdk_version": null,
            "capabilities": self.capabilities,
            "settings": {
                "type": "object",
                "properties": properties,
                "required": required,
            },
            "env_var_prefix": format!("{}_", self.env_prefix),
        })
    }

    /// `--about --format markdown`.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# `{}`\n\n{}\n\nVersion: {}\n\n",
            self.name, self.description, self.version
        );
        out.push_str("## Capabilities\n\n");
        for c in self.capabilities {
            out.push_str(&format!("* `{c}`\n"));
        }
        out.push_str("\n## Settings\n\n| Setting | Required | Default | Description |\n|:--|:--:|:--:|:--|\n");
        for s in self.settings {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                s.name,
                if s.required { "True" } else { "False" },
                s.default
                    .map_or_else(|| "None".to_owned(), |d| d.to_json().to_string()),
                s.description.replace('|', "\\|"),
            ));
        }
        out.push_str(&format!(
            "\nA full list of supported settings and capabilities is available by running: `{} --about`\n\n\
             Settings can also be given as environment variables: `{}_<SETTING>` (upper case, `__` for nesting).\n",
            self.name, self.env_prefix
        ));
        out
    }
}

fn setting_schema(s: &Setting) -> Value {
    let mut schema = match s.kind {
        SettingKind::String => json!({"type": ["string", "null"]}),
        SettingKind::Password => {
            json!({"type": ["string", "null"], "secret": true, "writeOnly": true})
        }
        // A numeric string is accepted too (orchestrators send them).
        SettingKind::Integer => {
            json!({"type": ["integer", "string", "null"], "pattern": "^\\s*-?[0-9]+\\s*$"})
        }
        SettingKind::Boolean => json!({"type": ["boolean", "null"]}),
        SettingKind::Array => json!({"type": ["array", "null"], "items": {"type": "string"}}),
        SettingKind::Object => json!({"type": ["object", "null"], "additionalProperties": true}),
    };
    schema["description"] = json!(s.description);
    if let Some(d) = s.default {
        schema["default"] = d.to_json();
    }
    if !s.choices.is_empty() {
        schema["enum"] = json!(s.choices);
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Setting = Setting::new("host", SettingKind::String, "Host").required();
    const PORT: Setting = Setting::new("port", SettingKind::Integer, "Port").default_integer(5432);
    const DB: Setting =
        Setting::new("database", SettingKind::String, "Database").aliases(&["dbname"]);
    const SCHEMAS: Setting = Setting::new("filter_schemas", SettingKind::Array, "Schemas");
    const MODE: Setting =
        Setting::new("load_method", SettingKind::String, "How").choices(&["upsert", "append-only"]);
    const SSH_HOST: Setting = Setting::new("ssh_tunnel.host", SettingKind::String, "Bastion");
    const SSH_PORT: Setting = Setting::new("ssh_tunnel.port", SettingKind::Integer, "Port");
    const PASSWORD: Setting = Setting::new("password", SettingKind::Password, "Password");

    fn cfg(v: Value) -> Config {
        Config::from_map(v.as_object().unwrap().clone())
    }

    #[test]
    fn typed_reads_accept_orchestrator_spellings() {
        let c = cfg(
            json!({"host": "h", "port": "6543", "dbname": "d", "filter_schemas": "a, b",
                           "load_method": "UPSERT", "ssh_tunnel": {"host": "bastion"}}),
        );
        assert_eq!(c.string(&HOST).unwrap().as_deref(), Some("h"));
        assert_eq!(c.integer(&PORT).unwrap(), Some(6543));
        assert_eq!(c.string(&DB).unwrap().as_deref(), Some("d"));
        assert_eq!(
            c.string_list(&SCHEMAS).unwrap(),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(c.string(&MODE).unwrap().as_deref(), Some("upsert"));
        assert_eq!(c.string(&SSH_HOST).unwrap().as_deref(), Some("bastion"));
        assert_eq!(cfg(json!({})).integer(&PORT).unwrap(), Some(5432));
        assert_eq!(cfg(json!({})).integer_or_default(&PORT).unwrap(), 5432);
        assert_eq!(c.integer_or_default(&PORT).unwrap(), 6543);
        assert_eq!(
            cfg(json!({}))
                .string_or_default(&DB)
                .unwrap_err()
                .to_string(),
            "config: `database` is required"
        );
    }

    #[test]
    fn defaults_render_as_json_everywhere() {
        const METHOD: Setting =
            Setting::new("method", SettingKind::String, "M").default_text("FULL_TABLE");
        const ON: Setting = Setting::new("on", SettingKind::Boolean, "O").default_boolean(true);
        let help = settings_help("T", &[PORT, METHOD, ON]);
        assert!(help.contains("  port [default: 5432]\n"), "{help}");
        assert!(
            help.contains("  method [default: \"FULL_TABLE\"]\n"),
            "{help}"
        );
        assert!(help.contains("  on [default: true]\n"), "{help}");
        let about = About {
            name: "t",
            description: "d",
            version: "1",
            capabilities: &[],
            settings: &[PORT, METHOD, ON],
            env_prefix: "T",
        };
        let j = about.to_json();
        assert_eq!(j["settings"]["properties"]["port"]["default"], json!(5432));
        // Integers may come as numeric strings, and the schema says so.
        assert_eq!(
            j["settings"]["properties"]["port"]["type"],
            json!(["integer", "string", "null"])
        );
        assert_eq!(
            j["settings"]["properties"]["port"]["pattern"],
            json!("^\\s*-?[0-9]+\\s*$")
        );
        assert_eq!(
            j["settings"]["properties"]["method"]["default"],
            json!("FULL_TABLE")
        );
        assert_eq!(j["settings"]["properties"]["on"]["default"], json!(true));
        let md = about.to_markdown();
        assert!(
            md.contains("| method | False | \"FULL_TABLE\" | M |"),
            "{md}"
        );
        assert!(md.contains("| port | False | 5432 | Port |"), "{md}");
    }

    #[test]
    fn errors_name_the_key() {
        let c = cfg(json!({"port": "x", "filter_schemas": 3, "load_method": "merge"}));
        assert_eq!(
            c.string(&HOST).unwrap_err().to_string(),
            "config: `host` is required"
        );
        assert_eq!(
            c.integer(&PORT).unwrap_err().to_string(),
            "config: `port` must be a whole number, not \"x\""
        );
        assert_eq!(
            c.string_list(&SCHEMAS).unwrap_err().to_string(),
            "config: `filter_schemas` must be a list of strings, not a number"
        );
        assert_eq!(
            c.string(&MODE).unwrap_err().to_string(),
            "config: `load_method` must be one of upsert, append-only, not \"merge\""
        );
    }

    #[test]
    fn files_merge_and_env_fills_gaps() {
        let dir = std::env::temp_dir().join(format!("singer-core-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.json");
        let b = dir.join("b.json");
        std::fs::write(
            &a,
            r#"{"host": "a", "port": 1, "ssh_tunnel": {"host": "x", "port": 22}}"#,
        )
        .unwrap();
        std::fs::write(&b, r#"{"host": "b", "ssh_tunnel": {"host": "y"}}"#).unwrap();
        let env = |k: &str| match k {
            "T_HOST" => Some("env-host".to_owned()),
            "T_PASSWORD" => Some("s3cret".to_owned()),
            "T_SSH_TUNNEL__HOST" => Some("env-bastion".to_owned()),
            "T_SSH_TUNNEL_PORT" => Some("2222".to_owned()),
            _ => None,
        };
        let c = Config::from_files(&[&a, &b]).unwrap().with_env(
            "T",
            &[HOST, PASSWORD, SSH_HOST, SSH_PORT],
            env,
        );
        assert_eq!(c.string(&HOST).unwrap().as_deref(), Some("b"));
        assert_eq!(c.integer(&PORT).unwrap(), Some(1));
        assert_eq!(c.string(&PASSWORD).unwrap().as_deref(), Some("s3cret"));
        assert_eq!(c.string(&SSH_HOST).unwrap().as_deref(), Some("y"));
        // The file's ssh_tunnel.port wins over Meltano's single-underscore variable,
        assert_eq!(c.integer(&SSH_PORT).unwrap(), Some(22));
        // which is read when no file sets it.
        let only_env = Config::default().with_env("T", &[SSH_PORT], env);
        assert_eq!(only_env.integer(&SSH_PORT).unwrap(), Some(2222));
        std::fs::write(&a, "{").unwrap();
        let err = Config::from_files(&[&a]).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("config file {}: not valid JSON: ", a.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_found_with_a_suggestion() {
        const METHOD: Setting =
            Setting::new("default_replication_method", SettingKind::String, "M");
        const SETTINGS: &[Setting] = &[HOST, PORT, DB, SCHEMAS, SSH_HOST, SSH_PORT, METHOD];
        let c = cfg(json!({
            "hostname": "h", "port": 1, "dbname": "d", "filter_schema": ["a"],
            "default_replication_methd": "FULL_TABLE", "colour": "blue",
            "ssh_tunnel": {"host": "b", "prot": 22},
            "stream_maps": {}, "flattening_enabled": true,
        }));
        let check = c.check_keys(SETTINGS);
        assert_eq!(
            check.unknown,
            vec![
                ("hostname".to_owned(), Some("host")),
                ("filter_schema".to_owned(), Some("filter_schemas")),
                (
                    "default_replication_methd".to_owned(),
                    Some("default_replication_method")
                ),
                ("colour".to_owned(), None),
                ("ssh_tunnel.prot".to_owned(), Some("ssh_tunnel.port")),
            ]
        );
        assert_eq!(check.unsupported, vec!["stream_maps", "flattening_enabled"]);
        assert_eq!(
            KeyCheck::unknown_message("hostname", Some("host")),
            "unknown setting \"hostname\" (did you mean \"host\"?); it is ignored"
        );
        // Declared names, aliases and whole nested objects raise nothing.
        let clean = cfg(json!({"host": "h", "database": "d", "ssh_tunnel": {"host": "b"}}));
        assert_eq!(clean.check_keys(SETTINGS), KeyCheck::default());
    }

    #[test]
    fn about_marks_secrets_and_nests() {
        let about = About {
            name: "tap-x",
            description: "d",
            version: "1.0.0",
            capabilities: &["about"],
            settings: &[HOST, PASSWORD, SSH_HOST, DB],
            env_prefix: "TAP_X",
        };
        let j = about.to_json();
        assert_eq!(
            j["settings"]["properties"]["password"]["secret"],
            json!(true)
        );
        assert_eq!(
            j["settings"]["properties"]["password"]["writeOnly"],
            json!(true)
        );
        assert_eq!(
            j["settings"]["properties"]["ssh_tunnel"]["properties"]["host"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(j["settings"]["required"], json!(["host"]));
        assert!(about
            .to_markdown()
            .contains("| password | False | None | Password |"));
    }
}
