//! HTTP rules: parsing/validation of one rule and the compiled per-port matcher.
//!
//! `method`, `path` and `host` are RE2-style regexes anchored to the whole value. Classes are ASCII (`\w`, `\d`,
//! `\s` as in RE2) and `.` matches one byte. The compiled [`HttpMatcher`] folds all rules of a port into ONE
//! multi-pattern lazy DFA over the string `method \0 path \0 host`, so the cost of a request does not grow with
//! the number of rules: one anchored scan gives the first rule whose method, path and host all match; headers are
//! then checked for that rule only (falling back to the full set of matching rules if its headers fail).

use std::borrow::Cow;
use std::sync::OnceLock;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternSet};

use crate::spec::HttpRuleSpec;
use crate::verdict::{HeaderAction, HttpRequest};

/// Largest compiled NFA of a single regex. Anything bigger is rejected (that policy only) instead of slowing or
/// breaking the engine.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy DFA cache of a compiled port matcher.
const DFA_CACHE: usize = 32 << 20;
/// Compiled size limit of the combined automaton of one port; beyond it the per-rule fallback is used.
const COMBINED_LIMIT: usize = 512 << 20;

/// A `mismatch` action of `headerMatches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Empty: the header must match or the rule does not match.
    Fail,
    Log,
    Add,
    Delete,
    Replace,
}

/// One header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCond {
    /// Lower case.
    pub name: String,
    /// `None`: presence only.
    pub value: Option<String>,
    pub mismatch: Mismatch,
}

/// A validated HTTP rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRuleDef {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Vec<HeaderCond>,
}

fn syntax_config() -> syntax::Config {
    // RE2 classes are ASCII; utf8(false) lets ASCII-mode classes and `.` work on raw bytes.
    syntax::Config::new().unicode(false).utf8(false)
}

fn builder(size_limit: usize) -> meta::Builder {
    let mut b = Regex::builder();
    b.syntax(syntax_config()).configure(
        Regex::config()
            .nfa_size_limit(Some(size_limit))
            .hybrid_cache_capacity(DFA_CACHE)
            .match_kind(MatchKind::LeftmostFirst),
    );
    b
}

/// The parser's own words for a syntax error (`unclosed group at offset 5`): the compiled engine's error only says
/// which pattern failed.
fn syntax_error(pattern: &str) -> Option<String> {
    match regex_syntax::ast::parse::Parser::new().parse(pattern) {
        Err(e) => Some(format!("{} at offset {}", e.kind(), e.span().start.offset)),
        Ok(_) => match regex_syntax::Parser::new().parse(pattern) {
            Err(regex_syntax::Error::Translate(e)) => {
                Some(format!("{} at offset {}", e.kind(), e.span().start.offset))
            }
            _ => None,
        },
    }
}

/// Check one regex alone; the error text says what is wrong.
pub fn check_regex(pattern: &str) -> Result<(), String> {
    if pattern.contains('\0') {
        return Err("regex must not contain NUL".into());
    }
    builder(REGEX_SIZE_LIMIT)
        .build(&format!("(?:{pattern})"))
        .map(|_| ())
        .map_err(|e| {
            if e.size_limit().is_some() {
                format!(
                    "regex is too large for the engine (compiled size over {} bytes); simplify it",
                    REGEX_SIZE_LIMIT
                )
            } else {
                format!(
                    "invalid regex {pattern:?}: {}",
                    syntax_error(pattern).unwrap_or_else(|| e.to_string())
                )
            }
        })
}

