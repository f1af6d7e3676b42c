//! DROPPED flow records for connects the kernel FQDN gate refused (EPERM at `connect()`): the eBPF program reports
//! each refusal in a ring buffer; this task turns them into flow records naming the destination and, when the
//! cache knows them (an expired answer, another endpoint's answer), the names the IP served.

use std::sync::Arc;

use redirect_ebpf::FqdnDenialRing;
use redirect_ebpf::maps::FqdnDenial;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::decision::flow_endpoint;
use crate::flow::{DropReason, FlowEndpoint, FlowLog, FlowRecord, TrafficDirection, Verdict};
use crate::policy_source::{PolicySnapshot, PolicyStore};

/// The flow record for one refusal (pure: the snapshot supplies identities, pods and learned names).
pub fn record(snap: &PolicySnapshot, d: &FqdnDenial) -> Option<FlowRecord> {
    let dst = d.destination()?;
    let source = match d.source_ip() {
        Some(ip) => flow_endpoint(snap, std::net::SocketAddr::new(ip, 0)),
        None => FlowEndpoint {
            identity: d.identity,
            ..Default::default()
        },
    };
    let protocol = if i32::from(d.proto) == libc::IPPROTO_UDP {
        "UDP"
    } else {
        "TCP"
    };
    let mut rec = FlowRecord::new(Verdict::Dropped, source, flow_endpoint(snap, dst), protocol);
    rec.drop_reason = Some(DropReason::PolicyDenied);
    rec.traffic_direction = Some(TrafficDirection::Egress);
    let names = snap.fqdn.read().names_for_ip(dst.ip());
    rec.policy = if names.is_empty() {
        format!(
            "denied by the kernel FQDN gate: no DNS answer allowed {} for identity {}",
            dst.ip(),
            d.identity
        )
    } else {
        format!(
            "denied by the kernel FQDN gate: {} (served for {}) is not, or no longer, allowed for identity {}",
            dst.ip(),
            names.join(", "),
            d.identity
        )
    };
    Some(rec)
}

/// Reads the ring buffer until `stop`; one flow record per refusal.
pub async fn run(
    ring: FqdnDenialRing,
    policy: Arc<PolicyStore>,
    flows: Arc<FlowLog>,
    stop: CancellationToken,
) {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same until the AsyncFd drops it.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(
                "cannot poll the FQDN refusal ring buffer, no DROPPED records for them: {e}"
            );
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!("FQDN refusal ring buffer: {e}");
                    return;
                }
            },
            _ = stop.cancelled() => return,
        };
        let snap = policy.current();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let denial = FqdnDenial::from_bytes(&item);
            drop(item);
            if let Some(rec) = denial.as_ref().and_then(|d| record(&snap, d)) {
                flows.record(rec);
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::conformance_snapshot;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_refusal_names_the_destination_and_what_it_served() {
        let snap = conformance_snapshot("dns-telemetry");
        let fetcher = snap
            .endpoints
            .identity_of_ip("10.0.23.10".parse().unwrap())
            .0;
        let d = FqdnDenial {
            identity: fetcher,
            family: 4,
            proto: libc::IPPROTO_TCP as u8,
            port: 443u16.to_be(),
            ip: [u32::from_ne_bytes([203, 0, 113, 40]), 0, 0, 0],
            src_ip4: u32::from_ne_bytes([10, 0, 23, 10]),
            pad: 0,
        };
        let rec = record(&snap, &d).unwrap();
        assert_eq!(rec.verdict, Verdict::Dropped);
        assert_eq!(rec.destination.ip, "203.0.113.40");
        assert_eq!(rec.destination.port, 443);
        assert_eq!(rec.source.pod.as_deref(), Some("fetcher"));
        assert!(rec.policy.contains("no DNS answer"), "{}", rec.policy);
        // After an answer expired, the record says which name the IP served.
        let past = SystemTime::now() - Duration::from_secs(60);
        snap.fqdn.write().insert(
            Some("10.0.23.10".parse().unwrap()),
            "telemetry.example.net",
            &["203.0.113.40".parse().unwrap()],
            Duration::from_secs(5),
            past,
        );
        let rec = record(&snap, &d).unwrap();
        assert!(
            rec.policy.contains("served for telemetry.example.net"),
            "{}",
            rec.policy
        );
        // Bytes round trip as the ring buffer delivers them.
        let bytes: [u8; 32] = unsafe { std::mem::transmute(d) };
        assert_eq!(FqdnDenial::from_bytes(&bytes), Some(d));
        assert_eq!(FqdnDenial::from_bytes(&bytes[..31]), None);
    }
}
