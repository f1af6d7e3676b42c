//! Request-path normalization: the one canonical form of `:path` that policy matching sees AND that the upstream
//! server receives, so what was checked is exactly what is served.
//!
//! Rules, applied to the path part (the query string after the first `?` is kept byte for byte and re-appended):
//!
//! 1. The path must start with `/` (origin form). Anything else is rejected (400), except that callers handle
//!    `OPTIONS *` and `CONNECT host:port` before calling this.
//! 2. Percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded, so `%2e%2e` is `..` and `%61dmin`
//!    is `admin`. Every other valid escape is kept, with its hex digits upper-cased (`%3a` becomes `%3A`).
//! 3. Ambiguous encodings are rejected with 400 instead of guessed at, because servers disagree about them and a
//!    disagreement is a policy bypass: an encoded slash (`%2F`), an encoded backslash (`%5C`), an encoded NUL
//!    (`%00`), a raw backslash, and a `%` not followed by two hex digits.
//! 4. Runs of slashes are merged (`//admin` is `/admin`).
//! 5. `.` and `..` segments are resolved (RFC 3986 section 5.2.4), after step 2 so encoded dots resolve too; `..`
//!    at the root stays at the root (`/../admin` is `/admin`).
//! 6. A trailing slash is kept (`/api/` and `/api` stay different, as servers treat them differently).
//! 7. Spellings that some backend resolves differently from us are rejected (400), never passed on:
//!    - a dot segment carrying `;` parameters (`/public/..;/admin`, `/.;/admin`, also when the dots or the `;` are
//!      percent-encoded): Tomcat and other servlet containers strip the parameters and then resolve `..`, so the
//!      request would reach a path the policy never saw;
//!    - an encoded `%` that forms another escape (`%252e`): a backend that decodes twice would see `%2e`, a dot;
//!    - percent-escapes that decode to invalid UTF-8, overlong forms included (`%C0%AE` is an overlong `.`, which
//!      old decoders turn into a dot).
//!
//!    A `;` elsewhere (`/a;v=1/b`) is an ordinary character: the segment is matched and forwarded as sent.
//!
//! This module is pure (no I/O) so every rule is tested directly.

use thiserror::Error;

/// Why a request target was refused; every variant maps to `400 Bad Request`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("request path must start with '/' (origin form), got {0:?}")]
    NotOriginForm(String),
    #[error(
        "request path contains an encoded slash, backslash or NUL ({0}); send the literal character instead"
    )]
    AmbiguousEncoding(String),
    #[error("request path contains a backslash; use '/' as the path separator")]
    Backslash,
    #[error("request path has a '%' not followed by two hex digits at byte {0}")]
    BadPercentEncoding(usize),
    #[error(
        "request path has a dot segment with ';' parameters ({0:?}), which servlet containers resolve as '..' or '.'; \
         send the path without them"
    )]
    DotSegmentParameters(String),
    #[error("request path contains a double-encoded escape ({0}); encode the character once")]
    DoubleEncoding(String),
    #[error(
        "request path's percent-escapes decode to invalid (or overlong) UTF-8; encode characters as UTF-8"
    )]
    InvalidUtf8,
}

/// Normalizes a request target (`path[?query]`) per the module rules.
pub fn normalize(target: &str) -> Result<String, PathError> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm(target.to_string()));
    }
    reject_divergent_spellings(path)?;
    let decoded = decode_unreserved(path)?;
    let mut out = resolve_segments(&decoded);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Step 7: refuses spellings that backends resolve differently (see the module docs). `path` is as sent; escapes
