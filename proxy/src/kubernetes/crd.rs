//! The CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy CRDs, generated from these Rust types with kube's
//! `CustomResource` derive, for clusters that run tollgate without Cilium (`tollgate crds` prints them). With Cilium
//! installed, its own CRDs serve the same group/version/kind and tollgate reads them unchanged.
//!
//! The rule sections are kept schema-free (`x-kubernetes-preserve-unknown-fields`): policy-model validates them with
//! field paths and reasons, and writes the verdict to `status`, which is more useful to a user than an OpenAPI
//! rejection at `kubectl apply` time and keeps one validator for files and the API alike.

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn any_objects(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// The rule sections shared by both kinds.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNetworkPolicy",
    plural = "ciliumnetworkpolicies",
    shortname = "cnp",
    namespaced,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNetworkPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub endpoint_selector: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub node_selector: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_objects")]
    pub ingress: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_objects")]
    pub egress: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_objects")]
    pub ingress_deny: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_objects")]
    pub egress_deny: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub enable_default_deny: Option<serde_json::Value>,
}

/// The clusterwide kind: same rule sections, no namespace.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumClusterwideNetworkPolicy",
    plural = "ciliumclusterwidenetworkpolicies",
    shortname = "ccnp",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#
)]
pub struct CiliumClusterwideNetworkPolicySpec(pub CiliumNetworkPolicySpec);

/// What tollgate writes back (see `status.rs`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, JsonSchema)]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PolicyCondition>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Both CRDs as one multi-document YAML stream.
pub fn manifests() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [
        CiliumNetworkPolicy::crd(),
        CiliumClusterwideNetworkPolicy::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crds_name_cilium_kinds_with_status_subresource() {
        let cnp = CiliumNetworkPolicy::crd();
        assert_eq!(
            cnp.metadata.name.as_deref(),
            Some("ciliumnetworkpolicies.cilium.io")
        );
        assert_eq!(cnp.spec.scope, "Namespaced");
        let v = &cnp.spec.versions[0];
        assert_eq!(v.name, "v2");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let ccnp = CiliumClusterwideNetworkPolicy::crd();
        assert_eq!(ccnp.spec.scope, "Cluster");
        assert_eq!(
            ccnp.spec.names.short_names.as_deref(),
            Some(&["ccnp".to_string()][..])
        );
        let yaml = manifests().unwrap();
        assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 2);
        assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
    }

    #[test]
    fn a_real_cnp_object_deserializes_into_the_types() {
        let obj: CiliumNetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                     "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}
        }))
        .unwrap();
        assert_eq!(obj.spec.ingress.unwrap().len(), 1);
    }
}
