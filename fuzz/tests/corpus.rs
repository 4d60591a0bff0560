//! Replays every input in `fuzz/corpus/<target>/` through its target:
//! the seeds and the inputs that once crashed it (kept in git), and
//! whatever a local fuzzing run added. What the fuzzer found stays fixed.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in blazedb_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "target {name} has no corpus");
        for input in inputs {
            let data = std::fs::read(&input).expect("a corpus input");
            let ran = std::panic::catch_unwind(|| target(&data));
            assert!(ran.is_ok(), "{} fails target {name}", input.display());
        }
    }
}