/// that are not two hex digits are left for `decode_unreserved` to report.
fn reject_divergent_spellings(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some(hex_val(*bytes.get(i + 1)?)? * 16 + hex_val(*bytes.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(b'%')
                if bytes.len() >= i + 5
                    && hex_val(bytes[i + 3]).is_some()
                    && hex_val(bytes[i + 4]).is_some() =>
            {
                return Err(PathError::DoubleEncoding(path[i..i + 5].to_string()));
            }
            Some(v) => {
                decoded.push(v);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
    for seg in decoded.split('/') {
        if let Some((name, _params)) = seg.split_once(';')
            && matches!(name, "." | "..")
        {
            return Err(PathError::DotSegmentParameters(seg.to_string()));
        }
    }
    Ok(())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 2 and 3: decode unreserved escapes, upper-case the rest, reject the ambiguous ones.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_val),
                    bytes.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(PathError::BadPercentEncoding(i));
                };
                let value = hi * 16 + lo;
                if matches!(value, b'/' | b'\\' | 0) {
                    return Err(PathError::AmbiguousEncoding(path[i..i + 3].to_string()));
                }
                if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                // Copy one UTF-8 character (hyper only hands us visible ASCII, but stay correct for any &str).
                let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

/// Steps 4 to 6 on an already-decoded absolute path.
fn resolve_segments(path: &str) -> String {
    let trailing_slash = path.len() > 1 && path.ends_with('/');
    let mut stack: Vec<&str> = Vec::new();
    let mut last_was_dot = false;
    for seg in path.split('/') {
        last_was_dot = false;
        match seg {
            "" => {}
            "." => last_was_dot = true,
            ".." => {
                stack.pop();
                last_was_dot = true;
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &stack {
        out.push('/');
        out.push_str(seg);
    }
    // "/a/." and "/a/.." name a directory: keep the slash, as RFC 3986 does.
    if out.is_empty() || trailing_slash || last_was_dot {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> String {
        normalize(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in [
            "/",
            "/api/v1/users",
            "/api/v1/users/",
            "/a-b_c~d.e",
            "/api?x=1&y=%2F",
            "/%3A",
        ] {
            assert_eq!(ok(p), p, "{p}");
        }
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(ok("/api/v1/../admin"), "/api/admin");
        assert_eq!(ok("/api/v1/../../admin"), "/admin");
        assert_eq!(ok("/../../admin"), "/admin");
        assert_eq!(ok("/api/./v1/users"), "/api/v1/users");
        assert_eq!(ok("/api/v1/.."), "/api/");
        assert_eq!(ok("/api/v1/."), "/api/v1/");
        assert_eq!(ok("/.."), "/");
    }

    #[test]
    fn encoded_dots_resolve_like_dots() {
        assert_eq!(ok("/api/v1/%2e%2e/%2E%2E/admin"), "/admin");
        assert_eq!(ok("/api/v1/.%2e/admin"), "/api/admin");
        assert_eq!(ok("/api/%2e/v1"), "/api/v1");
    }

    #[test]
    fn slashes_merge() {
        assert_eq!(ok("//admin"), "/admin");
        assert_eq!(ok("/api//v1///users"), "/api/v1/users");
        assert_eq!(ok("///"), "/");
    }

    #[test]
    fn unreserved_escapes_decode_others_uppercase() {
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/%41%7e"), "/A~");
        assert_eq!(ok("/a%3ab"), "/a%3Ab");
        assert_eq!(ok("/a%20b"), "/a%20b");
    }

    #[test]
    fn ambiguous_encodings_are_rejected() {
        assert!(matches!(
            normalize("/api/v1%2F..%2Fadmin"),
            Err(PathError::AmbiguousEncoding(_))
        ));
        assert!(matches!(
            normalize("/api%2fadmin"),
            Err(PathError::AmbiguousEncoding(_))
        ));
        assert!(matches!(
            normalize("/api%5cadmin"),
            Err(PathError::AmbiguousEncoding(_))
        ));
        assert!(matches!(
            normalize("/api%00"),
            Err(PathError::AmbiguousEncoding(_))
        ));
        assert_eq!(normalize("/api\\admin"), Err(PathError::Backslash));
        assert_eq!(normalize("/api%2"), Err(PathError::BadPercentEncoding(4)));
        assert_eq!(normalize("/api%zz"), Err(PathError::BadPercentEncoding(4)));
        assert!(matches!(normalize("api"), Err(PathError::NotOriginForm(_))));
        assert!(matches!(normalize("*"), Err(PathError::NotOriginForm(_))));
    }

    #[test]
    fn query_is_kept_verbatim_and_not_normalized() {
        assert_eq!(ok("/a/../b?next=/../x%2F"), "/b?next=/../x%2F");
        assert_eq!(ok("/a?"), "/a?");
    }

    /// Every spelling of a denied path normalizes to the denied path (or is rejected), so a regex written for
    /// `/admin.*` catches them all.
    #[test]
    fn a_denied_path_cannot_be_reached_by_encoding_it() {
        for spelling in [
            "/admin",
            "//admin",
            "/./admin",
            "/api/v1/../../admin",
            "/api/v1/%2e%2e/%2e%2e/admin",
            "/%61%64%6d%69%6e",
            "/api/../%61dmin/",
            "/x/%2E%2E//admin",
        ] {
            let n = ok(spelling);
            assert!(n.starts_with("/admin"), "{spelling} normalized to {n}");
        }
        for rejected in [
            "/api/v1/..%2F..%2Fadmin",
            "/api%2F..%2Fadmin",
            "/api\\..\\admin",
        ] {
            assert!(normalize(rejected).is_err(), "{rejected} must be rejected");
        }
    }

    /// Step 7: what Tomcat, double decoders and overlong-UTF-8 decoders would resolve past the policy is refused.
    #[test]
    fn spellings_backends_resolve_differently_are_rejected() {
        for p in [
            "/public/..;/admin",
            "/public/..;jsessionid=1/admin",
            "/public/.;/admin",
            "/public/%2e%2e;/admin",
            "/public/%2e%2e%3b/admin",
            "/public/..%3B/admin",
        ] {
            assert!(
                matches!(normalize(p), Err(PathError::DotSegmentParameters(_))),
                "{p}: {:?}",
                normalize(p)
            );
        }
        for p in ["/public/%252e%252e/admin", "/a%252Fb", "/%2525"] {
            assert!(
                matches!(normalize(p), Err(PathError::DoubleEncoding(_))),
                "{p}: {:?}",
                normalize(p)
            );
        }
        for p in [
            "/public/%C0%AE%C0%AE/admin",
            "/%c0%af",
            "/%E0%80%AE",
            "/%FF",
            "/%C3",
        ] {
            assert_eq!(normalize(p), Err(PathError::InvalidUtf8), "{p}");
        }
        // Ordinary uses stay allowed: parameters on a named segment, an encoded percent before non-hex, UTF-8.
        assert_eq!(ok("/a;v=1/b"), "/a;v=1/b");
        assert_eq!(ok("/a;v=1/../b"), "/b");
        assert_eq!(ok("/100%25"), "/100%25");
        assert_eq!(ok("/%25zz"), "/%25zz");
        assert_eq!(ok("/caf%C3%A9"), "/caf%C3%A9");
    }

    /// Normalization is idempotent: the normalized form normalizes to itself, so the upstream sees what was checked.
    #[test]
    fn normalization_is_idempotent() {
        for p in [
            "/api/v1/../admin",
            "/%2e%2e",
            "//admin/",
            "/a%3ab/./c",
            "/a/b/..?q=1",
        ] {
            let once = ok(p);
            assert_eq!(ok(&once), once, "{p}");
        }
    }
}
