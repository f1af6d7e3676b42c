//! Applies `headerMatches` mismatch actions (ADD / DELETE / REPLACE / LOG) from a request verdict to the request
//! that is forwarded upstream. Pure: a header map in, a header map and the log entries out.

use crate::policy_adapter::HeaderAction;
use http::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderActionError {
    #[error(
        "header action names an invalid header name {0:?}; fix the policy's headerMatches name"
    )]
    BadName(String),
    #[error(
        "header action for {0:?} carries a value that is not a valid HTTP header value; fix the policy"
    )]
    BadValue(String),
}

/// Applies `actions` in order. Returns the `(name, value)` pairs to record in the flow for `LOG` actions (the
/// header's current value, or empty when absent). A bad name/value fails the whole request (fail closed): a policy
/// that asked for a header to be removed must never be forwarded with it still present.
pub fn apply(
    headers: &mut HeaderMap,
    actions: &[HeaderAction],
) -> Result<Vec<(String, String)>, HeaderActionError> {
    let mut logged = Vec::new();
    for action in actions {
        match action {
            HeaderAction::Add { name, value } => {
                headers.append(parse_name(name)?, parse_value(name, value)?);
            }
            HeaderAction::Delete { name } => {
                headers.remove(parse_name(name)?);
            }
            HeaderAction::Replace { name, value } => {
                headers.insert(parse_name(name)?, parse_value(name, value)?);
            }
            HeaderAction::Log { name } => {
                let n = parse_name(name)?;
                let joined = headers
                    .get_all(&n)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ");
                logged.push((n.as_str().to_string(), joined));
            }
        }
    }
    Ok(logged)
}

fn parse_name(name: &str) -> Result<HeaderName, HeaderActionError> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| HeaderActionError::BadName(name.to_string()))
}

fn parse_value(name: &str, value: &str) -> Result<HeaderValue, HeaderActionError> {
    HeaderValue::from_str(value).map_err(|_| HeaderActionError::BadValue(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn add_appends_delete_removes_all_replace_overwrites() {
        let mut h = map(&[
            ("x-a", "1"),
            ("x-d", "1"),
            ("x-d", "2"),
            ("x-r", "old"),
            ("x-r", "older"),
        ]);
        let actions = vec![
            HeaderAction::Add {
                name: "X-A".into(),
                value: "2".into(),
            },
            HeaderAction::Delete { name: "x-d".into() },
            HeaderAction::Replace {
                name: "x-r".into(),
                value: "new".into(),
            },
            HeaderAction::Replace {
                name: "x-new".into(),
                value: "v".into(),
            },
        ];
        assert_eq!(apply(&mut h, &actions).unwrap(), vec![]);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), vec!["1", "2"]);
        assert!(h.get("x-d").is_none());
        assert_eq!(h.get_all("x-r").iter().collect::<Vec<_>>(), vec!["new"]);
        assert_eq!(h["x-new"], "v");
    }

    #[test]
    fn log_records_current_value_without_changing_the_request() {
        let mut h = map(&[("x-token", "a"), ("x-token", "b")]);
        let logged = apply(
            &mut h,
            &[
                HeaderAction::Log {
                    name: "X-Token".into(),
                },
                HeaderAction::Log {
                    name: "x-missing".into(),
                },
            ],
        )
        .unwrap();
        assert_eq!(
            logged,
            vec![
                ("x-token".into(), "a, b".into()),
                ("x-missing".into(), String::new())
            ]
        );
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn invalid_names_or_values_fail_closed() {
        let mut h = HeaderMap::new();
        assert_eq!(
            apply(
                &mut h,
                &[HeaderAction::Delete {
                    name: "bad name".into()
                }]
            ),
            Err(HeaderActionError::BadName("bad name".into()))
        );
        assert_eq!(
            apply(
                &mut h,
                &[HeaderAction::Add {
                    name: "x".into(),
                    value: "a\nb".into()
                }]
            ),
            Err(HeaderActionError::BadValue("x".into()))
        );
    }
}
