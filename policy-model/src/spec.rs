//! Wire types: the YAML documents exactly as users write them. Spec types deny unknown fields so a typo is an
//! error with a path instead of a silently ignored rule.
//!
//! The Cilium types also carry every field Cilium's own CRDs accept, including those tollgate does not enforce
//! (`nodeSelector`, `toServices`, `icmps`, TLS interception, ...): `load` rejects a policy using one with the field's
//! path, so it is never silently half-enforced. The CRDs that `tollgate crds` prints are generated from these same
//! types ([`cilium_spec_schema`]), so whatever a user can `kubectl apply` the loader reads, and the other way round.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_yaml::Value;

/// The schema of a Cilium policy `spec` (also each item of `specs`), generated with the caller's settings and
/// transforms (the CRD generator applies Kubernetes' structural-schema rules).
pub fn cilium_spec_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.root_schema_for::<CiliumSpec>();
    // A root schema names its type; as a property's schema it needs no title.
    schema.remove("title");
    schema
}

/// Content of a field tollgate does not enforce: accepted by the CRD as Cilium's is, rejected by `load`.
fn unenforced_objects(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn unenforced_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// A port, or a Kafka apiVersion: YAML users write either a number or a string.
fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"x-kubernetes-int-or-string": true})
}

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

#[derive(Debug, Deserialize, JsonSchema)]
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
    /// Labels identifying the rule (Cilium's `labels`), informational here.
    #[allow(dead_code)]
    pub labels: Option<Vec<RuleLabelSpec>>,
    /// Host policy: selects nodes instead of pods (not enforced by tollgate; `load` rejects it).
    pub node_selector: Option<SelectorSpec>,
    /// Policy-verdict log annotation; informational here.
    #[allow(dead_code)]
    pub log: Option<LogSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleLabelSpec {
    #[allow(dead_code)]
    pub key: String,
    #[allow(dead_code)]
    pub value: Option<String>,
    #[allow(dead_code)]
    pub source: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSpec {
    #[allow(dead_code)]
    pub value: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultDenySpec {
    pub ingress: Option<bool>,
    pub egress: Option<bool>,
}

/// One ingress/egress (or deny) rule; `from*` fields are used in ingress, `to*` in egress (checked in `load`).
#[derive(Debug, Deserialize, JsonSchema)]
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
    // Cilium peers and protocols tollgate does not enforce: accepted on the wire, rejected by `load`.
    pub from_requires: Option<Vec<SelectorSpec>>,
    pub to_requires: Option<Vec<SelectorSpec>>,
    pub from_nodes: Option<Vec<SelectorSpec>>,
    pub to_nodes: Option<Vec<SelectorSpec>>,
    #[serde(default)]
    #[schemars(schema_with = "unenforced_objects")]
    pub from_groups: Option<Vec<Value>>,
    #[serde(default)]
    #[schemars(schema_with = "unenforced_objects")]
    pub to_groups: Option<Vec<Value>>,
    #[serde(default)]
    #[schemars(schema_with = "unenforced_objects")]
    pub to_services: Option<Vec<Value>>,
    #[serde(default)]
    #[schemars(schema_with = "unenforced_objects")]
    pub icmps: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthenticationSpec {
    pub mode: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CidrSetSpec {
    pub cidr: Option<String>,
    pub except: Option<Vec<String>>,
    /// CiliumCIDRGroup references (not enforced by tollgate; `load` rejects them).
    pub cidr_group_ref: Option<String>,
    pub cidr_group_selector: Option<SelectorSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct FqdnSpec {
    pub match_name: Option<String>,
    pub match_pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SelectorSpec {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<ExpressionSpec>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpressionSpec {
    pub key: String,
    pub operator: String,
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PortRuleSpec {
    pub ports: Option<Vec<PortSpec>>,
    pub rules: Option<L7RulesSpec>,
    // TLS interception and Envoy listeners (not enforced by tollgate; `load` rejects them).
    #[serde(default, rename = "terminatingTLS")]
    #[schemars(schema_with = "unenforced_object")]
    pub terminating_tls: Option<Value>,
    #[serde(default, rename = "originatingTLS")]
    #[schemars(schema_with = "unenforced_object")]
    pub originating_tls: Option<Value>,
    pub server_names: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(schema_with = "unenforced_object")]
    pub listener: Option<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PortSpec {
    /// Number or name; YAML may give it as an integer or a string.
    #[serde(default)]
    #[schemars(schema_with = "int_or_string")]
    pub port: Option<Value>,
    pub end_port: Option<i64>,
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct L7RulesSpec {
    pub http: Option<Vec<HttpRuleSpec>>,
    pub kafka: Option<Vec<KafkaRuleSpec>>,
    pub dns: Option<Vec<FqdnSpec>>,
    /// Generic L7 parsers (not enforced by tollgate; `load` rejects them).
    pub l7proto: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "unenforced_objects")]
    pub l7: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HttpRuleSpec {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Option<Vec<String>>,
    pub header_matches: Option<Vec<HeaderMatchSpec>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderMatchSpec {
    pub name: String,
    pub value: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "unenforced_object")]
    pub secret: Option<Value>,
    pub mismatch: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaRuleSpec {
    pub role: Option<String>,
    #[serde(rename = "apiKey")]
    pub api_key: Option<String>,
    #[serde(default, rename = "apiVersion")]
    #[schemars(schema_with = "int_or_string")]
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
