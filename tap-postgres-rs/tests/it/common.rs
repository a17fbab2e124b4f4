//! Running the tap binary against pg-testkit databases, reading its output,
//! and a small JSON Schema validator for the subset the tap emits.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use pg_testkit::process::{run, write_json, Run};
use serde_json::value::RawValue;
use serde_json::Value;

pub const TAP: &str = env!("CARGO_BIN_EXE_tap-postgres-rs");

/// Runs the tap with `args`, stdin closed, logging at info.
pub fn tap<S: AsRef<OsStr>>(args: &[S]) -> Run {
    run(Command::new(TAP).args(args).env("RUST_LOG", "info"), b"")
}

/// A scratch directory with a config file for a test database.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(config: &Value) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = write_json(dir.path(), "config.json", config);
        Setup { dir, config }
    }

    pub fn discover(&self) -> Value {
        let r = tap(&[
            "--config".as_ref(),
            self.config.as_os_str(),
            "--discover".as_ref(),
        ]);
        assert!(r.ok, "discover failed: {}", r.stderr);
        serde_json::from_str(&r.stdout).unwrap()
    }

    /// Runs a sync with this catalog (and state, when given).
    pub fn sync(&self, catalog: &Value, state: Option<&Value>) -> Run {
        let cat = write_json(self.dir.path(), "catalog.json", catalog);
        let mut args = vec![
            "--config".into(),
            self.config.clone().into_os_string(),
            "--catalog".into(),
            cat.into_os_string(),
        ];
        if let Some(s) = state {
            let p = write_json(self.dir.path(), "state.json", s);
            args.push("--state".into());
            args.push(p.into_os_string());
        }
        tap(&args)
    }

    pub fn sync_ok(&self, catalog: &Value, state: Option<&Value>) -> Output {
        let r = self.sync(catalog, state);
        assert!(r.ok, "sync failed: {}", r.stderr);
        let out = Output::parse(&r.stdout);
        out.validate_records();
        out
    }
}

/// A tap's stdout, parsed.
pub struct Output {
    pub messages: Vec<Value>,
    /// Each RECORD's `record` with its values' exact JSON text.
    pub raw_records: Vec<(String, BTreeMap<String, String>)>,
}

impl Output {
    pub fn parse(stdout: &str) -> Output {
        let mut messages = Vec::new();
        let mut raw_records = Vec::new();
        for line in stdout.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
            if v["type"] == "RECORD" {
                #[derive(serde::Deserialize)]
                struct Rec<'a> {
                    #[serde(borrow)]
                    record: &'a RawValue,
                }
                let rec: Rec<'_> = serde_json::from_str(line).unwrap();
                let fields: BTreeMap<String, &RawValue> =
                    serde_json::from_str(rec.record.get()).unwrap();
                raw_records.push((
                    v["stream"].as_str().unwrap().to_owned(),
                    fields
                        .into_iter()
                        .map(|(k, v)| (k, v.get().to_owned()))
                        .collect(),
                ));
            }
            messages.push(v);
        }
        Output {
            messages,
            raw_records,
        }
    }

    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.messages.iter().filter(|m| m["type"] == t).collect()
    }

    pub fn records(&self, stream: &str) -> Vec<&Value> {
        self.messages
            .iter()
            .filter(|m| m["type"] == "RECORD" && m["stream"] == stream)
            .map(|m| &m["record"])
            .collect()
    }

    pub fn last_state(&self) -> Value {
        self.of_type("STATE").last().expect("a STATE")["value"].clone()
    }

    /// Every RECORD validates against the latest SCHEMA of its stream.
    pub fn validate_records(&self) {
        let mut schemas: HashMap<String, Value> = HashMap::new();
        for m in &self.messages {
            match m["type"].as_str().unwrap() {
                "SCHEMA" => {
                    schemas.insert(m["stream"].as_str().unwrap().into(), m["schema"].clone());
                }
                "RECORD" => {
                    let stream = m["stream"].as_str().unwrap();
                    let schema = schemas
                        .get(stream)
                        .unwrap_or_else(|| panic!("RECORD before SCHEMA for {stream}"));
                    if let Err(e) = validate(schema, &m["record"], "record") {
                        panic!("{stream}: {e}\nrecord: {}", m["record"]);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Validates `v` against the JSON Schema subset the tap writes: `type`,
/// `properties` (with `additionalProperties: false` semantics for records:
/// every key must be declared), `additionalProperties`, `items`, `enum`,
/// `maxLength`, `minimum`, `maximum`. `format` is annotation only (as in
/// draft 2019-09+).
pub fn validate(schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => return Err(format!("{path}: bad type keyword")),
        };
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            _ => false,
        });
        if !ok {
            return Err(format!("{path}: {v} is not of type {types:?}"));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(v) {
            return Err(format!("{path}: {v} is not one of {allowed:?}"));
        }
    }
    if let (Some(max), Value::String(s)) = (schema.get("maxLength"), v) {
        if s.chars().count() as u64 > max.as_u64().unwrap() {
            return Err(format!("{path}: longer than {max}"));
        }
    }
    if let Some(n) = v.as_i64().map(i128::from).or(v.as_u64().map(i128::from)) {
        if let Some(min) = schema.get("minimum").and_then(Value::as_i64) {
            if n < min as i128 {
                return Err(format!("{path}: {n} < minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_i64) {
            if n > max as i128 {
                return Err(format!("{path}: {n} > maximum {max}"));
            }
        }
    }
    if let Value::Object(o) = v {
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, item) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(s, item, &format!("{path}.{k}"))?,
                None => match schema.get("additionalProperties") {
                    Some(s) if s.is_object() => validate(s, item, &format!("{path}.{k}"))?,
                    _ if props.is_some() => {
                        return Err(format!("{path}: property {k:?} is not in the schema"))
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Value::Array(a)) = (schema.get("items"), v) {
        for (i, item) in a.iter().enumerate() {
            validate(items, item, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn validator_rejects() {
    use serde_json::json;
    let s = json!({"type": "object", "properties": {
        "a": {"type": ["null", "integer"], "minimum": 0, "maximum": 10},
        "b": {"type": ["string"], "maxLength": 2, "enum": ["x", "yy"]},
        "c": {"type": ["array"], "items": {"type": ["integer", "null", "array"]}}}});
    assert!(validate(&s, &json!({"a": null, "b": "yy", "c": [1, null, [2]]}), "r").is_ok());
    for bad in [
        json!({"a": 11}),
        json!({"a": 1.5}),
        json!({"b": "zzz"}),
        json!({"b": "z"}),
        json!({"c": ["s"]}),
        json!({"d": 1}),
    ] {
        assert!(validate(&s, &bad, "r").is_err(), "{bad}");
    }
}
