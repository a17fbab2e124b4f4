mod common;
use common::*;
use serde_json::json;

#[test]
fn explore_all_vectors() {
    let mut files = Vec::new();
    for dir in ["singer-sdk", "singer-sdk/extra", "pipelinewise-target-postgres"] {
        let mut v: Vec<_> = std::fs::read_dir(vectors().join(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        v.sort();
        files.extend(v);
    }
    for f in files {
        let db = pg_testkit::cluster().create_database("explore");
        let r = run_file(&db, json!({"default_target_schema": "vectors"}), &f);
        println!("{} | exit {} | states {} | {:?} | {}", f.file_name().unwrap().to_string_lossy(), r.code, r.stdout.lines().count(), tables(&db, "vectors"), r.last_error());
    }
}
