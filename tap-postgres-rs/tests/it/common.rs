//! Running the tap binary against pg-testkit databases, reading its output,
//! and the strict JSON Schema check every sync's output passes.

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

    /// Every RECORD validates against the SCHEMA of its stream in force when
    /// it is sent (see [`validate`]).
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

/// Validates `v` as SDK targets do: a strict Draft 7 validator with `format`
/// checked (RFC 3339 dates, times, date-times), and every key of a record
/// declared (`additionalProperties: false` at the top).
pub fn validate(schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    let mut strict = schema.clone();
    if strict.get("properties").is_some() && strict.get("additionalProperties").is_none() {
        strict["additionalProperties"] = Value::Bool(false);
    }
    let validator = jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(&strict)
        .map_err(|e| format!("{path}: the schema is not valid Draft 7: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{path}{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
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
    // Formats are checked, as SDK targets check them.
    let dates = json!({"type": "object", "properties": {
        "d": {"type": ["string"], "format": "date"},
        "t": {"type": ["string"], "format": "date-time"},
        "z": {"type": ["string"], "format": "time"}}});
    let good =
        json!({"d": "2024-02-29", "t": "2024-01-02T03:04:05.5+00:00", "z": "13:14:15+05:30"});
    assert!(validate(&dates, &good, "r").is_ok());
    for bad in [
        json!({"d": "0044-03-15 BC"}),
        json!({"d": "infinity"}),
        json!({"d": "10000-01-01"}),
        json!({"t": "2024-01-02T03:04:05+00:00 BC"}),
        json!({"z": "24:00:00-15:59"}),
        json!({"z": "13:14:15"}),
    ] {
        assert!(validate(&dates, &bad, "r").is_err(), "{bad}");
    }
}
