//! `tollgate policy test` and `tollgate policy validate`: thin printers around `policy_model`.

use std::path::{Path, PathBuf};

/// Runs conformance case files; returns whether every case passed. Filled in once the engine API lands.
pub fn test(files: &[PathBuf]) -> anyhow::Result<bool> {
    anyhow::bail!("not built yet: {}", files.len())
}

/// Validates policy files; returns whether all were valid.
pub fn validate(paths: &[PathBuf]) -> anyhow::Result<bool> {
    let _ = paths.iter().map(PathBuf::as_path).collect::<Vec<&Path>>();
    anyhow::bail!("not built yet")
}
