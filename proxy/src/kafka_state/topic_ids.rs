//! Topic ids to names, learned from the Metadata responses that pass through the proxy, per destination broker.
//!
//! Newer request versions (Fetch 13+, Produce 13+, OffsetCommit 10+, ...) name topics by id only, and a client
//! learns the ids from Metadata, often on another connection than the one it fetches on (librdkafka asks a
//! bootstrap connection). So the map outlives connections. It is keyed by the broker that answered: any pod may
//! run a "broker" of its own and answer Metadata with whatever id -> name pairs it likes, so an id learned from
//! one destination never decides a request sent to another, and no destination can overwrite or flush another's
//! ids. Ids are only ever learned from broker responses, never from clients.
//!
//! Bounds: ids per broker and brokers in all are capped. A broker over its cap learns no more ids (its clients'
//! requests by a new id fail closed); when the table of brokers is full, the one that learned least recently is
//! forgotten (its clients get UNKNOWN_TOPIC_ID, refresh their metadata through the proxy, and retry).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use uuid::Uuid;

/// Ids one broker may teach (a cluster with more topics than this has other problems).
const MAX_IDS_PER_BROKER: usize = 100_000;
/// Brokers remembered at once.
const MAX_BROKERS: usize = 1024;
/// Ids remembered in all, over every broker (~100 bytes each).
const MAX_IDS_TOTAL: usize = 400_000;

/// What the proxy knows of one topic id for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdLookup {
    /// Learned from this destination's own Metadata responses.
    Name(String),
    /// Never seen in a Metadata response from any broker: the client is ahead of the proxy (a refresh helps).
    NotLearned,
    /// Seen only in another destination's Metadata responses: never trusted for this one.
    LearnedFromOtherBroker,
}

#[derive(Debug, Default)]
struct BrokerIds {
    names: HashMap<Uuid, String>,
    /// Logical time of the last `learn` (for choosing which broker to forget).
    last_learned: u64,
}

#[derive(Debug, Default)]
struct Table {
    brokers: HashMap<SocketAddr, BrokerIds>,
    total: usize,
    clock: u64,
}

impl Table {
    /// Forgets the broker that learned least recently, other than `keep`.
    fn forget_oldest(&mut self, keep: SocketAddr) -> bool {
        let oldest = self
            .brokers
            .iter()
            .filter(|(addr, _)| **addr != keep)
            .min_by_key(|(_, b)| b.last_learned)
            .map(|(addr, _)| *addr);
        match oldest.and_then(|addr| self.brokers.remove(&addr).map(|b| (addr, b))) {
            Some((addr, b)) => {
                tracing::info!(broker = %addr, ids = b.names.len(), "forgetting the topic ids of the broker that learned least recently (table full)");
                self.total -= b.names.len();
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Default)]
pub struct TopicIds {
    table: RwLock<Table>,
}

impl TopicIds {
    /// Records the id -> name pairs of a Metadata response that `broker` sent.
    pub fn learn(&self, broker: SocketAddr, pairs: &[(Uuid, String)]) {
        if pairs.is_empty() {
            return;
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        t.clock += 1;
        let now = t.clock;
        if !t.brokers.contains_key(&broker) && t.brokers.len() >= MAX_BROKERS {
            t.forget_oldest(broker);
        }
        for (id, name) in pairs {
            let known = t
                .brokers
                .get(&broker)
                .is_some_and(|b| b.names.contains_key(id));
            if !known {
                if t.brokers.get(&broker).map_or(0, |b| b.names.len()) >= MAX_IDS_PER_BROKER {
                    tracing::warn!(%broker, "broker announced more than {MAX_IDS_PER_BROKER} topic ids; requests by the others are refused");
                    break;
                }
                while t.total >= MAX_IDS_TOTAL {
                    if !t.forget_oldest(broker) {
                        return;
                    }
                }
                t.total += 1;
            }
            let b = t.brokers.entry(broker).or_default();
            b.names.insert(*id, name.clone());
            b.last_learned = now;
        }
    }

    /// The name `broker` gave `id`, or why there is none.
    pub fn lookup(&self, broker: SocketAddr, id: &Uuid) -> IdLookup {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = t.brokers.get(&broker).and_then(|b| b.names.get(id)) {
            return IdLookup::Name(name.clone());
        }
        if t.brokers.values().any(|b| b.names.contains_key(id)) {
            IdLookup::LearnedFromOtherBroker
        } else {
            IdLookup::NotLearned
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.read().unwrap().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], n))
    }

    #[test]
    fn learned_ids_resolve_only_for_the_broker_that_taught_them() {
        let ids = TopicIds::default();
        let a = Uuid::from_u128(1);
        assert_eq!(ids.lookup(broker(1), &a), IdLookup::NotLearned);
        ids.learn(broker(1), &[(a, "orders".into())]);
        assert_eq!(ids.lookup(broker(1), &a), IdLookup::Name("orders".into()));
        assert_eq!(ids.lookup(broker(2), &a), IdLookup::LearnedFromOtherBroker);
        assert_eq!(
            ids.lookup(broker(1), &Uuid::from_u128(2)),
            IdLookup::NotLearned
        );
    }

    #[test]
    fn another_broker_cannot_rename_or_flush_an_id() {
        let ids = TopicIds::default();
        let secret = Uuid::from_u128(7);
        ids.learn(broker(1), &[(secret, "secret".into())]);
        // A tenant's own "broker" claims the real cluster's id is its allowed topic, then floods the table.
        ids.learn(broker(9), &[(secret, "allowed".into())]);
        let flood: Vec<(Uuid, String)> = (0..MAX_IDS_PER_BROKER as u128 + 10)
            .map(|i| (Uuid::from_u128(1_000_000 + i), format!("t{i}")))
            .collect();
        ids.learn(broker(9), &flood);
        assert_eq!(
            ids.lookup(broker(1), &secret),
            IdLookup::Name("secret".into())
        );
        assert_eq!(
            ids.lookup(broker(9), &secret),
            IdLookup::Name("allowed".into())
        );
        assert!(ids.len() <= MAX_IDS_PER_BROKER + 1, "{}", ids.len());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_stalest_broker_not_the_learner() {
        let ids = TopicIds::default();
        for b in 0..MAX_BROKERS as u16 + 5 {
            ids.learn(broker(b), &[(Uuid::from_u128(b as u128), "t".into())]);
        }
        let t = ids.table.read().unwrap();
        assert_eq!(t.brokers.len(), MAX_BROKERS);
        assert!(!t.brokers.contains_key(&broker(0)));
        assert!(t.brokers.contains_key(&broker(MAX_BROKERS as u16 + 4)));
    }
}
