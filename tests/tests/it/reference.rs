//! The README's settings tables agree with `--about`, for both binaries:
//! every setting `--about` declares has a row (under "Configuration
//! reference", in the connection table or the binary's own), its default
//! the same, `required` exactly when required; no row names a setting that
//! does not exist. And `--help` says what a first user looks for.

use std::collections::BTreeMap;
use std::process::Command;

use e2e_tests::bin;
use serde_json::Value;

/// name -> (default, required) from `--about --format json`.
fn about(binary: &str) -> BTreeMap<String, (Option<Value>, bool)> {
    fn walk(
        prefix: &str,
        props: &Value,
        required: &[Value],
        out: &mut BTreeMap<String, (Option<Value>, bool)>,
    ) {
        for (name, schema) in props.as_object().unwrap() {
            let full = format!("{prefix}{name}");
            match schema.get("properties") {
                Some(nested) => walk(&format!("{full}."), nested, required, out),
                None => {
                    let is_required = required.iter().any(|r| r == &Value::from(full.as_str()));
                    out.insert(full, (schema.get("default").cloned(), is_required));
                }
            }
        }
    }
    let out = Command::new(bin(binary))
        .args(["--about", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let about: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut settings = BTreeMap::new();
    let required = about["settings"]["required"].as_array().unwrap().clone();
    walk(
        "",
        &about["settings"]["properties"],
        &required,
        &mut settings,
    );
    settings
}

/// Rows of the `| setting | default | meaning |` tables under "## Configuration
/// reference", by the `###` section they are in: name -> default cell.
fn readme_tables() -> BTreeMap<String, BTreeMap<String, String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let reference = readme
        .split("\n## Configuration reference\n")
        .nth(1)
        .expect("README has a Configuration reference");
    let reference = reference.split("\n## ").next().unwrap();
    let mut tables: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    let mut in_settings_table = false;
    for line in reference.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            section = title.to_owned();
        }
        if !line.starts_with('|') {
            in_settings_table = false;
            continue;
        }
        if line.starts_with("| setting | default |") {
            in_settings_table = true;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        // Rows name a setting as `name` (then maybe "(alias `x`)").
        let Some(name) = cells[0].strip_prefix('`').and_then(|c| c.split('`').next()) else {
            continue;
        };
        if in_settings_table {
            tables.entry(section.clone()).or_default().insert(
                name.to_owned(),
                cells.get(1).copied().unwrap_or("").to_owned(),
            );
        }
    }
    tables
}

#[test]
fn readme_settings_tables_match_about() {
    let tables = readme_tables();
    let connection = &tables["Connection (both binaries)"];
    assert!(connection.len() > 15, "{tables:?}");
    assert!(
        tables["tap-postgres-rs"].len() > 6 && tables["target-postgres-rs"].len() > 8,
        "{tables:?}"
    );
    let mut problems = Vec::new();
    for binary in ["tap-postgres-rs", "target-postgres-rs"] {
        let settings = about(binary);
        let mut rows = connection.clone();
        rows.extend(tables[binary].clone());
        for (name, (default, required)) in &settings {
            let Some(cell) = rows.get(name) else {
                problems.push(format!("{binary}: `{name}` has no row in the README"));
                continue;
            };
            let cell = cell.as_str();
            if *required != (cell == "required") {
                problems.push(format!(
                    "{binary}: `{name}` required: {required}, README default cell {cell:?}"
                ));
            }
            // A single literal (not a template like `tap_postgres_rs_<database>`) is a default.
            let literal = cell
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .filter(|c| !c.contains('`') && !c.contains('<'));
            let want = default.as_ref().map(|d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            if literal.map(str::to_owned) != want && (want.is_some() || literal.is_some()) {
                problems.push(format!(
                    "{binary}: `{name}` default in --about {want:?}, in the README {cell:?}"
                ));
            }
        }
        for name in rows.keys() {
            if !settings.contains_key(name) {
                problems.push(format!(
                    "{binary}: the README lists `{name}`, which --about does not declare"
                ));
            }
        }
    }
    // Rows a binary does not read would otherwise go unchecked.
    for section in tables.keys() {
        if ![
            "Connection (both binaries)",
            "tap-postgres-rs",
            "target-postgres-rs",
        ]
        .contains(&section.as_str())
        {
            problems.push(format!(
                "a settings table under `### {section}` belongs to no binary"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn help_names_rust_log_and_every_kind_of_stream() {
    for binary in ["tap-postgres-rs", "target-postgres-rs"] {
        let help = Command::new(bin(binary)).arg("--help").output().unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        assert!(help.contains("RUST_LOG"), "{binary}: {help}");
        assert!(help.contains("\n  ssl\n"), "{binary}: {help}");
        assert!(
            help.contains("  ssl_mode (alias sslmode) [default: \"prefer\"]"),
            "{binary}: {help}"
        );
    }
    let help = Command::new(bin("tap-postgres-rs"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("one stream per table, view, materialized view, partitioned table (the parent) and foreign table"),
        "{help}"
    );
}

/// Every name `--about` accepts: the settings (nested ones by their parent
/// too) and each one's first alias, which the description spells
/// "(also accepted as `x`)".
fn accepted(binary: &str) -> (BTreeMap<String, ()>, BTreeMap<String, ()>) {
    let out = Command::new(bin(binary))
        .args(["--about", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let about: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut declared = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (name, schema) in about["settings"]["properties"].as_object().unwrap() {
        declared.insert(name.clone(), ());
        names.insert(name.clone(), ());
        let description = schema["description"].as_str().unwrap_or("");
        if let Some(rest) = description.split("(also accepted as `").nth(1) {
            names.insert(rest.split('`').next().unwrap().to_owned(), ());
        }
    }
    (declared, names)
}

/// The README's "Settings from other connectors" table is true: a peer's
/// setting marked *same* or *alias of `x`* is accepted under the peer's
/// name (and `x` is ours), one marked *no* is not a setting here.
#[test]
fn peer_settings_table_matches_what_the_binaries_accept() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("\n### Settings from other connectors\n")
        .nth(1)
        .expect("README has the peer settings table");
    let rows: Vec<Vec<&str>> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    assert!(rows.len() >= 10, "{rows:?}");
    let tap = accepted("tap-postgres-rs");
    let target = accepted("target-postgres-rs");
    let backticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut checked = 0;
    for row in &rows {
        let (declared, names) = if row[0].contains("target") {
            &target
        } else {
            &tap
        };
        let theirs = backticked(row[1]);
        let here = row[2];
        if here == "same" || here.starts_with("alias of") {
            for name in &theirs {
                assert!(
                    names.contains_key(name),
                    "{} `{name}` is not accepted: {row:?}",
                    row[0]
                );
                checked += 1;
            }
            if here.starts_with("alias of") {
                let ours = &backticked(here)[0];
                assert!(
                    declared.contains_key(ours),
                    "`{ours}` is not a setting: {row:?}"
                );
            }
        } else if here == "no" {
            for name in &theirs {
                assert!(
                    !names.contains_key(name),
                    "{} `{name}` is accepted, but the table says no: {row:?}",
                    row[0]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "only {checked} names checked");
}
