//! A real browser for the UI tests: Debian's `chromium`, headless, driven over the Chrome DevTools Protocol on
//! `--remote-debugging-pipe` (JSON messages ending in NUL on fds 3 and 4), so nothing listens on a port and nothing
//! is downloaded. Enough of CDP for the tests: navigate, evaluate JavaScript (awaiting promises), screenshots, and
//! the page's uncaught exceptions and console errors, which tests assert are empty.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{ChildGuard, TempDir, require_tool};

/// A headless chromium with one page attached.
pub struct Browser {
    // Drop order: the pipe to the browser (closing it asks chromium to exit), then the process, then its profile.
    to_browser: File,
    process: ChildGuard,
    _profile: TempDir,
    from_browser: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    /// Uncaught exceptions and console errors seen so far (text).
    pub page_errors: Vec<String>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.process.id())
            .finish_non_exhaustive()
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Browser {
    /// Starts `chromium` through `launcher` (a command whose program is chromium, e.g. `ip netns exec NS chromium`
    /// from `Node::command`), with a `width`x`height` viewport.
    pub fn launch(mut launcher: Command, width: u32, height: u32) -> Result<Self> {
        require_tool("chromium");
        let profile = TempDir::new("chromium")?;
        let (cmd_r, cmd_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (cr, ow) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        launcher
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--font-render-hinting=none",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            launcher.pre_exec(move || {
                // Move both ends out of the way first so neither is clobbered by the other's dup2.
                let a = libc::fcntl(cr, libc::F_DUPFD, 10);
                let b = libc::fcntl(ow, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = ChildGuard::spawn(&mut launcher).context("starting chromium")?;
        drop((cmd_r, out_w));
        let (tx, rx) = mpsc::channel();
        let mut reader = File::from(out_r);
        std::thread::Builder::new()
            .name("cdp-reader".into())
            .spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 64 * 1024];
                while let Ok(n) = reader.read(&mut chunk) {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.iter().position(|b| *b == 0) {
                        let msg: Vec<u8> = buf.drain(..=end).collect();
                        if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1])
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            })?;
        let mut b = Browser {
            to_browser: File::from(cmd_w),
            process,
            _profile: profile,
            from_browser: rx,
            session: String::new(),
            next_id: 0,
            page_errors: Vec::new(),
        };
        let targets = b.call("Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .map(String::from);
        let page = match page {
            Some(p) => p,
            None => b.call("Target.createTarget", json!({"url": "about:blank"}))?["targetId"]
                .as_str()
                .context("Target.createTarget returned no targetId")?
                .to_string(),
        };
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .context("Target.attachToTarget returned no sessionId")?
            .to_string();
        b.call("Page.enable", json!({}))?;
        b.call("Runtime.enable", json!({}))?;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        Ok(b)
    }

    /// One CDP command (on the page once attached); its `result`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .with_context(|| format!("sending {method} to chromium"))?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from_browser
                .recv_timeout(left)
                .map_err(|_| anyhow!("chromium did not answer {method} within {TIMEOUT:?}"))?;
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                self.page_errors.push(format!(
                    "uncaught: {} {}",
                    d["text"],
                    d["exception"]["description"].as_str().unwrap_or("")
                ));
            }
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.page_errors
                    .push(format!("console.error: {}", v["params"]["args"]));
            }
            _ => {}
        }
    }

    /// Loads `url` and waits until the document has loaded.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        let r = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(e) = r.get("errorText") {
            bail!("loading {url}: {e}");
        }
        self.wait_for("document.readyState === 'complete'", TIMEOUT)
            .map(|_| ())
    }

    /// Evaluates `expr` in the page (promises awaited); its value as JSON.
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!(
                "evaluating {expr}: {}",
                e["exception"]["description"]
                    .as_str()
                    .unwrap_or(&e.to_string())
            );
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` every 25 ms until it is truthy; returns its value and how long that took.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<(Value, Duration)> {
        let start = Instant::now();
        loop {
            let v = self.eval(expr)?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return Ok((v, start.elapsed()));
            }
            if start.elapsed() > timeout {
                bail!(
                    "waited {timeout:?} for `{expr}`; last value {v}; page errors {:?}",
                    self.page_errors
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&mut self) -> Result<Vec<u8>> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        base64_decode(r["data"].as_str().context("no screenshot data")?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("Browser.close", json!({}));
    }
}

/// Standard base64 (CDP's screenshots); a few lines instead of a crate.
fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let val = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", c as char),
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|b| *b != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let keep = data.len().saturating_sub(1);
        out.extend_from_slice(&n.to_be_bytes()[1..1 + keep]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(super::base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(super::base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(super::base64_decode("YWJj").unwrap(), b"abc");
        assert!(super::base64_decode("a*==").is_err());
    }
}
