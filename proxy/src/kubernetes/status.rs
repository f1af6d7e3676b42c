//! Policy status written back to the API server, so `kubectl get cnp -o yaml` shows whether this node enforces a
//! policy and, if not, the validation error with its field path. Pure: the body of a merge patch.
//!
//! The shape follows Cilium's `status.conditions` with a `Valid` condition; with several tollgate nodes the last
//! writer wins, which is fine because every node validates the same object the same way.

use super::cluster::PolicyOutcome;

/// The merge-patch body for one object's status.
pub fn status_patch(
    outcome: &PolicyOutcome,
    generation: Option<i64>,
    now_rfc3339: &str,
) -> serde_json::Value {
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
    let mut condition = serde_json::json!({
        "type": "Valid",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339,
    });
    if let Some(g) = generation {
        condition["observedGeneration"] = g.into();
    }
    serde_json::json!({"status": {"conditions": [condition]}})
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

    #[test]
    fn accepted_and_rejected_bodies() {
        let ok = status_patch(&PolicyOutcome::Accepted, Some(4), "2026-11-23T02:00:00Z");
        assert_eq!(ok["status"]["conditions"][0]["type"], "Valid");
        assert_eq!(ok["status"]["conditions"][0]["status"], "True");
        assert_eq!(ok["status"]["conditions"][0]["observedGeneration"], 4);
        let bad = status_patch(
            &PolicyOutcome::Rejected {
                errors: vec!["CiliumNetworkPolicy/shop/p: document 0: spec.x: bad".into()],
                enforcing_previous: true,
            },
            None,
            "2026-11-23T02:00:00Z",
        );
        let c = &bad["status"]["conditions"][0];
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "Invalid");
        assert_eq!(
            c["message"],
            "CiliumNetworkPolicy/shop/p: document 0: spec.x: bad; the previous valid version of this policy keeps enforcing"
        );
        assert!(c.get("observedGeneration").is_none());
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
