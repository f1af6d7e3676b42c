//! The one error type of the crate: what was wrong, where (file, document, field path) and why.

/// A rejected policy, endpoint file or case file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {document}: {field_path}: {reason}")]
pub struct PolicyError {
    /// File name as given by the caller.
    pub file: String,
    /// 0-based index of the YAML document in the file.
    pub document: usize,
    /// Path of the offending field, e.g. `spec.ingress[0].toPorts[0].rules.http[1].path`.
    pub field_path: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl PolicyError {
    pub fn new(
        file: impl Into<String>,
        document: usize,
        field_path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        PolicyError {
            file: file.into(),
            document,
            field_path: field_path.into(),
            reason: reason.into(),
        }
    }
}

/// Split a serde_yaml message `path: reason at line L column C` into (path, reason).
pub(crate) fn split_serde_error(msg: &str) -> (String, String) {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    // serde_yaml prefixes the path as "a.b[0].c: " when it is known.
    if let Some((path, reason)) = msg.split_once(": ")
        && !path.contains(' ')
        && !path.is_empty()
    {
        return (path.to_string(), reason.to_string());
    }
    ("(document)".to_string(), msg.to_string())
}
