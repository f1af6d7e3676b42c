//! Policy status written back to the API server, so `kubectl get cnp -o yaml` shows whether tollgate enforces a
//! policy and, if not, the validation error with its field path. Pure: what to write, if anything.
//!
//! The shape follows Cilium's `status.conditions`. Tollgate owns one condition, `Valid`, and writes it with
//! server-side apply under its own field manager: the CRD declares `conditions` a list-map keyed by `type`, so
//! conditions other writers set stay. Nothing is written when the observed condition already says the same, and
//! `lastTransitionTime` moves only when the condition's status does, so a restart or a re-list writes nothing.

use super::cluster::PolicyOutcome;
use super::crd::{PolicyCondition, VALID_CONDITION};

/// The field manager of tollgate's server-side applies.
pub const FIELD_MANAGER: &str = "tollgate";

/// The `Valid` condition for `outcome`, its transition time taken from `observed` when the status is unchanged.
pub fn valid_condition(
    outcome: &PolicyOutcome,
    generation: Option<i64>,
    observed: Option<&PolicyCondition>,
    now_rfc3339: &str,
) -> PolicyCondition {
    let (status, reason, message) = match outcome {
        PolicyOutcome::Accepted => (
            "True",
            "Accepted",
            "policy is valid and enforced by tollgate".to_string(),
        ),
        PolicyOutcome::Rejected {
            errors,
            enforcing_previous,
        } => (
            "False",
            "Invalid",
            format!(
                "{}; {}",
                errors.join("; "),
                if *enforcing_previous {
                    "the previous valid version of this policy keeps enforcing"
                } else {
                    "this policy is not enforced"
                }
            ),
        ),
    };
    let since = observed
        .filter(|o| o.status == status)
        .and_then(|o| o.last_transition_time.clone())
        .unwrap_or_else(|| now_rfc3339.to_string());
    PolicyCondition {
        type_: VALID_CONDITION.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: Some(since),
        observed_generation: generation,
    }
}

/// The condition to write, or `None` when the object already shows it (nothing changed).
pub fn condition_to_write(
    outcome: &PolicyOutcome,
    generation: Option<i64>,
    observed: Option<&PolicyCondition>,
    now_rfc3339: &str,
) -> Option<PolicyCondition> {
    let wanted = valid_condition(outcome, generation, observed, now_rfc3339);
    (observed != Some(&wanted)).then_some(wanted)
}

/// Tollgate's `Valid` condition among an object's `status`, as watched.
pub fn observed_valid(status: Option<&serde_json::Value>) -> Option<PolicyCondition> {
    status?
        .get("conditions")?
        .as_array()?
        .iter()
        .filter_map(|c| serde_json::from_value::<PolicyCondition>(c.clone()).ok())
        .find(|c| c.type_ == VALID_CONDITION)
}

/// The server-side apply body: only our condition (the API server merges it with the others by `type`).
pub fn apply_body(
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    condition: &PolicyCondition,
) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": name});
    if let Some(ns) = namespace {
        metadata["namespace"] = ns.into();
    }
    serde_json::json!({
        "apiVersion": "cilium.io/v2",
        "kind": kind,
        "metadata": metadata,
        "status": {"conditions": [condition]},
    })
}

/// RFC 3339 UTC time, second precision, as Kubernetes writes it.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn rejected() -> PolicyOutcome {
        PolicyOutcome::Rejected {
            errors: vec!["CiliumNetworkPolicy/shop/p: document 0: spec.x: bad".into()],
            enforcing_previous: true,
        }
    }

    #[test]
    fn accepted_and_rejected_conditions() {
        let ok = valid_condition(
            &PolicyOutcome::Accepted,
            Some(4),
            None,
            "2026-11-23T02:00:00Z",
        );
        assert_eq!(ok.type_, "Valid");
        assert_eq!(ok.status, "True");
        assert_eq!(ok.observed_generation, Some(4));
        let bad = valid_condition(&rejected(), None, None, "2026-11-23T02:00:00Z");
        assert_eq!(bad.status, "False");
        assert_eq!(bad.reason.as_deref(), Some("Invalid"));
        assert_eq!(
            bad.message.as_deref(),
            Some(
                "CiliumNetworkPolicy/shop/p: document 0: spec.x: bad; the previous valid version of this policy keeps enforcing"
            )
        );
        assert_eq!(bad.observed_generation, None);
        let body = apply_body("CiliumNetworkPolicy", "p", Some("shop"), &bad);
        assert_eq!(body["status"]["conditions"][0]["type"], "Valid");
        assert_eq!(body["metadata"]["namespace"], "shop");
    }

    #[test]
    fn nothing_is_written_when_nothing_changed_and_the_transition_time_stays() {
        let t0 = "2026-11-23T02:00:00Z";
        let t1 = "2026-11-23T03:00:00Z";
        let first = condition_to_write(&PolicyOutcome::Accepted, Some(1), None, t0).unwrap();
        // A restart or a re-list: the object already shows it.
        assert_eq!(
            condition_to_write(&PolicyOutcome::Accepted, Some(1), Some(&first), t1),
            None
        );
        // A new generation, still valid: written, transition time kept.
        let second =
            condition_to_write(&PolicyOutcome::Accepted, Some(2), Some(&first), t1).unwrap();
        assert_eq!(second.last_transition_time.as_deref(), Some(t0));
        // Valid -> invalid: the transition time moves.
        let third = condition_to_write(&rejected(), Some(3), Some(&second), t1).unwrap();
        assert_eq!(third.last_transition_time.as_deref(), Some(t1));
    }

    #[test]
    fn our_condition_is_found_among_others() {
        let status = serde_json::json!({"conditions": [
            {"type": "Audited", "status": "True"},
            {"type": "Valid", "status": "False", "lastTransitionTime": "2026-11-23T02:00:00Z"}]});
        let c = observed_valid(Some(&status)).unwrap();
        assert_eq!(c.status, "False");
        assert_eq!(observed_valid(None), None);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_399_200)),
            "2026-11-23T02:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
