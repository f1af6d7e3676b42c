//! Which policies allowed or denied a flow, recovered from the record's `policy` text (the Display of
//! `policy_model::Reason`, which every decision site stores) so Hubble's `*_allowed_by` / `*_denied_by` can name
//! them. Pure; the tests build the text with policy-model's own Display, so a format change there fails here.
//!
//! What the text holds, and what we make of it:
//! - `allowed by <Kind> <ns/name> <section>[i] [l7[j]] and ...`: each rule's policy, in `ingress`/`egress`.
//! - `denied by <Kind> <ns/name> ingressDeny[i]`: the deny rule's policy.
//! - `denied: no <l7> rule matched the request (<direction>; rules of ns/a, ns/b)`: the policies whose L7 rules
//!   refused the request, as denying. The text has no kind; L7 rules exist only in Cilium policies, so the kind is
//!   CiliumNetworkPolicy for `ns/name` and CiliumClusterwideNetworkPolicy for a bare name.
//! - default deny (`denied: no ingress rule matched ...`) and "no policy selects" name no policy, as in Cilium.
//!
//! Anything after the first `; ` at the top level is detail appended by the proxy (upstream errors, limits).

/// One policy as Hubble names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRef {
    pub name: String,
    /// Empty for clusterwide policies.
    pub namespace: String,
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy` or `NetworkPolicy`.
    pub kind: String,
}

impl PolicyRef {
    fn from_id(kind: &str, id: &str) -> Self {
        let (namespace, name) = id.split_once('/').unwrap_or(("", id));
        PolicyRef {
            name: name.to_string(),
            namespace: namespace.to_string(),
            kind: kind.to_string(),
        }
    }

    /// Cilium's policy labels (`k8s:io.cilium.k8s.policy.*`), which Hubble shows beside the name.
    pub fn labels(&self) -> Vec<String> {
        let mut v = vec![
            format!("k8s:io.cilium.k8s.policy.derived-from={}", self.kind),
            format!("k8s:io.cilium.k8s.policy.name={}", self.name),
        ];
        if !self.namespace.is_empty() {
            v.push(format!(
                "k8s:io.cilium.k8s.policy.namespace={}",
                self.namespace
            ));
        }
        v
    }
}

/// The policies behind one decision, by traffic direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attribution {
    pub ingress_allowed_by: Vec<PolicyRef>,
    pub egress_allowed_by: Vec<PolicyRef>,
    pub ingress_denied_by: Vec<PolicyRef>,
    pub egress_denied_by: Vec<PolicyRef>,
}

const KINDS: [&str; 3] = [
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "NetworkPolicy",
];

/// `<Kind> <id> <section>[i]...` → (policy, section), or None when the text is not a rule reference.
fn rule_ref(text: &str) -> Option<(PolicyRef, &str)> {
    let mut words = text.split_whitespace();
    let kind = words.next().filter(|k| KINDS.contains(k))?;
    let id = words.next()?;
    let section = words.next()?.split('[').next()?;
    Some((PolicyRef::from_id(kind, id), section))
}

fn push_unique(list: &mut Vec<PolicyRef>, p: PolicyRef) {
    if !list.contains(&p) {
        list.push(p);
    }
}

impl Attribution {
    fn add(&mut self, p: PolicyRef, section: &str) {
        let list = match section {
            "ingress" => &mut self.ingress_allowed_by,
            "egress" => &mut self.egress_allowed_by,
            "ingressDeny" => &mut self.ingress_denied_by,
            "egressDeny" => &mut self.egress_denied_by,
            _ => return,
        };
        push_unique(list, p);
    }

    pub fn is_empty(&self) -> bool {
        self.ingress_allowed_by.is_empty()
            && self.egress_allowed_by.is_empty()
            && self.ingress_denied_by.is_empty()
            && self.egress_denied_by.is_empty()
    }

    /// Parses a record's `policy` text (see the module documentation); unknown text gives an empty attribution.
    pub fn parse(text: &str) -> Self {
        let mut a = Attribution::default();
        if let Some(rest) = text.strip_prefix("allowed by ") {
            let rules = rest.split("; ").next().unwrap_or("");
            for r in rules.split(" and ") {
                if let Some((p, section)) = rule_ref(r) {
                    a.add(p, section);
                }
            }
        } else if let Some(rest) = text.strip_prefix("denied by ") {
            if let Some((p, section)) = rule_ref(rest.split("; ").next().unwrap_or("")) {
                a.add(p, section);
            }
        } else if text.starts_with("denied: no ")
            && let Some((_, inner)) = text.split_once(" rule matched the request (")
        {
            let inner = inner.split(')').next().unwrap_or("");
            let (direction, policies) = inner.split_once("; rules of ").unwrap_or((inner, ""));
            let list = if direction == "egress" {
                &mut a.egress_denied_by
            } else {
                &mut a.ingress_denied_by
            };
            for id in policies.split(", ").filter(|s| !s.is_empty()) {
                let kind = if id.contains('/') {
                    "CiliumNetworkPolicy"
                } else {
                    "CiliumClusterwideNetworkPolicy"
                };
                push_unique(list, PolicyRef::from_id(kind, id));
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_model::{Direction, Identity, L7Kind, PolicyKind, Reason, RuleRef};

    fn rule(policy: &str, kind: PolicyKind, direction: Direction, deny: bool) -> RuleRef {
        RuleRef {
            policy: policy.into(),
            kind,
            direction,
            deny,
            rule_index: 2,
            l7_index: Some(1),
        }
    }

    fn p(kind: &str, namespace: &str, name: &str) -> PolicyRef {
        PolicyRef {
            name: name.into(),
            namespace: namespace.into(),
            kind: kind.into(),
        }
    }

    #[test]
    fn allowed_by_rules_in_both_directions() {
        let text = Reason::Allowed {
            by: vec![
                rule(
                    "ccnp-egress",
                    PolicyKind::CiliumClusterwideNetworkPolicy,
                    Direction::Egress,
                    false,
                ),
                rule(
                    "billing/ledger-api",
                    PolicyKind::CiliumNetworkPolicy,
                    Direction::Ingress,
                    false,
                ),
                rule(
                    "billing/ledger-api",
                    PolicyKind::CiliumNetworkPolicy,
                    Direction::Ingress,
                    false,
                ),
            ],
        }
        .to_string();
        let a = Attribution::parse(&format!("{text}; upstream reset"));
        assert_eq!(
            a.egress_allowed_by,
            [p("CiliumClusterwideNetworkPolicy", "", "ccnp-egress")]
        );
        assert_eq!(
            a.ingress_allowed_by,
            [p("CiliumNetworkPolicy", "billing", "ledger-api")],
            "one entry per policy"
        );
        assert!(a.ingress_denied_by.is_empty() && a.egress_denied_by.is_empty());
    }

    #[test]
    fn deny_rule_and_l7_refusal_name_the_denying_policies() {
        let deny = Reason::DenyRule(rule(
            "prod/block",
            PolicyKind::NetworkPolicy,
            Direction::Egress,
            true,
        ));
        let a = Attribution::parse(&deny.to_string());
        assert_eq!(a.egress_denied_by, [p("NetworkPolicy", "prod", "block")]);
        let l7 = Reason::L7NoMatch {
            direction: Direction::Ingress,
            kind: L7Kind::Http,
            policies: vec!["billing/ledger-api".into(), "global-l7".into()],
        };
        let a = Attribution::parse(&l7.to_string());
        assert_eq!(
            a.ingress_denied_by,
            [
                p("CiliumNetworkPolicy", "billing", "ledger-api"),
                p("CiliumClusterwideNetworkPolicy", "", "global-l7")
            ]
        );
        assert!(a.egress_denied_by.is_empty());
        assert_eq!(
            p("CiliumNetworkPolicy", "billing", "x").labels(),
            [
                "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                "k8s:io.cilium.k8s.policy.name=x",
                "k8s:io.cilium.k8s.policy.namespace=billing"
            ]
        );
    }

    #[test]
    fn default_deny_errors_and_no_policy_name_nothing() {
        let default_deny = Reason::NoRuleMatched {
            direction: Direction::Ingress,
            endpoint: Identity(300),
        };
        for text in [
            default_deny.to_string(),
            Reason::Allowed { by: vec![] }.to_string(),
            "connection limit 10 reached (--max-connections)".into(),
            "allowed by nonsense".into(),
            String::new(),
        ] {
            assert!(Attribution::parse(&text).is_empty(), "{text}");
        }
    }
}
