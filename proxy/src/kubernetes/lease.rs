//! One status writer per cluster: a `coordination.k8s.io/v1` Lease, with client-go's leader-election timing
//! (lease 15 s, renew deadline 10 s, retry 2 s). Every daemon watches and compiles; only the Lease holder writes
//! policy status, so a 1,000-node cluster writes each status once instead of once per node.
//!
//! Expiry is judged on the local clock, as client-go does: a candidate notes WHEN it saw the record last change and
//! takes the lease only after `lease_duration` of silence, so clock skew between nodes does not matter. The holder
//! stops writing once it has not renewed for `renew_deadline`, which is shorter than `lease_duration`: by the time a
//! candidate may take over, the old holder has already stopped (two writers never overlap while clocks run at the
//! same rate).
//!
//! `decide` is the pure step; `run` does the API calls and publishes "am I the holder" on a watch channel.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

/// The Lease's name (in the daemon's own namespace).
pub const LEASE_NAME: &str = "tollgate-policy-status";

/// Leader-election timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease record is honoured after it last changed.
    pub lease_duration: Duration,
    /// The holder stops writing when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// Between attempts (renewals included).
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    /// client-go's defaults.
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    /// Holder identity: the pod name (unique even while an old and a new pod share a node during a rollout),
    /// else the node name.
    pub identity: String,
    pub timing: LeaseTiming,
}

/// The lease record as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub resource_version: Option<String>,
    pub lease_duration: Duration,
}

/// What to do on this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No lease yet: create it holding it.
    Create,
    /// Ours: renew.
    Renew,
    /// Free or expired: take it (update with the read resourceVersion, so two candidates cannot both win).
    Take,
    /// Someone else holds a live lease.
    Wait { holder: String },
}

/// The pure decision: `changed_at` is when this daemon saw the record (holder or resourceVersion) last change.
pub fn decide(me: &str, current: Option<&Record>, changed_at: Instant, now: Instant) -> Step {
    let Some(record) = current else {
        return Step::Create;
    };
    match record.holder.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::Take,
        Some(h) => {
            if now.saturating_duration_since(changed_at) < record.lease_duration {
                Step::Wait {
                    holder: h.to_string(),
                }
            } else {
                Step::Take
            }
        }
    }
}

/// Whether a holder whose last successful renewal was at `renewed` still leads at `now`.
pub fn still_leading(renewed: Option<Instant>, now: Instant, timing: &LeaseTiming) -> bool {
    renewed.is_some_and(|r| now.saturating_duration_since(r) < timing.renew_deadline)
}

fn record_of(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity,
        resource_version: lease.metadata.resource_version.clone(),
        lease_duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
    }
}

fn micro_now() -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::try_from(SystemTime::now())
        .ok()
        .map(MicroTime)
}

