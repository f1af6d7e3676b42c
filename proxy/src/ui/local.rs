//! The daemon's side of the UI: flow records from this node's flow log (converted to Hubble flows exactly as the
//! Observer API serves them) and the live policy snapshot for the `toFQDNs` column.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::aggregate::FqdnRules;
use super::hub::UiHub;
use crate::flow::{FlowLog, FlowRecord, FlowTap};
use crate::hubble::{NodeInfo, to_flows};
use crate::policy_source::PolicyStore;

/// Records queued between the data path and the UI; when the UI falls behind, records are skipped and counted
/// in `UiHub::lost` (the page shows it), never waited for.
const QUEUE: usize = 8_192;

/// Feeds `hub` with every record `flows` logs from now on, plus the ones its ring already holds.
pub fn attach(flows: &Arc<FlowLog>, hub: Arc<UiHub>, node: NodeInfo, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<Arc<FlowRecord>>(QUEUE);
    // The tap runs on the data path: a try_send and nothing else.
    let lossy = hub.clone();
    flows.add_tap(FlowTap(Box::new(move |rec: &FlowRecord| {
        if tx.try_send(Arc::new(rec.clone())).is_err() {
            lossy
                .lost
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })));
    for rec in flows.last(super::hub::RING) {
        for f in to_flows(&rec, &node) {
            hub.ingest(f);
        }
    }
    tokio::spawn(async move {
        loop {
            let rec = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                _ = shutdown.cancelled() => return,
            };
            for f in to_flows(&rec, &node) {
                hub.ingest(f);
            }
        }
    });
}

/// `toFQDNs` rules from the daemon's current policy snapshot.
#[derive(Debug)]
pub struct LivePolicy(pub Arc<PolicyStore>);

impl FqdnRules for LivePolicy {
    fn fqdn_rules(&self, identity: u32, name: &str) -> Vec<String> {
        self.0
            .current()
            .engine
            .fqdn_rules(policy_model::Identity(identity), name)
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::conformance::conformance_snapshot;

    /// The DNS view's rule column comes from the engine: the `toFQDNs` rules that select the name, by identity.
    #[test]
    fn fqdn_rules_name_the_rules_a_name_feeds() {
        let snap = conformance_snapshot("dns-telemetry");
        let fetcher = snap.endpoints.identity_of_ip("10.0.23.10".parse().unwrap());
        let rules = |name: &str| -> Vec<String> {
            snap.engine
                .fqdn_rules(fetcher, name)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            rules("Telemetry.Example.NET."),
            ["CiliumNetworkPolicy ops/fetcher-fqdn egress[1]"]
        );
        assert_eq!(rules("img.assets.example.com").len(), 1);
        assert!(rules("other.example.net").is_empty());
        assert!(
            snap.engine
                .fqdn_rules(policy_model::Identity(2), "telemetry.example.net")
                .is_empty(),
            "reserved identities have no rules"
        );
    }
}
