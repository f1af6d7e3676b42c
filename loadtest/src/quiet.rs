//! The quiet-machine gate: figures measured while other programs compete for the two cores are not figures
//! (a build on the shared machine turned sub-millisecond DNS and Kafka tails into 27 ms and 444 ms).
//!
//! Two readings of `/proc/loadavg`. Before the first scenario, the 1-minute load average must be at or below the
//! threshold. Between rounds and scenarios the 1-minute average still carries our own load from the run that just
//! ended (it decays over minutes), so there the gate reads the instantaneous count of runnable tasks (the 4th
//! field, `running/total`) several times while every service of ours is idle, and takes the median minus one
//! (the reader itself). Both are recorded; the highest decides whether BENCHMARKS.md may be written.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default threshold for both readings.
pub const DEFAULT_MAX_LOAD: f64 = 0.5;

/// One reading of `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadSample {
    /// The 1-minute load average.
    pub one_min: f64,
    /// Runnable tasks other than the reader (median over a short window).
    pub runnable_others: f64,
}

/// Parses `/proc/loadavg` (`0.42 0.30 0.25 3/812 12345`) into (1-minute average, runnable tasks).
pub fn parse_loadavg(text: &str) -> Option<(f64, u32)> {
    let mut f = text.split_whitespace();
    let one_min = f.next()?.parse().ok()?;
    let running = f.nth(2)?.split('/').next()?.parse().ok()?;
    Some((one_min, running))
}

/// The median of `running` counts minus the reader itself (never below 0).
pub fn runnable_others(running: &[u32]) -> f64 {
    let mut v: Vec<f64> = running.iter().map(|&r| f64::from(r)).collect();
    crate::spread::median(&mut v).map_or(0.0, |m| (m - 1.0).max(0.0))
}

/// Reads `/proc/loadavg` `samples` times over about `window`.
pub fn sample(samples: usize, window: Duration) -> std::io::Result<LoadSample> {
    let mut one_min = 0.0;
    let mut running = Vec::with_capacity(samples);
    let gap = window / samples.max(1) as u32;
    for _ in 0..samples.max(1) {
        let text = std::fs::read_to_string("/proc/loadavg")?;
        let (one, run) = parse_loadavg(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/loadavg is not `avg avg avg running/total pid`: {text:?}"),
            )
        })?;
        one_min = one;
        running.push(run);
        std::thread::sleep(gap);
    }
    Ok(LoadSample {
        one_min,
        runnable_others: runnable_others(&running),
    })
}

/// What the gate concluded over a whole `tollgate-load scenario` invocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub max_load: f64,
    pub allow_busy: bool,
    /// The 1-minute load average before the first scenario.
    pub initial_one_min: f64,
    /// The highest runnable-others reading between rounds and scenarios.
    pub worst_runnable: f64,
}

/// What may be done with the figures.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Quiet,
    /// Busy, and `--allow-busy` was given: write, with a bold warning on every table.
    BusyAllowed(String),
    /// Busy: print, never write BENCHMARKS.md.
    BusyRefused(String),
}

impl Gate {
    pub fn new(max_load: f64, allow_busy: bool, initial_one_min: f64) -> Self {
        Gate {
            max_load,
            allow_busy,
            initial_one_min,
            worst_runnable: 0.0,
        }
    }

    pub fn record(&mut self, s: LoadSample) {
        self.worst_runnable = self.worst_runnable.max(s.runnable_others);
    }

    /// The highest reading that counts against the threshold.
    pub fn worst(&self) -> f64 {
        self.initial_one_min.max(self.worst_runnable)
    }

    pub fn verdict(&self) -> Verdict {
        let worst = self.worst();
        if worst <= self.max_load {
            return Verdict::Quiet;
        }
        let why = format!(
            "machine busy (load {worst:.2} > {:.2}: 1-minute average {:.2} before the start, up to {:.2} other \
             runnable tasks between rounds)",
            self.max_load, self.initial_one_min, self.worst_runnable
        );
        if self.allow_busy {
            Verdict::BusyAllowed(why)
        } else {
            Verdict::BusyRefused(why)
        }
    }
}

impl Verdict {
    /// The line put above every table, if any.
    pub fn banner(&self) -> Option<String> {
        match self {
            Verdict::Quiet => None,
            Verdict::BusyAllowed(why) => Some(format!(
                "**NOT PUBLISHABLE: {why}; written anyway because of --allow-busy.**"
            )),
            Verdict::BusyRefused(why) => Some(format!("**NOT PUBLISHABLE: {why}.**")),
        }
    }
}

/// Puts `banner` on its own paragraph above every Markdown table of `md` (a `|` line after a non-`|` line).
pub fn mark_tables(md: &str, banner: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut in_table = false;
    for line in md.split_inclusive('\n') {
        let is_row = line.starts_with('|');
        if is_row && !in_table {
            out.push_str(banner);
            out.push_str("\n\n");
        }
        in_table = is_row;
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_fields() {
        assert_eq!(
            parse_loadavg("0.42 0.30 0.25 3/812 12345\n"),
            Some((0.42, 3))
        );
        assert_eq!(parse_loadavg("0.42 0.30"), None);
        assert_eq!(parse_loadavg("x 0.30 0.25 3/812 1"), None);
    }

    #[test]
    fn runnable_others_is_the_median_minus_the_reader() {
        assert_eq!(runnable_others(&[1, 1, 5, 1, 1]), 0.0);
        assert_eq!(runnable_others(&[3, 3, 1, 3]), 2.0);
        assert_eq!(runnable_others(&[]), 0.0);
        assert_eq!(runnable_others(&[0]), 0.0);
    }

    #[test]
    fn gate_passes_quiet_refuses_busy_and_allows_on_request() {
        let mut g = Gate::new(0.5, false, 0.2);
        g.record(LoadSample {
            one_min: 1.8,
            runnable_others: 0.0,
        });
        // Our own run raises the 1-minute average; only the runnable count counts between rounds.
        assert_eq!(g.verdict(), Verdict::Quiet);
        assert_eq!(g.verdict().banner(), None);
        g.record(LoadSample {
            one_min: 1.8,
            runnable_others: 2.0,
        });
        let Verdict::BusyRefused(why) = g.verdict() else {
            panic!("{:?}", g.verdict())
        };
        assert!(why.contains("load 2.00 > 0.50"), "{why}");
        let busy_start = Gate::new(0.5, true, 3.25);
        let banner = busy_start.verdict().banner().unwrap();
        assert!(
            banner.starts_with("**NOT PUBLISHABLE: machine busy (load 3.25")
                && banner.contains("--allow-busy"),
            "{banner}"
        );
        assert_eq!(Gate::new(0.5, false, 0.5).verdict(), Verdict::Quiet);
    }

    #[test]
    fn banner_above_every_table() {
        let md = "## a\n\n| x |\n|---|\n| 1 |\n\ntext\n| y |\n|---|\n";
        let marked = mark_tables(md, "**B**");
        assert_eq!(
            marked,
            "## a\n\n**B**\n\n| x |\n|---|\n| 1 |\n\ntext\n**B**\n\n| y |\n|---|\n"
        );
        assert_eq!(marked.matches("**B**").count(), 2);
    }
}
