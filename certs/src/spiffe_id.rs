//! SPIFFE IDs: parsing, validation and the Kubernetes workload form `ns/<namespace>/sa/<service-account>`.
//!
//! Validation follows the public SPIFFE ID specification: scheme `spiffe`, a lowercase trust domain of
//! `[a-z0-9.-_]` with no port or user info, a path of non-empty segments of `[A-Za-z0-9.-_]` that are not `.` or
//! `..`, no trailing slash, no query or fragment, at most 2048 bytes. Anything looser would let two spellings name
//! the same workload, and policy compares IDs as strings.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID; each message names the offending part and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error(
        "SPIFFE ID {0:?} does not start with \"spiffe://\" (the scheme must be lowercase spiffe)"
    )]
    Scheme(String),
    #[error("SPIFFE ID {0:?} has an empty trust domain; write spiffe://<trust-domain>/...")]
    EmptyTrustDomain(String),
    #[error(
        "SPIFFE ID {id:?}: trust domain character {ch:?} is not allowed (use lowercase letters, digits, '.', '-', '_'; no port or user info)"
    )]
    TrustDomainChar { id: String, ch: char },
    #[error("SPIFFE ID {0:?} has an empty path segment (a double or trailing '/'); remove it")]
    EmptySegment(String),
    #[error(
        "SPIFFE ID {0:?} has a '.' or '..' path segment; write the path without relative segments"
    )]
    DotSegment(String),
    #[error(
        "SPIFFE ID {id:?}: path character {ch:?} is not allowed (use letters, digits, '.', '-', '_'; no query or fragment)"
    )]
    PathChar { id: String, ch: char },
    #[error("SPIFFE ID is {0} bytes long; the limit is 2048")]
    TooLong(usize),
}

/// A SPIFFE trust domain name, already validated and lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`, not `spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let id = format!("{SCHEME}{name}");
        check_trust_domain(&id, name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated SPIFFE ID. The path is empty for the trust domain's own ID, otherwise it starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

impl SpiffeId {
    /// Parses and validates `spiffe://<trust-domain>[/<path>]`.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        if id.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong(id.len()));
        }
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme(id.to_owned()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(id, td)?;
        check_path(id, path)?;
        Ok(Self {
            trust_domain: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }

    /// The Kubernetes workload ID `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path including its leading `/`, or "" for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `(namespace, service account)` when the path is exactly `/ns/<ns>/sa/<sa>`; other shapes are valid SPIFFE IDs
    /// but carry no Kubernetes identity, so policy cannot map them to endpoint labels.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut seg = self.path.strip_prefix('/')?.split('/');
        match (seg.next(), seg.next(), seg.next(), seg.next(), seg.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

fn check_trust_domain(id: &str, td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain(id.to_owned()));
    }
    if let Some(ch) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::TrustDomainChar {
            id: id.to_owned(),
            ch,
        });
    }
    Ok(())
}

fn check_path(id: &str, path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split element is the empty string before it.
    for seg in path.split('/').skip(1) {
        if seg.is_empty() {
            return Err(SpiffeIdError::EmptySegment(id.to_owned()));
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment(id.to_owned()));
        }
        if let Some(ch) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::PathChar {
                id: id.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_id_and_round_trips() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.namespace_and_service_account(), Some(("default", "web")));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(
            "spiffe://cluster.local/ns/default/sa/web"
                .parse::<SpiffeId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn workload_constructor_matches_parse() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = SpiffeId::workload(&td, "prod", "api").unwrap();
        assert_eq!(
            id,
            SpiffeId::parse("spiffe://example.org/ns/prod/sa/api").unwrap()
        );
        assert!(matches!(
            SpiffeId::workload(&td, "a/b", "api"),
            Ok(ref x) if x.namespace_and_service_account().is_none()
        ));
        assert!(SpiffeId::workload(&td, "", "api").is_err());
    }

    #[test]
    fn trust_domain_only_id_is_valid_without_workload() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.path(), "");
        assert_eq!(id.namespace_and_service_account(), None);
        assert_eq!(id.to_string(), "spiffe://example.org");
    }

    #[test]
    fn non_kubernetes_paths_have_no_workload() {
        for p in [
            "/ns/a",
            "/ns/a/sa",
            "/ns/a/sa/b/extra",
            "/sa/b/ns/a",
            "/workload/x",
        ] {
            let id = SpiffeId::parse(&format!("spiffe://td{p}")).unwrap();
            assert_eq!(id.namespace_and_service_account(), None, "{p}");
        }
    }

    #[test]
    fn every_refusal_names_its_reason() {
        use SpiffeIdError as E;
        type Expect = fn(&E) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("https://example.org/ns/a/sa/b", |e| {
                matches!(e, E::Scheme(_))
            }),
            ("SPIFFE://example.org/ns/a/sa/b", |e| {
                matches!(e, E::Scheme(_))
            }),
            ("spiffe:/example.org", |e| matches!(e, E::Scheme(_))),
            ("spiffe://", |e| matches!(e, E::EmptyTrustDomain(_))),
            ("spiffe:///ns/a", |e| matches!(e, E::EmptyTrustDomain(_))),
            ("spiffe://Example.org/x", |e| {
                matches!(e, E::TrustDomainChar { ch: 'E', .. })
            }),
            ("spiffe://example.org:443/x", |e| {
                matches!(e, E::TrustDomainChar { ch: ':', .. })
            }),
            ("spiffe://user@example.org/x", |e| {
                matches!(e, E::TrustDomainChar { ch: '@', .. })
            }),
            ("spiffe://example.org/", |e| matches!(e, E::EmptySegment(_))),
            ("spiffe://example.org/ns//sa/b", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://example.org/ns/a/", |e| {
                matches!(e, E::EmptySegment(_))
            }),
            ("spiffe://example.org/./a", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://example.org/ns/../a", |e| {
                matches!(e, E::DotSegment(_))
            }),
            ("spiffe://example.org/ns/a?x=1", |e| {
                matches!(e, E::PathChar { ch: '?', .. })
            }),
            ("spiffe://example.org/ns/a#f", |e| {
                matches!(e, E::PathChar { ch: '#', .. })
            }),
            ("spiffe://example.org/ns/a%20b", |e| {
                matches!(e, E::PathChar { ch: '%', .. })
            }),
            ("spiffe://example.org/ns/é", |e| {
                matches!(e, E::PathChar { ch: 'é', .. })
            }),
        ];
        for (input, want) in cases {
            let err = SpiffeId::parse(input).expect_err(input);
            assert!(want(&err), "{input}: got {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn length_limit_is_2048_bytes() {
        let base = "spiffe://td/";
        let ok = format!("{base}{}", "a".repeat(MAX_LEN - base.len()));
        assert!(SpiffeId::parse(&ok).is_ok());
        let long = format!("{ok}a");
        assert_eq!(
            SpiffeId::parse(&long),
            Err(SpiffeIdError::TooLong(MAX_LEN + 1))
        );
    }

    #[test]
    fn trust_domain_new_rejects_bad_names() {
        assert!(TrustDomain::new("a-b_c.d9").is_ok());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("a/b").is_err());
        assert!(TrustDomain::new("A").is_err());
    }
}
