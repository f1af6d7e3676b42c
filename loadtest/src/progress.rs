//! Progress while a scenario runs: on a terminal, one stderr line redrawn in place (run n of N, what runs, a bar
//! for the elapsed share of the run); otherwise one plain line per run so logs stay readable.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The bar text for `elapsed` of `total`, `width` cells wide.
pub fn bar(elapsed: Duration, total: Duration, width: usize) -> String {
    let frac = if total.is_zero() {
        1.0
    } else {
        (elapsed.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
    };
    let full = (frac * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(full), "-".repeat(width - full))
}

#[derive(Debug)]
pub struct Progress {
    tty: bool,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            ticker: None,
        }
    }

    /// A run of about `expected` starts; `what` names it.
    pub fn start(&mut self, n: usize, total: usize, what: &str, expected: Duration) {
        self.finish();
        let head = format!("[{n}/{total}] {what}");
        if !self.tty {
            eprintln!("{head}");
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let t0 = Instant::now();
        let handle = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let e = t0.elapsed();
                eprint!(
                    "\r\x1b[2K{head} {} {:.0}/{:.0} s",
                    bar(e, expected, 30),
                    e.as_secs_f64(),
                    expected.as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        self.ticker = Some((stop, handle));
    }

    /// A step that has no known length (setting up, idle-connection measurement).
    pub fn note(&mut self, what: &str) {
        self.finish();
        if self.tty {
            eprint!("\r\x1b[2K{what}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{what}");
        }
    }

    /// Ends the current run's line.
    pub fn finish(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_elapsed_share() {
        let s = Duration::from_secs;
        assert_eq!(bar(s(0), s(10), 10), "[----------]");
        assert_eq!(bar(s(5), s(10), 10), "[#####-----]");
        assert_eq!(bar(s(20), s(10), 10), "[##########]");
        assert_eq!(bar(s(1), Duration::ZERO, 4), "[####]");
    }
}
