//! `tollgate policy test` and `tollgate policy validate`: thin printers around `policy_model`.
//!
//! All semantics live in `policy_model` (`conformance::run_file`, `load_policies`, `PolicyEngine::compile`); this
//! module only finds files, reads them and prints what the engine said.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use policy_model::conformance::{self, CaseResult};
use policy_model::{EndpointTable, PolicyEngine, PolicyError, load_policies};

/// Expands directories into their `*.yaml` / `*.yml` files (sorted), keeps files as given.
fn yaml_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{}: no *.yaml files in this directory", path.display());
            }
            out.extend(found);
        } else if path.is_file() {
            out.push(path.clone());
        } else {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// One line for a failing case: where it is, what was asked, what was expected, what the engine said and why.
pub fn failure_line(file: &str, r: &CaseResult) -> String {
    format!(
        "FAIL {file} case {index}: {from} -> {to}:{port} {desc}: expected {expected}, got {got} ({reason})",
        index = r.index,
        from = r.from,
        to = r.to,
        port = r.port,
        desc = r.description,
        expected = r.expected,
        got = r.got,
        reason = r.reason
    )
}

/// Runs conformance case files; prints one line per failing case and closes with `N passed, N failed`.
/// Returns whether every case passed and every file was valid.
pub fn test(paths: &[PathBuf]) -> anyhow::Result<bool> {
    let files = yaml_files(paths)?;
    let (mut passed, mut failed, mut invalid) = (0usize, 0usize, 0usize);
    for path in &files {
        let name = path.display().to_string();
        match conformance::run_file(&name, &read(path)?) {
            Ok(run) => {
                for r in run.results.iter().filter(|r| !r.passed) {
                    println!("{}", failure_line(&name, r));
                }
                passed += run.passed();
                failed += run.failed();
            }
            Err(err) => {
                invalid += 1;
                println!("INVALID {err}");
            }
        }
    }
    if invalid > 0 {
        println!("{invalid} case file(s) invalid");
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0 && invalid == 0)
}

/// Every error in one policy file: parse/validation errors, then compilation errors (e.g. a regex too large).
pub fn validate_source(file: &str, yaml: &str) -> Vec<PolicyError> {
    let load = load_policies(file, yaml);
    let mut errors = load.errors;
    // Compiling against an empty endpoint table still builds every matcher, so engine limits are checked too.
    let endpoints = EndpointTable::new(Vec::new()).expect("an empty endpoint table is valid");
    let (_, compile_errors) = PolicyEngine::compile(load.policies, &endpoints);
    errors.extend(compile_errors);
    errors
}

/// Validates policy files or directories; prints each error as `file: document N: field.path: reason`.
pub fn validate(paths: &[PathBuf]) -> anyhow::Result<bool> {
    let files = yaml_files(paths)?;
    let mut bad = 0usize;
    for path in &files {
        let name = path.display().to_string();
        let errors = validate_source(&name, &read(path)?);
        for err in &errors {
            println!("{err}");
        }
        bad += errors.len();
    }
    if bad == 0 {
        println!("{} file(s) valid", files.len());
    } else {
        println!("{bad} error(s) in {} file(s)", files.len());
    }
    Ok(bad == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_file_document_path_and_reason_and_keeps_good_documents() {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ok, namespace: prod}\n\
                    spec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingress: [{}]\n---\n\
                    apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad, namespace: prod}\n\
                    spec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\"}]\n      rules:\n        http: [{path: \"/(a\"}]\n";
        let errors = validate_source("p.yaml", yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(
            text.starts_with("p.yaml: document 1: spec.ingress[0].toPorts[0].rules.http[0].path: "),
            "{text}"
        );
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let err = yaml_files(&[PathBuf::from("/nonexistent/tollgate.yaml")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tollgate.yaml"));
    }
}
