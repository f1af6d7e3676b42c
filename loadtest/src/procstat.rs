//! CPU seconds and RSS of a process from /proc: the proxy's cost per request is measured from outside, the same
//! way for Tollgate and for the peers.

use std::io;

/// Clock ticks per second of /proc/<pid>/stat times; Linux reports USER_HZ = 100 on every supported platform.
const USER_HZ: f64 = 100.0;

/// One /proc sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// utime + stime in seconds.
    pub cpu_secs: f64,
    /// stime alone (time in the kernel on the process's behalf) in seconds.
    pub sys_secs: f64,
    pub rss_kib: u64,
}

/// (utime + stime, stime) in seconds from the text of /proc/<pid>/stat. The command name may contain spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ... utime is field 14 overall = index 11 here, stime index 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(((utime + stime) as f64 / USER_HZ, stime as f64 / USER_HZ))
}

/// VmRSS in KiB from the text of /proc/<pid>/status.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/{what} has no {what} value"),
        )
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let (cpu_secs, sys_secs) = parse_stat_cpu(&stat).ok_or_else(|| bad("stat"))?;
    Ok(ProcSample {
        cpu_secs,
        sys_secs,
        rss_kib: parse_status_rss(&status).ok_or_else(|| bad("status"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_name() {
        let stat = "1234 (my (proc) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 99 1000 200";
        assert_eq!(parse_stat_cpu(stat), Some((3.0, 0.5)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn status_rss() {
        assert_eq!(
            parse_status_rss("Name:\tx\nVmRSS:\t   5120 kB\nThreads: 1\n"),
            Some(5120)
        );
        assert_eq!(parse_status_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_sample() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
