//! The committed fuzz corpus (`fuzz/corpus/<target>/`) replayed through the same entry
//! points the `cargo fuzz` targets call, so every input fuzzing found interesting — and
//! every crash, once fixed — stays a test.

use std::path::Path;

#[test]
fn every_fuzz_corpus_input_runs_through_its_entry_point_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, entry) in jitgate::fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets").join(format!("{name}.rs")).exists(),
            "fuzz target {name} has no fuzz/fuzz_targets/{name}.rs"
        );
        let dir = root.join("corpus").join(name);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| entry(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
            replayed += 1;
        }
    }
    assert!(replayed >= jitgate::fuzzing::TARGETS.len());
}