/// Validate one rule; on error returns (field suffix such as `.path`, reason).
pub(crate) fn parse_http_rule(r: &HttpRuleSpec) -> Result<HttpRuleDef, (String, String)> {
    for (field, v) in [("method", &r.method), ("path", &r.path), ("host", &r.host)] {
        if let Some(p) = v {
            check_regex(p).map_err(|e| (format!(".{field}"), e))?;
        }
    }
    let mut headers = Vec::new();
    for (i, h) in r.headers.iter().flatten().enumerate() {
        let (name, value) = match h.split_once(' ') {
            Some((n, v)) => (n.trim_end_matches(':'), Some(v.trim_start().to_string())),
            None => (h.trim_end_matches(':'), None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err((
                format!(".headers[{i}]"),
                format!("{h:?} is not `Name` or `Name: value`"),
            ));
        }
        headers.push(HeaderCond {
            name: name.to_ascii_lowercase(),
            value,
            mismatch: Mismatch::Fail,
        });
    }
    for (i, m) in r.header_matches.iter().flatten().enumerate() {
        let p = format!(".headerMatches[{i}]");
        if m.name.is_empty() {
            return Err((format!("{p}.name"), "header name must not be empty".into()));
        }
        if m.secret.is_some() {
            return Err((
                format!("{p}.secret"),
                "secret-backed header values are not supported by Tollgate yet; use `value`".into(),
            ));
        }
        let mismatch = match m.mismatch.as_deref() {
            None | Some("") => Mismatch::Fail,
            Some("LOG") => Mismatch::Log,
            Some("ADD") => Mismatch::Add,
            Some("DELETE") => Mismatch::Delete,
            Some("REPLACE") => Mismatch::Replace,
            Some(other) => {
                return Err((
                    format!("{p}.mismatch"),
                    format!(
                        "unknown mismatch action {other:?}; use \"\", LOG, ADD, DELETE or REPLACE"
                    ),
                ));
            }
        };
        if matches!(mismatch, Mismatch::Add | Mismatch::Replace) && m.value.is_none() {
            return Err((
                format!("{p}.value"),
                "ADD and REPLACE need a value to write".into(),
            ));
        }
        headers.push(HeaderCond {
            name: m.name.to_ascii_lowercase(),
            value: m.value.clone(),
            mismatch,
        });
    }
    Ok(HttpRuleDef {
        method: r.method.clone(),
        path: r.path.clone(),
        host: r.host.clone(),
        headers,
    })
}

/// The value of a header, with repeated instances joined by ", " (names compared case-insensitively).
pub fn header_value<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<Cow<'a, str>> {
    let mut found: Option<Cow<'a, str>> = None;
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(name) {
            found = Some(match found {
                None => Cow::Borrowed(*v),
                Some(prev) => Cow::Owned(format!("{prev}, {v}")),
            });
        }
    }
    found
}

impl HttpRuleDef {
    /// Header conditions: `None` = the rule does not match; otherwise the actions to apply.
    pub fn check_headers(&self, headers: &[(&str, &str)]) -> Option<Vec<HeaderAction>> {
        let mut actions = Vec::new();
        for c in &self.headers {
            let got = header_value(headers, &c.name);
            let ok = match (&got, &c.value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(g), Some(want)) => g == want,
            };
            if ok {
                continue;
            }
            let value = c.value.clone().unwrap_or_default();
            match c.mismatch {
                Mismatch::Fail => return None,
                Mismatch::Log => actions.push(HeaderAction::Log {
                    name: c.name.clone(),
                }),
                Mismatch::Add => actions.push(HeaderAction::Add {
                    name: c.name.clone(),
                    value,
                }),
                Mismatch::Delete => actions.push(HeaderAction::Delete {
                    name: c.name.clone(),
                }),
                Mismatch::Replace => actions.push(HeaderAction::Replace {
                    name: c.name.clone(),
                    value,
                }),
            }
        }
        Some(actions)
    }

    fn combined_pattern(&self) -> String {
        let part = |p: &Option<String>| match p {
            Some(p) => format!("(?:{p})"),
            None => "(?s:.*)".to_string(),
        };
        // Separators are NUL, which requests never contain (rejected before matching), so a user regex that
        // could match NUL still cannot cross a field boundary: the pattern needs exactly two NULs.
        format!(
            r"{}\x00{}\x00{}\z",
            part(&self.method),
            part(&self.path),
            part(&self.host)
        )
    }
}

/// All HTTP rules of one port, compiled together.
#[derive(Debug)]
pub struct HttpMatcher {
    rules: Vec<HttpRuleDef>,
    patterns: Vec<String>,
    dfa: Option<Regex>,
    /// Same patterns with MatchKind::All, built on first need (a rule matched but its headers did not).
    all: OnceLock<Option<Regex>>,
    /// Fallback if the combined automaton is too big: one regex per rule (linear, but correct).
    singles: Vec<Regex>,
}

