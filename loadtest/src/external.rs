//! External load generators beside our own, so `tollgate-load` is never the only witness: wrk for HTTP/1.1 and
//! h2load (nghttp2) for HTTP/2 and gRPC-shaped load (h2c prior knowledge). This module builds their command lines
//! and parses their text output; the runner executes them pinned to the load core and charges the proxy's
//! utime+stime from /proc over the run.

use serde::{Deserialize, Serialize};

/// Which tool an `[[external]]` entry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Wrk,
    H2load,
}

impl Tool {
    pub fn program(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::H2load => "h2load",
        }
    }

    /// The Debian package that ships it (named in errors).
    pub fn package(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::H2load => "nghttp2-client",
        }
    }
}

/// An `[[external]]` entry of a scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    pub tool: Tool,
    /// Arguments before the duration and URL, e.g. `["-t1", "-c8"]` or `["-c8", "-m10"]`.
    pub args: Vec<String>,
    /// Seconds per run.
    pub duration: f64,
}

impl ExternalSpec {
    /// `wrk -t1 -c8` / `h2load -c8 -m10`: how rows name the generator.
    pub fn name(&self) -> String {
        format!("{} {}", self.tool.program(), self.args.join(" "))
    }
}

/// What a run needs to know about the request beyond the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    /// Host header (wrk; h2load takes the authority from the URL).
    pub host: String,
    /// gRPC-shaped: POST this file (one length-prefixed message) with `content-type: application/grpc`.
    pub grpc_body: Option<String>,
}

/// The full argument vector (program first).
pub fn argv(spec: &ExternalSpec, req: &Request) -> Vec<String> {
    let mut v = vec![spec.tool.program().to_string()];
    v.extend(spec.args.iter().cloned());
    match spec.tool {
        Tool::Wrk => {
            v.push(format!("-d{}s", spec.duration));
            v.push("--latency".into());
            v.push("-H".into());
            v.push(format!("Host: {}", req.host));
        }
        Tool::H2load => {
            v.push("-D".into());
            v.push(spec.duration.to_string());
            if let Some(body) = &req.grpc_body {
                v.extend([
                    "-H".into(),
                    "content-type: application/grpc".into(),
                    "-H".into(),
                    "te: trailers".into(),
                    "-d".into(),
                    body.clone(),
                ]);
            }
        }
    }
    v.push(req.url.clone());
    v
}

/// What an external generator reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    pub rps: f64,
    /// Requests completed (any status).
    pub requests: u64,
    /// Responses outside 2xx (wrk counts 3xx as success; there are none here).
    pub non_2xx: u64,
    /// Transport errors (wrk socket errors; h2load `errored` + `timeout`).
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{tool} output has no {what} line; its output was:\n{output}")]
pub struct ParseError {
    pub tool: &'static str,
    pub what: &'static str,
    pub output: String,
}

/// The number after `label` in `line` (`"123 requests"` style counts and `"Requests/sec: 1.5"` style values).
fn number_after<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    line.split_once(label)?.1.split_whitespace().next()
}

/// Counts of the form `N name` in a comma-separated line (`8000 succeeded, 54 failed`).
fn count_before(line: &str, name: &str) -> Option<u64> {
    line.split(',').find_map(|part| {
        let mut w = part.split_whitespace().rev();
        let (n, label) = match (w.next(), w.next()) {
            (Some(label), Some(n)) => (n, label),
            _ => return None,
        };
        (label == name).then(|| n.parse().ok()).flatten()
    })
}

