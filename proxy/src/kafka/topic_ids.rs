//! Topic ids to names, learned from the Metadata responses that pass through the proxy.
//!
//! Newer request versions (Fetch 13+, Produce 13+, OffsetCommit 10+, ...) name topics by id only, and a client
//! learns the ids from Metadata, often on another connection than the one it fetches on (librdkafka asks a
//! bootstrap connection). So the map is shared by the whole proxy, not per connection. Ids are random UUIDs
//! assigned by the cluster; the proxy only ever learns them from broker responses, never from clients, so a
//! client cannot make an id stand for a topic of its choosing.

use std::collections::HashMap;
use std::sync::RwLock;

use uuid::Uuid;

/// Bound on learned ids: beyond it the map is cleared and relearned (a client naming an id the proxy forgot gets
/// UNKNOWN_TOPIC_ID, refreshes its metadata through the proxy, and retries).
const MAX_IDS: usize = 100_000;

#[derive(Debug, Default)]
pub struct TopicIds {
    names: RwLock<HashMap<Uuid, String>>,
}

impl TopicIds {
    pub fn learn(&self, pairs: &[(Uuid, String)]) {
        if pairs.is_empty() {
            return;
        }
        let mut m = self.names.write().unwrap_or_else(|p| p.into_inner());
        if m.len() + pairs.len() > MAX_IDS {
            m.clear();
        }
        for (id, name) in pairs {
            m.insert(*id, name.clone());
        }
    }

    pub fn name(&self, id: &Uuid) -> Option<String> {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_ids_resolve_and_unknown_ones_do_not() {
        let ids = TopicIds::default();
        let a = Uuid::from_u128(1);
        assert_eq!(ids.name(&a), None);
        ids.learn(&[(a, "orders".into())]);
        assert_eq!(ids.name(&a).as_deref(), Some("orders"));
        assert_eq!(ids.name(&Uuid::from_u128(2)), None);
    }
}
