//! The CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy CRDs, for clusters that run tollgate without Cilium
//! (`tollgate crds` prints them). With Cilium installed, its own CRDs serve the same group/version/kind and tollgate
//! reads them unchanged.
//!
//! The `spec` (and each item of `specs`) schema is generated from policy-model's wire types, the ones the loader
//! deserializes, so the API server accepts exactly what the loader reads: every field a Cilium policy may carry,
//! including the ones tollgate does not enforce (the loader rejects those by field path, in `status`). The schema is
//! structural, so the API server's strict field validation rejects a misspelled field at `kubectl apply` time.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::schema::{OptionalEnum, OptionalIntOrString, StructuralSchemaRewriter};
use schemars::generate::SchemaSettings;
use schemars::transform::AddNullable;
use schemars::{JsonSchema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The condition type tollgate owns in a policy's `status.conditions`.
pub const VALID_CONDITION: &str = "Valid";

/// What tollgate writes back (see `status.rs`); other writers' conditions live beside ours, merged by `type`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<PolicyCondition>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
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

/// The settings kube's `CustomResource` derive uses: OpenAPI v3, inlined, rewritten to Kubernetes' structural rules.
fn structural_generator() -> SchemaGenerator {
    SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(AddNullable::default())
        .with_transform(StructuralSchemaRewriter)
        .with_transform(OptionalEnum)
        .with_transform(OptionalIntOrString)
        .into_generator()
}

/// The openAPIV3Schema of a Cilium policy object: `spec` or `specs` from the loader's types, plus our status.
pub fn policy_object_schema() -> Value {
    let mut generator = structural_generator();
    let mut spec = policy_model::cilium_spec_schema(&mut generator).to_value();
    strip_null_defaults(&mut spec);
    let mut status = generator.root_schema_for::<PolicyStatus>();
    status.remove("title");
    let status = status.to_value();
    json!({
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "specs": {"type": "array", "items": spec},
            "status": status,
        }
    })
}

/// `#[serde(default)]` on an optional field shows as `default: null`; the API server would store that null in every
/// object that omits the field, so the CRD declares no default (absent stays absent).
fn strip_null_defaults(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            map.values_mut().for_each(strip_null_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null_defaults),
        _ => {}
    }
}

fn crd(kind: &str, plural: &str, short: &str, scope: &str) -> CustomResourceDefinition {
    let doc = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.cilium.io")},
        "spec": {
            "group": "cilium.io",
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_ascii_lowercase(),
                "shortNames": [short],
                "categories": ["cilium", "ciliumpolicy"],
            },
            "scope": scope,
            "versions": [{
                "name": "v2",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{
                    "name": "Valid",
                    "type": "string",
                    "jsonPath": format!(".status.conditions[?(@.type==\"{VALID_CONDITION}\")].status"),
                }],
                "schema": {"openAPIV3Schema": policy_object_schema()},
            }],
        }
    });
    serde_json::from_value(doc)
        .expect("the CRD literal matches k8s-openapi's CustomResourceDefinition")
}

/// The namespaced kind.
pub fn cilium_network_policy() -> CustomResourceDefinition {
    crd(
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
        "cnp",
        "Namespaced",
    )
}

/// The clusterwide kind: same schema, no namespace.
pub fn cilium_clusterwide_network_policy() -> CustomResourceDefinition {
    crd(
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
        "ccnp",
        "Cluster",
    )
}

/// Both CRDs as one multi-document YAML stream.
pub fn manifests() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [cilium_network_policy(), cilium_clusterwide_network_policy()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_name_cilium_kinds_with_status_subresource() {
        let cnp = cilium_network_policy();
        assert_eq!(
            cnp.metadata.name.as_deref(),
            Some("ciliumnetworkpolicies.cilium.io")
        );
        assert_eq!(cnp.spec.scope, "Namespaced");
        let v = &cnp.spec.versions[0];
        assert_eq!(v.name, "v2");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let ccnp = cilium_clusterwide_network_policy();
        assert_eq!(ccnp.spec.scope, "Cluster");
        assert_eq!(
            ccnp.spec.names.short_names.as_deref(),
            Some(&["ccnp".to_string()][..])
        );
        let yaml = manifests().unwrap();
        assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 2);
    }

    #[test]
    fn the_schema_has_the_fields_cilium_users_write() {
        let s = policy_object_schema();
        if std::env::var_os("DUMP_SCHEMA").is_some() {
            println!("{s:#}");
        }
        let spec = &s["properties"]["spec"]["properties"];
        for field in [
            "endpointSelector",
            "nodeSelector",
            "ingress",
            "ingressDeny",
            "egress",
            "egressDeny",
            "labels",
            "description",
            "enableDefaultDeny",
            "log",
        ] {
            assert!(spec.get(field).is_some(), "spec.{field} missing: {s:#}");
        }
        assert_eq!(s["properties"]["specs"]["items"], s["properties"]["spec"]);
        let conditions = &s["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        let text = s.to_string();
        assert!(
            !text.contains("\"$ref\""),
            "structural schemas inline: {s:#}"
        );
        assert!(!text.contains("\"additionalProperties\":false"), "{s:#}");
        assert!(!text.contains("\"default\":null"), "{s:#}");
    }
}
