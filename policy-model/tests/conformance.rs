//! Runs every case file in `policy-model/conformance/` (the project's own cases) through the real engine; every
//! case must pass. A missing or empty folder fails the test.

use std::path::PathBuf;

#[test]
fn every_conformance_case_passes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "conformance folder {} is missing ({e}); it is part of the repository",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.yaml case files in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    let mut total = 0;
    for f in &files {
        let text = std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        let run = policy_model::conformance::run_file(&f.display().to_string(), &text)
            .unwrap_or_else(|e| panic!("case file rejected: {e}"));
        assert!(!run.results.is_empty(), "{} has no cases", f.display());
        for r in &run.results {
            total += 1;
            if !r.passed {
                failures.push(format!(
                    "{} case {} ({} -> {}:{} {}): expected {}, got {} ({})",
                    run.name,
                    r.index,
                    r.from,
                    r.to,
                    r.port,
                    r.description,
                    r.expected,
                    r.got,
                    r.reason
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{total} conformance cases passed in {} files", files.len());
}
