//! Every Singer message file in testdata/vectors (copied from the team's shared material, checksums in SHA256SUMS) parses, except the ones
//! that are broken on purpose, which fail at the right line.

use std::path::{Path, PathBuf};

use singer_core::{Message, MessageReader};

fn vectors_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/vectors");
    assert!(
        dir.is_dir(),
        "test vectors not found at {}: the repo expects testdata/vectors",
        dir.display()
    );
    dir
}

fn vector_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![vectors_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("reference-results") {
                    stack.push(path);
                }
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("json" | "jsonl" | "singer")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_vector_parses_except_invalid_json() {
    let files = vector_files();
    assert!(files.len() >= 30, "found only {} vector files", files.len());
    let mut messages = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let results: Vec<_> = MessageReader::new(file).collect();
        if name == "invalid-json.json" {
            let err = results
                .iter()
                .find_map(|r| r.as_ref().err())
                .expect("must fail");
            assert_eq!(err.line, 3);
            assert!(
                err.to_string()
                    .starts_with("input line 3: not valid JSON: "),
                "{err}"
            );
            continue;
        }
        for r in results {
            let (_, m) = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            messages += 1;
            if let Message::Schema(s) = &m {
                singer_core::JsonSchema::from_value(&s.schema)
                    .unwrap_or_else(|e| panic!("{name}: stream {}: {e}", s.stream));
            }
        }
    }
    // The vector files are fixed (SHA256SUMS beside them).
    assert_eq!(messages, 851);
}

#[test]
fn countries_vector_activates_each_stream_before_its_records() {
    let path = vectors_dir().join("singer-sdk/extra/countries_activate_version.tap.jsonl");
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let messages: Vec<Message> = MessageReader::new(file).map(|r| r.unwrap().1).collect();
    let mut activated = Vec::new();
    let mut records = 0;
    for m in &messages {
        match m {
            Message::ActivateVersion(a) => {
                assert_eq!(a.version, 1748736000);
                activated.push(a.stream.clone());
            }
            Message::Record(r) => {
                records += 1;
                assert!(
                    activated.iter().any(|a| **a == *r.stream),
                    "record before ACTIVATE_VERSION"
                );
            }
            _ => {}
        }
    }
    assert_eq!(records, 257);
    assert_eq!(activated, vec!["continents", "countries"]);
}

#[test]
fn vendored_vectors_match_their_checksums() {
    // Byte-for-byte copies of other projects' files: any edit would silently
    // change what the tests assert.
    let out = std::process::Command::new("sha256sum")
        .args(["--check", "--quiet", "SHA256SUMS"])
        .current_dir(vectors_dir())
        .output()
        .expect("sha256sum (coreutils) runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
