//! `--help` documents every setting that `--about` declares, for both binaries.

use std::process::Command;

use e2e_tests::bin;
use serde_json::Value;

fn setting_names(prefix: &str, props: &serde_json::Map<String, Value>, out: &mut Vec<String>) {
    for (name, schema) in props {
        match schema.get("properties").and_then(Value::as_object) {
            Some(nested) => setting_names(&format!("{prefix}{name}."), nested, out),
            None => out.push(format!("{prefix}{name}")),
        }
    }
}

#[test]
fn help_lists_every_setting() {
    for binary in ["tap-postgres-rs", "target-postgres-rs"] {
        let about = Command::new(bin(binary))
            .args(["--about", "--format", "json"])
            .output()
            .unwrap();
        let about: Value = serde_json::from_slice(&about.stdout).unwrap();
        let mut names = Vec::new();
        setting_names(
            "",
            about["settings"]["properties"].as_object().unwrap(),
            &mut names,
        );
        assert!(names.len() > 20, "{binary}: {names:?}");
        let help = Command::new(bin(binary)).arg("--help").output().unwrap();
        assert!(help.status.success());
        let help = String::from_utf8_lossy(&help.stdout);
        for name in &names {
            assert!(
                help.contains(&format!("\n  {name}")),
                "{binary} --help lacks {name}"
            );
        }
        assert!(help.contains("--log-format"), "{binary}");
    }
}
