//! How an error reads in logs and replies: the error and its sources, `a: b: c`.
//!
//! A leaf: it must not depend on any other module of the crate.

/// `a: b: c` from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
