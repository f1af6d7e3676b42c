//! Agent events for `GetAgentEvents` (`hubble events`-style clients): the daemon starting, policy updates going
//! live, endpoints appearing and going away, as Cilium's agent reports them. Kept in a small bounded ring with a
//! broadcast for follow mode. Changes are found by comparing policy snapshots ([`diff`], pure), which a task does
//! a few times a second, so the policy and endpoint code needs no hook.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::hubble::flow::{
    AgentEvent, AgentEventType, EndpointUpdateNotification, PolicyUpdateNotification,
    TimeNotification, agent_event::Notification,
};
use crate::policy_source::{PolicySnapshot, PolicyStore};

/// Events kept for history queries.
const KEEP: usize = 1024;
/// How often the policy source is compared with what was last reported.
const POLL: Duration = Duration::from_millis(250);

/// One event and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub time: prost_types::Timestamp,
    pub event: AgentEvent,
}

/// The event log.
#[derive(Debug)]
pub struct AgentEvents {
    ring: Mutex<VecDeque<Stamped>>,
    live: broadcast::Sender<Stamped>,
}

impl Default for AgentEvents {
    fn default() -> Self {
        AgentEvents {
            ring: Mutex::new(VecDeque::new()),
            live: broadcast::channel(256).0,
        }
    }
}

pub fn now() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

impl AgentEvents {
    pub fn push(&self, event: AgentEvent) {
        let stamped = Stamped { time: now(), event };
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() >= KEEP {
                ring.pop_front();
            }
            ring.push_back(stamped.clone());
        }
        let _ = self.live.send(stamped);
    }

    /// Events from now on. Subscribe before reading [`AgentEvents::history`] to miss nothing.
    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.live.subscribe()
    }

    /// Every kept event, oldest first.
    pub fn history(&self) -> Vec<Stamped> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }

    /// Reports the start and the initial policy, then every change of `policy` until `shutdown`.
    pub fn watch(self: Arc<Self>, policy: Arc<PolicyStore>, shutdown: CancellationToken) {
        self.push(AgentEvent {
            r#type: AgentEventType::AgentStarted as i32,
            notification: Some(Notification::AgentStart(TimeNotification {
                time: Some(now()),
            })),
        });
        let mut last = View::of(&policy.current());
        self.push(policy_updated(&last));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.cancelled() => return,
                }
                let snap = policy.current();
                if snap.generation == last.generation {
                    continue;
                }
                let next = View::of(&snap);
                for e in diff(&last, &next) {
                    self.push(e);
                }
                last = next;
            }
        });
    }
}

/// What the events are computed from: one snapshot's generation, policies and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub generation: u64,
    /// `namespace/name` (or `name` for clusterwide policies).
    pub policies: Vec<String>,
    /// `namespace/name` -> `k8s:key=value` labels.
    pub endpoints: BTreeMap<String, Vec<String>>,
}

impl View {
    pub fn of(snap: &PolicySnapshot) -> Self {
        View {
            generation: snap.generation,
            policies: snap.engine.policy_ids().to_vec(),
            endpoints: snap
                .endpoints
                .iter()
                .map(|e| {
                    let labels = e.labels.iter().map(|(k, v)| format!("k8s:{k}={v}"));
                    (e.key(), labels.collect())
                })
                .collect(),
        }
    }
}

fn policy_updated(v: &View) -> AgentEvent {
    AgentEvent {
        r#type: AgentEventType::PolicyUpdated as i32,
        notification: Some(Notification::PolicyUpdate(PolicyUpdateNotification {
            labels: v
                .policies
                .iter()
                .map(|p| format!("k8s:io.cilium.k8s.policy.name={p}"))
                .collect(),
            revision: v.generation,
            rule_count: i64::try_from(v.policies.len()).unwrap_or(i64::MAX),
        })),
    }
}

fn endpoint_event(kind: AgentEventType, key: &str, labels: &[String]) -> AgentEvent {
    let (namespace, pod) = key.split_once('/').unwrap_or(("", key));
    AgentEvent {
        r#type: kind as i32,
        notification: Some(Notification::EndpointUpdate(EndpointUpdateNotification {
            // Tollgate has no numeric endpoint ids (flows carry ID 0 too); pods are named instead.
            id: 0,
            labels: labels.to_vec(),
            error: String::new(),
            pod_name: pod.to_string(),
            namespace: namespace.to_string(),
        })),
    }
}

/// The events that lead from `old` to `new`: endpoints deleted, endpoints created (a pod whose labels changed
/// is reported deleted and created again, as its identity may change), then the policy update itself.
pub fn diff(old: &View, new: &View) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    for (key, labels) in &old.endpoints {
        if new.endpoints.get(key) != Some(labels) {
            out.push(endpoint_event(AgentEventType::EndpointDeleted, key, labels));
        }
    }
    for (key, labels) in &new.endpoints {
        if old.endpoints.get(key) != Some(labels) {
            out.push(endpoint_event(AgentEventType::EndpointCreated, key, labels));
        }
    }
    if new.generation != old.generation {
        out.push(policy_updated(new));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(generation: u64, eps: &[(&str, &str)]) -> View {
        View {
            generation,
            policies: vec!["prod/api".into()],
            endpoints: eps
                .iter()
                .map(|(k, l)| (k.to_string(), vec![l.to_string()]))
                .collect(),
        }
    }

    fn kinds(v: &[AgentEvent]) -> Vec<(i32, String)> {
        v.iter()
            .map(|e| {
                let who = match &e.notification {
                    Some(Notification::EndpointUpdate(n)) => {
                        format!("{}/{}", n.namespace, n.pod_name)
                    }
                    Some(Notification::PolicyUpdate(n)) => format!("rev {}", n.revision),
                    _ => String::new(),
                };
                (e.r#type, who)
            })
            .collect()
    }

    #[test]
    fn endpoint_and_policy_changes_become_events() {
        let old = view(
            1,
            &[("prod/web", "k8s:app=web"), ("prod/old", "k8s:app=old")],
        );
        let new = view(
            2,
            &[("prod/web", "k8s:app=web2"), ("prod/new", "k8s:app=new")],
        );
        let (created, deleted, updated) = (
            AgentEventType::EndpointCreated as i32,
            AgentEventType::EndpointDeleted as i32,
            AgentEventType::PolicyUpdated as i32,
        );
        assert_eq!(
            kinds(&diff(&old, &new)),
            [
                (deleted, "prod/old".into()),
                (deleted, "prod/web".into()),
                (created, "prod/new".into()),
                (created, "prod/web".into()),
                (updated, "rev 2".into()),
            ]
        );
        assert!(diff(&old, &old).is_empty());
        let Some(Notification::PolicyUpdate(p)) = &policy_updated(&new).notification else {
            panic!("policy update");
        };
        assert_eq!(
            (p.rule_count, p.labels[0].as_str()),
            (1, "k8s:io.cilium.k8s.policy.name=prod/api")
        );
    }

    #[tokio::test]
    async fn ring_is_bounded_and_followers_get_new_events() {
        let log = AgentEvents::default();
        let mut rx = log.subscribe();
        log.push(AgentEvent::default());
        assert!(rx.recv().await.is_ok());
        for _ in 0..KEEP + 5 {
            log.push(AgentEvent::default());
        }
        assert_eq!(log.history().len(), KEEP);
    }
}