/// Parses wrk's output (`Requests/sec:`, `N requests in`, `Non-2xx or 3xx responses:`, `Socket errors:`).
pub fn parse_wrk(out: &str) -> Result<ToolOutput, ParseError> {
    let missing = |what| ParseError {
        tool: "wrk",
        what,
        output: out.into(),
    };
    let rps = out
        .lines()
        .find_map(|l| number_after(l, "Requests/sec:")?.parse().ok())
        .ok_or_else(|| missing("Requests/sec:"))?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| missing("N requests in"))?;
    let non_2xx = out
        .lines()
        .find_map(|l| number_after(l, "Non-2xx or 3xx responses:")?.parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 2, write 0, timeout 0"
    let errors = out
        .lines()
        .find_map(|l| l.split_once("Socket errors:"))
        .map(|(_, rest)| {
            rest.split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(ToolOutput {
        rps,
        requests,
        non_2xx,
        errors,
    })
}

/// Parses h2load's summary (`finished in 1.01s, 8000.00 req/s`, `requests: ... done, ... errored, ... timeout`,
/// `status codes: N 2xx, N 3xx, N 4xx, N 5xx`).
pub fn parse_h2load(out: &str) -> Result<ToolOutput, ParseError> {
    let missing = |what| ParseError {
        tool: "h2load",
        what,
        output: out.into(),
    };
    let rps = out
        .lines()
        .find(|l| l.starts_with("finished in "))
        .and_then(|l| l.split(',').nth(1)?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| missing("finished in .., N req/s"))?;
    let req_line = out
        .lines()
        .find_map(|l| l.strip_prefix("requests:"))
        .ok_or_else(|| missing("requests:"))?;
    let status = out
        .lines()
        .find_map(|l| l.strip_prefix("status codes:"))
        .ok_or_else(|| missing("status codes:"))?;
    let count = |line: &str, name| count_before(line, name).unwrap_or(0);
    Ok(ToolOutput {
        rps,
        requests: count(req_line, "done"),
        non_2xx: count(status, "3xx") + count(status, "4xx") + count(status, "5xx"),
        errors: count(req_line, "errored") + count(req_line, "timeout"),
    })
}

pub fn parse(tool: Tool, out: &str) -> Result<ToolOutput, ParseError> {
    match tool {
        Tool::Wrk => parse_wrk(out),
        Tool::H2load => parse_h2load(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OK: &str = include_str!("../testdata/wrk-ok.txt");
    const WRK_DENY: &str = include_str!("../testdata/wrk-deny.txt");
    const H2_OK: &str = include_str!("../testdata/h2-ok.txt");
    const H2_DENY: &str = include_str!("../testdata/h2-deny.txt");
    const H2_REFUSED: &str = include_str!("../testdata/h2-refused.txt");

    #[test]
    fn wrk_outputs() {
        assert_eq!(
            parse_wrk(WRK_OK).unwrap(),
            ToolOutput {
                rps: 114496.71,
                requests: 115104,
                non_2xx: 0,
                errors: 0
            }
        );
        let d = parse_wrk(WRK_DENY).unwrap();
        assert_eq!((d.requests, d.non_2xx), (69788, 69788));
        let with_errors =
            format!("{WRK_OK}  Socket errors: connect 0, read 2, write 1, timeout 4\n");
        assert_eq!(parse_wrk(&with_errors).unwrap().errors, 7);
        let e = parse_wrk("wrk: unable to connect").unwrap_err();
        assert!(e.to_string().contains("no Requests/sec: line"), "{e}");
    }

    #[test]
    fn h2load_outputs() {
        assert_eq!(
            parse_h2load(H2_OK).unwrap(),
            ToolOutput {
                rps: 8000.0,
                requests: 8054,
                non_2xx: 0,
                errors: 54
            }
        );
        let d = parse_h2load(H2_DENY).unwrap();
        assert_eq!((d.non_2xx, d.errors), (8000, 124));
        let r = parse_h2load(H2_REFUSED).unwrap();
        assert_eq!((r.rps, r.requests), (0.0, 0));
        assert!(parse_h2load("starting benchmark...\n").is_err());
    }

    #[test]
    fn command_lines() {
        let req = Request {
            url: "http://10.0.1.20:8090/api/v1/resource-99".into(),
            host: "backend".into(),
            grpc_body: None,
        };
        let wrk = ExternalSpec {
            tool: Tool::Wrk,
            args: vec!["-t1".into(), "-c8".into()],
            duration: 10.0,
        };
        assert_eq!(wrk.name(), "wrk -t1 -c8");
        assert_eq!(
            argv(&wrk, &req).join(" "),
            "wrk -t1 -c8 -d10s --latency -H Host: backend http://10.0.1.20:8090/api/v1/resource-99"
        );
        let h2 = ExternalSpec {
            tool: Tool::H2load,
            args: vec!["-c8".into(), "-m100".into()],
            duration: 2.5,
        };
        let grpc = Request {
            grpc_body: Some("/w/body.bin".into()),
            ..req
        };
        let v = argv(&h2, &grpc);
        assert_eq!(v[..5].join(" "), "h2load -c8 -m100 -D 2.5");
        assert!(
            v.join(" ")
                .contains("-H content-type: application/grpc -H te: trailers -d /w/body.bin")
        );
        assert_eq!(
            v.last().unwrap(),
            "http://10.0.1.20:8090/api/v1/resource-99"
        );
    }
}
