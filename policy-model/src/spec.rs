//! Wire types: the YAML documents exactly as users write them. Spec types deny unknown fields so a typo is an
//! error with a path instead of a silently ignored rule.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

#[derive(Debug, Deserialize)]
pub(crate) struct Metadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CiliumDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Option<CiliumSpec>,
    pub specs: Option<Vec<CiliumSpec>>,
    #[allow(dead_code)]
    pub status: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CiliumSpec {
    pub endpoint_selector: Option<SelectorSpec>,
    pub ingress: Option<Vec<CiliumRule>>,
    pub ingress_deny: Option<Vec<CiliumRule>>,
    pub egress: Option<Vec<CiliumRule>>,
    pub egress_deny: Option<Vec<CiliumRule>>,
    pub enable_default_deny: Option<DefaultDenySpec>,
    #[allow(dead_code)]
    pub description: Option<String>,
    #[allow(dead_code)]
    pub labels: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultDenySpec {
    pub ingress: Option<bool>,
    pub egress: Option<bool>,
}

/// One ingress/egress (or deny) rule; `from*` fields are used in ingress, `to*` in egress (checked in `load`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CiliumRule {
    pub from_endpoints: Option<Vec<SelectorSpec>>,
    pub to_endpoints: Option<Vec<SelectorSpec>>,
    #[serde(rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrSetSpec>>,
    #[serde(rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrSetSpec>>,
    pub from_entities: Option<Vec<String>>,
    pub to_entities: Option<Vec<String>>,
    #[serde(rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSpec>>,
    pub to_ports: Option<Vec<PortRuleSpec>>,
    /// `authentication: {mode: required|disabled}` (Cilium mutual authentication).
    pub authentication: Option<AuthenticationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthenticationSpec {
    pub mode: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CidrSetSpec {
    pub cidr: String,
    pub except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct FqdnSpec {
    pub match_name: Option<String>,
    pub match_pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SelectorSpec {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<ExpressionSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpressionSpec {
    pub key: String,
    pub operator: String,
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortRuleSpec {
    pub ports: Option<Vec<PortSpec>>,
    pub rules: Option<L7RulesSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PortSpec {
    /// Number or name; YAML may give it as an integer or a string.
    pub port: Option<Value>,
    pub end_port: Option<i64>,
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct L7RulesSpec {
    pub http: Option<Vec<HttpRuleSpec>>,
    pub kafka: Option<Vec<KafkaRuleSpec>>,
    pub dns: Option<Vec<FqdnSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HttpRuleSpec {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Option<Vec<String>>,
    pub header_matches: Option<Vec<HeaderMatchSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderMatchSpec {
    pub name: String,
    pub value: Option<String>,
    pub secret: Option<Value>,
    pub mismatch: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaRuleSpec {
    pub role: Option<String>,
    #[serde(rename = "apiKey")]
    pub api_key: Option<String>,
    #[serde(rename = "apiVersion")]
    pub api_version: Option<Value>,
    #[serde(rename = "clientID")]
    pub client_id: Option<String>,
    pub topic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetPolDoc {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: NetPolSpec,
    #[allow(dead_code)]
    pub status: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetPolSpec {
    pub pod_selector: SelectorSpec,
    pub policy_types: Option<Vec<String>>,
    pub ingress: Option<Vec<NetPolRule>>,
    pub egress: Option<Vec<NetPolRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetPolRule {
    pub from: Option<Vec<NetPolPeer>>,
    pub to: Option<Vec<NetPolPeer>>,
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NetPolPeer {
    pub pod_selector: Option<SelectorSpec>,
    pub namespace_selector: Option<SelectorSpec>,
    pub ip_block: Option<CidrSetSpec>,
}
