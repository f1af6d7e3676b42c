//! Test fixtures read from the repository's policy conformance files (`policy-model/conformance/<case>.yaml`), for
//! the unit tests of every module that checks itself against a conformance case (DNS, Kafka, datapath, UI, admin).
//! Test-only: compiled under `cfg(test)`.

use crate::policy_source::{PolicySnapshot, compile};

/// `policy-model/conformance/<case>.yaml`, the repository's own conformance case file.
pub(crate) fn conformance_path(case: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policy-model/conformance")
        .join(format!("{case}.yaml"))
}

/// A conformance case's policies and endpoints as a snapshot (read from the case file, never a copy).
pub(crate) fn conformance_snapshot(case: &str) -> PolicySnapshot {
    let path = conformance_path(case);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let docs: Vec<String> = v["policies"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| serde_yaml::to_string(p).unwrap())
        .collect();
    let mut eps = serde_yaml::Mapping::new();
    eps.insert("endpoints".into(), v["endpoints"].clone());
    let eps = serde_yaml::to_string(&eps).unwrap();
    compile(
        &[("policy.yaml".to_string(), docs.join("---\n"))],
        ("endpoints.yaml", &eps),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
