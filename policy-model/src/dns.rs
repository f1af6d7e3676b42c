//! DNS name matching for `rules.dns` and `toFQDNs`: `matchName` and `matchPattern`.
//!
//! Names compare case-insensitively and a trailing dot is optional. In a pattern, `*` matches within one label
//! (`[-a-zA-Z0-9_]*`), a leading `**.` matches one or more whole labels, and a pattern of only `*` matches every name.

/// A compiled name matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsMatcher {
    /// `matchName`, normalised (lower case, no trailing dot).
    Name(String),
    /// `matchPattern: "*"`.
    Everything,
    /// `matchPattern`; `multi_prefix` = leading `**.`; `labels` = the remaining labels, each a glob.
    Pattern {
        multi_prefix: bool,
        labels: Vec<String>,
    },
}

/// Lower-case and drop one trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl DnsMatcher {
    /// Compile `matchName`; returns the problem for invalid names.
    pub fn name(name: &str) -> Result<Self, String> {
        let n = normalize_name(name);
        if n.is_empty() {
            return Err("matchName must not be empty".into());
        }
        if let Some(c) = n.chars().find(|c| !is_name_char(*c) && *c != '.') {
            return Err(format!(
                "matchName contains {c:?}; use letters, digits, '-', '_' and '.' (wildcards belong in matchPattern)"
            ));
        }
        if n.split('.').any(str::is_empty) {
            return Err("matchName has an empty label (\"..\" or a leading dot)".into());
        }
        Ok(DnsMatcher::Name(n))
    }

    /// Compile `matchPattern`; returns the problem for invalid patterns.
    pub fn pattern(pattern: &str) -> Result<Self, String> {
        let p = normalize_name(pattern);
        if p == "*" {
            return Ok(DnsMatcher::Everything);
        }
        if p.is_empty() {
            return Err("matchPattern must not be empty".into());
        }
        let (multi_prefix, rest) = match p.strip_prefix("**.") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let labels: Vec<String> = rest.split('.').map(str::to_string).collect();
        for l in &labels {
            if l.is_empty() {
                return Err("matchPattern has an empty label".into());
            }
            if l.contains("**") {
                return Err(
                    "'**' is only allowed as the whole first label (\"**.example.com\")".into(),
                );
            }
            if let Some(c) = l.chars().find(|c| !is_name_char(*c) && *c != '*') {
                return Err(format!(
                    "matchPattern contains {c:?}; use letters, digits, '-', '_', '.' and '*'"
                ));
            }
        }
        Ok(DnsMatcher::Pattern {
            multi_prefix,
            labels,
        })
    }

    /// Does `name` (any case, optional trailing dot) match?
    pub fn matches(&self, name: &str) -> bool {
        let n = normalize_name(name);
        self.matches_normalized(&n)
    }

    /// Like [`Self::matches`] for an already normalised name.
    pub fn matches_normalized(&self, n: &str) -> bool {
        match self {
            DnsMatcher::Name(want) => n == want,
            DnsMatcher::Everything => !n.is_empty(),
            DnsMatcher::Pattern {
                multi_prefix,
                labels,
            } => {
                let got: Vec<&str> = n.split('.').collect();
                if got.iter().any(|l| l.is_empty()) {
                    return false;
                }
                let ok_len = if *multi_prefix {
                    got.len() > labels.len()
                } else {
                    got.len() == labels.len()
                };
                ok_len
                    && got[got.len() - labels.len()..]
                        .iter()
                        .zip(labels)
                        .all(|(g, p)| glob_label(p.as_bytes(), g.as_bytes()))
                    && got[..got.len() - labels.len()]
                        .iter()
                        .all(|l| l.chars().all(is_name_char))
            }
        }
    }
}

/// Match one label against a glob where `*` matches `[-a-zA-Z0-9_]*`. Linear-time greedy matching with
/// backtracking to the last star only, so hostile names cannot make it exponential.
fn glob_label(pat: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < pat.len() && pat[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < pat.len() && pat[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            // Let the last star swallow one more byte, which must be a name character.
            if !is_name_char(s[ss] as char) {
                return false;
            }
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    pat[pi..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_is_linear_and_correct() {
        assert!(glob_label(b"a*b", b"axxb"));
        assert!(glob_label(b"a*b", b"ab"));
        assert!(!glob_label(b"a*b", b"axxc"));
        assert!(glob_label(b"*", b""));
        assert!(glob_label(b"**x", b"abx"));
        assert!(
            !glob_label(b"a*", b"a+b"),
            "star matches name characters only"
        );
        let pat = "*a".repeat(30);
        let s = "a".repeat(29) + "b";
        assert!(!glob_label(pat.as_bytes(), s.as_bytes()));
        let long = "x".repeat(63);
        let p = "*x*x*x*x*x*x*x*x*x*x*y";
        assert!(!glob_label(p.as_bytes(), long.as_bytes()));
    }

    #[test]
    fn validation() {
        assert!(DnsMatcher::name("a..b").is_err());
        assert!(DnsMatcher::name("*.a").is_err());
        assert!(DnsMatcher::pattern("a.**.b").is_err());
        assert!(DnsMatcher::pattern("a b").is_err());
        assert_eq!(
            DnsMatcher::pattern("*").expect("star"),
            DnsMatcher::Everything
        );
        assert!(!DnsMatcher::Everything.matches("."));
    }
}