/// The elector's state between attempts.
#[derive(Debug)]
struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    last: Option<Record>,
    changed_at: Instant,
    renewed: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the status Lease {namespace}/{LEASE_NAME}: {source} (the tollgate Role must grant get/create/update on \
         leases in {namespace}; set --status-lease-namespace to the namespace tollgate runs in)"
    )]
    Api {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

impl Elector {
    fn err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.settings.namespace.clone(),
            source,
        }
    }

    /// One attempt: read, decide, write. `Ok(true)` when we hold the lease afterwards.
    async fn attempt(&mut self) -> Result<bool, LeaseError> {
        let current = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| self.err(e))?;
        let now = Instant::now();
        let record = current.as_ref().map(record_of);
        if record != self.last {
            self.changed_at = now;
            self.last = record.clone();
        }
        let me = self.settings.identity.clone();
        let step = decide(&me, record.as_ref(), self.changed_at, now);
        let lease = match step {
            Step::Wait { .. } => return Ok(false),
            Step::Create => self.new_lease(None, 0),
            Step::Renew | Step::Take => {
                let current = current.unwrap_or_default();
                let spec = current.spec.clone().unwrap_or_default();
                let transitions = spec.lease_transitions.unwrap_or(0);
                let mut lease = self.new_lease(
                    current.metadata.resource_version.clone(),
                    if step == Step::Take {
                        transitions + 1
                    } else {
                        transitions
                    },
                );
                if step == Step::Renew {
                    lease.spec.as_mut().unwrap().acquire_time = spec.acquire_time;
                }
                lease
            }
        };
        let written = match step {
            Step::Create => self.api.create(&PostParams::default(), &lease).await,
            _ => {
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(l) => {
                self.last = Some(record_of(&l));
                self.changed_at = Instant::now();
                if step != Step::Renew {
                    tracing::info!(identity = %me, "took the policy status Lease: this daemon writes policy status");
                }
                Ok(true)
            }
            // Another candidate won the race (409): not ours.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    fn new_lease(&self, resource_version: Option<String>, transitions: i32) -> Lease {
        let now = micro_now();
        Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                namespace: Some(self.settings.namespace.clone()),
                resource_version,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(
                    self.settings.timing.lease_duration.as_secs().max(1) as i32
                ),
                acquire_time: now.clone(),
                renew_time: now,
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}

/// Runs the election until the receiver side is gone, publishing whether this daemon holds the Lease.
pub async fn run(client: Client, settings: LeaseSettings, leading: watch::Sender<bool>) {
    let timing = settings.timing;
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings,
        last: None,
        changed_at: Instant::now(),
        renewed: None,
    };
    loop {
        match elector.attempt().await {
            Ok(true) => elector.renewed = Some(Instant::now()),
            Ok(false) => elector.renewed = None,
            Err(e) => tracing::warn!("{e}"),
        }
        let lead = still_leading(elector.renewed, Instant::now(), &timing);
        if *leading.borrow() && !lead {
            tracing::warn!(
                identity = %elector.settings.identity,
                "lost the policy status Lease: this daemon stops writing policy status"
            );
        }
        leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
        if leading.is_closed() {
            return;
        }
        tokio::time::sleep(timing.retry_period).await;
    }
}

/// Starts the election task; the receiver says whether this daemon writes status now.
pub fn start(client: Client, settings: LeaseSettings) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(run(client, settings, tx));
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(h: &str) -> Record {
        Record {
            holder: Some(h.into()),
            resource_version: Some("7".into()),
            lease_duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_our_own_is_renewed() {
        let t = Instant::now();
        assert_eq!(decide("a", None, t, t), Step::Create);
        assert_eq!(decide("a", Some(&held_by("a")), t, t), Step::Renew);
        let free = Record {
            holder: None,
            ..held_by("x")
        };
        assert_eq!(decide("a", Some(&free), t, t), Step::Take);
    }

    #[test]
    fn another_holder_is_honoured_for_the_lease_duration_after_its_last_change() {
        let seen = Instant::now();
        let b = held_by("b");
        assert_eq!(
            decide("a", Some(&b), seen, seen + Duration::from_secs(14)),
            Step::Wait { holder: "b".into() }
        );
        assert_eq!(
            decide("a", Some(&b), seen, seen + Duration::from_secs(15)),
            Step::Take
        );
    }

    #[test]
    fn the_holder_stops_before_anyone_may_take_over() {
        let timing = LeaseTiming::default();
        let renewed = Instant::now();
        assert!(still_leading(Some(renewed), renewed, &timing));
        assert!(!still_leading(
            Some(renewed),
            renewed + timing.renew_deadline,
            &timing
        ));
        assert!(!still_leading(None, renewed, &timing));
        // The old holder has stopped writing before a candidate, who saw the last renewal no earlier than it
        // happened, may take the lease.
        assert!(timing.renew_deadline < timing.lease_duration);
        assert_eq!(timing.retry_period, Duration::from_secs(2));
    }
}
