//! The open-file limit (RLIMIT_NOFILE) the daemon needs: each proxied connection holds two descriptors (the
//! client's socket and the upstream's), each DNS query in flight one upstream socket, each DNS TCP connection one
//! more, plus a fixed reserve (listeners, handoff sockets, eBPF maps and programs, the flow log, the observer and
//! metrics servers, the tunnel). At start-up the daemon raises its soft limit to what it needs (up to the hard
//! limit, or past it with CAP_SYS_RESOURCE), and refuses an explicit `--max-connections` the limit cannot carry:
//! running out of descriptors under load fails accepts and upstream connects at random, far from the cause.
//!
//! The default `--max-connections` (16,384) is a ceiling, not a promise: when the hard limit is lower, the default
//! shrinks to what it can carry and a warning says so (a default must never stop the daemon from starting).

/// Descriptors kept for everything that is not a proxied connection or a DNS query.
pub const RESERVE: u64 = 256;

/// Idle upstream UDP sockets the DNS proxy may keep (its socket pool, for the usual one or two resolvers).
const DNS_POOL: u64 = 512;

/// What the daemon is configured to hold open at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub max_connections: u64,
    /// `true` when `--max-connections` was given (then it is refused, not shrunk, when the limit cannot carry it).
    pub explicit: bool,
    /// DNS descriptors at most (0 without the DNS proxy); see [`dns_descriptors`].
    pub dns: u64,
}

/// DNS descriptors at most: an upstream socket per query in flight, a client socket per TCP connection, the pool.
pub fn dns_descriptors(max_inflight: usize, max_tcp_connections: usize) -> u64 {
    max_inflight as u64 + max_tcp_connections as u64 + DNS_POOL
}

impl Demand {
    /// Descriptors needed to serve this demand.
    pub fn descriptors(&self) -> u64 {
        self.max_connections
            .saturating_mul(2)
            .saturating_add(self.dns)
            .saturating_add(RESERVE)
    }
}

/// The decision for one demand under a file limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Served as asked.
    Serve { max_connections: u64 },
    /// The default was too many for the limit: serve this many instead (and warn).
    Shrink { max_connections: u64 },
}

/// `--max-connections` asks for more descriptors than the hard file limit allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--max-connections {max_connections} needs about {needed} open files (2 per connection{dns}, plus {RESERVE} \
     reserved), but the hard file limit (RLIMIT_NOFILE) is {limit}; lower --max-connections to at most {fits}, or \
     raise the limit (systemd: LimitNOFILE={needed}; shell: ulimit -n {needed}; containers: the runtime's \
     default ulimit, or grant CAP_SYS_RESOURCE so tollgate raises it itself)"
)]
pub struct TooFewFiles {
    pub max_connections: u64,
    pub needed: u64,
    pub limit: u64,
    pub fits: u64,
    dns: String,
}

/// Decides how many connections the daemon serves with `limit` descriptors (the hard limit after any raise).
pub fn plan(demand: Demand, limit: u64) -> Result<Plan, TooFewFiles> {
    let needed = demand.descriptors();
    if needed <= limit {
        return Ok(Plan::Serve {
            max_connections: demand.max_connections,
        });
    }
    let fits = limit.saturating_sub(RESERVE + demand.dns) / 2;
    if !demand.explicit && fits > 0 {
        return Ok(Plan::Shrink {
            max_connections: fits,
        });
    }
    Err(TooFewFiles {
        max_connections: demand.max_connections,
        needed,
        limit,
        fits,
        dns: if demand.dns > 0 {
            format!(", {} for DNS", demand.dns)
        } else {
            String::new()
        },
    })
}

/// The process's (soft, hard) open-file limits.
pub fn current() -> std::io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((rl.rlim_cur, rl.rlim_max))
}

fn set(soft: u64, hard: u64) -> std::io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit from the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the open-file limit for `needed` descriptors: the soft limit to the hard one, and the hard one too when
/// that is not enough and the process may (CAP_SYS_RESOURCE; up to `fs.nr_open`). Returns the usable limit.
pub fn raise(needed: u64) -> std::io::Result<u64> {
    let (soft, hard) = current()?;
    if hard < needed {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = needed.min(nr_open).max(hard);
        if target > hard && set(target, target).is_ok() {
            tracing::info!(from = hard, to = target, "raised the hard open-file limit");
            return Ok(target);
        }
    }
    if soft < hard {
        set(hard, hard)?;
    }
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(max_connections: u64, explicit: bool, dns: u64) -> Demand {
        Demand {
            max_connections,
            explicit,
            dns,
        }
    }

    #[test]
    fn descriptors_are_two_per_connection_plus_dns_and_reserve() {
        assert_eq!(demand(100, false, 0).descriptors(), 200 + RESERVE);
        assert_eq!(
            demand(16_384, false, dns_descriptors(8192, 1024)).descriptors(),
            32_768 + 8192 + 1024 + DNS_POOL + RESERVE
        );
    }

    #[test]
    fn a_demand_within_the_limit_is_served() {
        assert_eq!(
            plan(demand(16_384, true, 0), 1 << 20),
            Ok(Plan::Serve {
                max_connections: 16_384
            })
        );
        let exact = demand(1000, true, 100).descriptors();
        assert!(matches!(
            plan(demand(1000, true, 100), exact),
            Ok(Plan::Serve { .. })
        ));
    }

    #[test]
    fn the_default_shrinks_to_what_the_limit_carries() {
        assert_eq!(
            plan(demand(16_384, false, 0), 20_000),
            Ok(Plan::Shrink {
                max_connections: (20_000 - RESERVE) / 2
            })
        );
    }

    #[test]
    fn an_explicit_demand_beyond_the_limit_is_refused_with_the_fix() {
        let e = plan(demand(16_384, true, 0), 1024).unwrap_err();
        assert_eq!(e.fits, (1024 - RESERVE) / 2);
        let msg = e.to_string();
        for part in [
            "--max-connections 16384",
            "hard file limit (RLIMIT_NOFILE) is 1024",
            "LimitNOFILE=",
            "ulimit -n",
            "at most 384",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }

    #[test]
    fn a_limit_too_small_for_even_the_reserve_is_refused_even_by_default() {
        assert!(plan(demand(16_384, false, 9000), 4096).is_err());
    }
}