impl HttpMatcher {
    /// The rules as written (for `tollgate policy get`).
    pub fn rules(&self) -> &[HttpRuleDef] {
        &self.rules
    }

    /// Compile. Rules were validated one by one at load time, so this only fails over to the per-rule form.
    pub fn new(rules: Vec<HttpRuleDef>) -> Result<Self, String> {
        let patterns: Vec<String> = rules.iter().map(HttpRuleDef::combined_pattern).collect();
        let dfa = builder(COMBINED_LIMIT).build_many(&patterns).ok();
        let singles = if dfa.is_some() {
            Vec::new()
        } else {
            patterns
                .iter()
                .map(|p| {
                    builder(REGEX_SIZE_LIMIT * 4)
                        .build(p)
                        .map_err(|e| format!("HTTP rules do not compile: {e}"))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(HttpMatcher {
            rules,
            patterns,
            dfa,
            all: OnceLock::new(),
            singles,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule (by index) matching the request, with its header actions.
    pub fn find(&self, req: &HttpRequest) -> Option<(usize, Vec<HeaderAction>)> {
        if req.method.contains('\0') || req.path.contains('\0') || req.host.contains('\0') {
            return None;
        }
        // Most requests fit a stack buffer; only long paths pay for an allocation.
        let len = req.method.len() + req.path.len() + req.host.len() + 2;
        let mut stack = [0u8; 512];
        let mut heap = Vec::new();
        let hay: &mut [u8] = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        let (m, rest) = hay.split_at_mut(req.method.len());
        m.copy_from_slice(req.method.as_bytes());
        let (p, rest) = rest[1..].split_at_mut(req.path.len());
        p.copy_from_slice(req.path.as_bytes());
        rest[1..].copy_from_slice(req.host.as_bytes());
        let input = Input::new(&*hay).anchored(Anchored::Yes);
        match &self.dfa {
            Some(dfa) => {
                // Leftmost-first + every pattern ending at \z: the reported pattern is the lowest-index rule that
                // matches method, path and host.
                let first = dfa.search_half(&input)?.pattern().as_usize();
                if let Some(actions) = self.rules[first].check_headers(req.headers) {
                    return Some((first, actions));
                }
                // Its headers failed: look at every rule that matched, in order.
                let all = self.all.get_or_init(|| {
                    let mut b = builder(COMBINED_LIMIT);
                    b.configure(Regex::config().match_kind(MatchKind::All));
                    b.build_many(&self.patterns).ok()
                });
                let Some(all) = all else {
                    return self.linear(&input, req, first + 1);
                };
                let mut set = PatternSet::new(all.pattern_len());
                all.which_overlapping_matches(&input, &mut set);
                set.iter()
                    .map(|p| p.as_usize())
                    .filter(|&i| i > first)
                    .find_map(|i| self.rules[i].check_headers(req.headers).map(|a| (i, a)))
            }
            None => self.linear(&input, req, 0),
        }
    }

    fn linear(
        &self,
        input: &Input,
        req: &HttpRequest,
        from: usize,
    ) -> Option<(usize, Vec<HeaderAction>)> {
        (from..self.rules.len()).find_map(|i| {
            let hit = match self.singles.get(i) {
                Some(re) => re.search_half(input).is_some(),
                None => builder(REGEX_SIZE_LIMIT * 4)
                    .build(&self.patterns[i])
                    .is_ok_and(|re| re.search_half(input).is_some()),
            };
            if hit {
                self.rules[i].check_headers(req.headers).map(|a| (i, a))
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Option<&str>, path: Option<&str>) -> HttpRuleDef {
        HttpRuleDef {
            method: method.map(str::to_string),
            path: path.map(str::to_string),
            ..HttpRuleDef::default()
        }
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
    ) -> HttpRequest<'a> {
        HttpRequest {
            method,
            path,
            host: "h",
            headers,
        }
    }

    #[test]
    fn large_rule_sets_find_the_exact_rule() {
        let methods = ["GET", "POST", "PUT"];
        let rules: Vec<HttpRuleDef> = (0..3000)
            .map(|i| {
                rule(
                    Some(methods[i % 3]),
                    Some(&format!("/api/v{i}/items/[0-9]+")),
                )
            })
            .collect();
        let m = HttpMatcher::new(rules).expect("compiles");
        assert!(m.dfa.is_some(), "3000 rules fit the combined automaton");
        for i in [0usize, 1, 1500, 2999] {
            let path = format!("/api/v{i}/items/42");
            assert_eq!(
                m.find(&req(methods[i % 3], &path, &[])).map(|x| x.0),
                Some(i)
            );
            assert_eq!(m.find(&req("DELETE", &path, &[])), None);
        }
        assert_eq!(m.find(&req("GET", "/api/v0/items/4x2", &[])), None);
        assert_eq!(m.find(&req("GET", "/api/v3000/items/1", &[])), None);
    }

    #[test]
    fn header_failure_falls_back_to_the_next_matching_rule_in_order() {
        let mut first = rule(None, Some("/a.*"));
        first.headers.push(HeaderCond {
            name: "x-k".into(),
            value: Some("v".into()),
            mismatch: Mismatch::Fail,
        });
        let rules = vec![
            first,
            rule(Some("POST"), None),
            rule(None, Some("/ab")),
            rule(None, None),
        ];
        let m = HttpMatcher::new(rules).expect("compiles");
        assert_eq!(
            m.find(&req("GET", "/ab", &[("X-K", "v")])).map(|x| x.0),
            Some(0)
        );
        assert_eq!(
            m.find(&req("GET", "/ab", &[("X-K", "w")])).map(|x| x.0),
            Some(2)
        );
        assert_eq!(m.find(&req("GET", "/zz", &[])).map(|x| x.0), Some(3));
    }

    #[test]
    fn lowest_index_wins_whatever_the_pattern_shapes() {
        let m = HttpMatcher::new(vec![
            rule(None, Some("/abc")),
            rule(None, Some("/a.*")),
            rule(Some("GET"), Some("/abc")),
        ])
        .expect("compiles");
        assert_eq!(m.find(&req("GET", "/abc", &[])).map(|x| x.0), Some(0));
        assert_eq!(m.find(&req("GET", "/abcd", &[])).map(|x| x.0), Some(1));
        let m = HttpMatcher::new(vec![
            rule(Some("P.*"), Some("/x/[0-9]+")),
            rule(None, Some("/x/1")),
        ])
        .expect("compiles");
        assert_eq!(m.find(&req("GET", "/x/1", &[])).map(|x| x.0), Some(1));
        assert_eq!(m.find(&req("PUT", "/x/1", &[])).map(|x| x.0), Some(0));
    }

    #[test]
    fn long_values_and_nul_bytes() {
        let m = HttpMatcher::new(vec![rule(None, Some("/long/.*"))]).expect("compiles");
        let long = format!("/long/{}", "x".repeat(5000));
        assert_eq!(m.find(&req("GET", &long, &[])).map(|x| x.0), Some(0));
        assert_eq!(
            m.find(&req("GET", "/long/\0", &[])),
            None,
            "NUL never matches"
        );
        let any = HttpMatcher::new(vec![rule(Some("G[^x]*"), Some("[^x]*"))]).expect("compiles");
        assert_eq!(any.find(&req("GET", "/p", &[])).map(|x| x.0), Some(0));
    }

    #[test]
    fn regex_checks() {
        assert!(check_regex("/api/v[0-9]+/.*").is_ok());
        assert!(check_regex("(").unwrap_err().contains("invalid regex"));
        assert_eq!(
            check_regex("/api/(v1").unwrap_err(),
            "invalid regex \"/api/(v1\": unclosed group at offset 5"
        );
        assert!(
            check_regex("(a{100}){100}{100}")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn header_values_join_repeated_instances() {
        let h = [("A", "1"), ("b", "2"), ("a", "3")];
        assert_eq!(header_value(&h, "a").as_deref(), Some("1, 3"));
        assert_eq!(header_value(&h, "B").as_deref(), Some("2"));
        assert_eq!(header_value(&h, "c"), None);
    }
}
