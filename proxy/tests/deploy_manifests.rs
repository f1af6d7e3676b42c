//! deploy/ is checked, not just shipped: the chart renders (values substitution only, so no `helm` binary is
//! needed), the rendered plain manifests and CRDs are current, every document passes the Kubernetes schema
//! (`kubernetes-validate`, an independent validator) and round-trips through k8s-openapi types unchanged (a
//! misspelled field would be dropped and show up), the ClusterRole grants exactly the API calls the code makes, and
//! every flag and TOLLGATE_* variable the DaemonSet uses exists in `tollgate run`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tollgate::kubernetes::api;

const RELEASE: &str = "tollgate";
const NAMESPACE: &str = "kube-system";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn lookup<'a>(v: &'a serde_yaml::Value, path: &str) -> &'a serde_yaml::Value {
    path.split('.').fold(v, |v, k| {
        v.get(k)
            .unwrap_or_else(|| panic!("values.yaml has no {path}"))
    })
}

/// Renders one template: only `{{ .Values.x.y }}`, `{{ .Release.Name }}`, `{{ .Release.Namespace }}` and
/// `{{ .Chart.Name|Version|AppVersion }}`. Anything else is a test failure: the chart must stay that simple.
fn render(
    template: &str,
    values: &serde_yaml::Value,
    chart: &serde_yaml::Value,
    file: &str,
) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .unwrap_or_else(|| panic!("{file}: unclosed {{{{"))
            + start;
        let action = rest[start + 2..end].trim();
        let value = if let Some(path) = action.strip_prefix(".Values.") {
            match lookup(values, path) {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => panic!("{file}: .Values.{path} is not a scalar: {other:?}"),
            }
        } else {
            match action {
                ".Release.Name" => RELEASE.to_string(),
                ".Release.Namespace" => NAMESPACE.to_string(),
                ".Chart.Name" | ".Chart.Version" | ".Chart.AppVersion" => {
                    let key = action.trim_start_matches(".Chart.");
                    let key = match key {
                        "Name" => "name",
                        "Version" => "version",
                        _ => "appVersion",
                    };
                    lookup(chart, key).as_str().unwrap().to_string()
                }
                other => panic!(
                    "{file}: template action `{other}` is beyond plain value substitution; keep the chart simple or \
                     render it with a Go-template engine in this test"
                ),
            }
        };
        out.push_str(&value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn rendered_chart() -> String {
    let chart_dir = deploy().join("helm/tollgate");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir.join("values.yaml")).unwrap())
            .unwrap();
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir.join("Chart.yaml")).unwrap())
            .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(chart_dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = String::from(
        "# Generated from deploy/helm/tollgate with its default values (release tollgate, namespace kube-system).\n\
         # Do not edit: TOLLGATE_REGENERATE_DEPLOY=1 cargo test -p tollgate --test deploy_manifests\n",
    );
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        out.push_str(&format!("---\n# Source: tollgate/templates/{name}\n"));
        out.push_str(&render(
            &std::fs::read_to_string(&f).unwrap(),
            &values,
            &chart,
            &name,
        ));
    }
    out
}

/// Compares a committed generated file, or rewrites it when asked.
fn check_generated(path: &Path, expected: &str) {
    if std::env::var_os("TOLLGATE_REGENERATE_DEPLOY").is_some() {
        std::fs::write(path, expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is stale; regenerate it with TOLLGATE_REGENERATE_DEPLOY=1 cargo test -p tollgate --test deploy_manifests",
        path.display()
    );
}

/// The document of `kind` that belongs to `app` (`tollgate` the DaemonSet's, `tollgate-relay` the relay's): both
/// have a Role and a RoleBinding.
fn of_app<'a>(docs: &'a [Value], kind: &str, app: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["labels"]["app.kubernetes.io/name"] == app)
        .unwrap_or_else(|| panic!("no {kind} labelled app.kubernetes.io/name={app}"))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Deserializes into the k8s-openapi type for its kind and back; the JSON must be unchanged.
fn roundtrip(doc: &Value) {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
        let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc}"));
        serde_json::to_value(typed).unwrap()
    }
    let back = match doc["kind"].as_str().unwrap() {
        "DaemonSet" => rt::<apps::DaemonSet>(doc),
        "Deployment" => rt::<apps::Deployment>(doc),
        "Role" => rt::<rbac::Role>(doc),
        "RoleBinding" => rt::<rbac::RoleBinding>(doc),
        "ServiceAccount" => rt::<core::ServiceAccount>(doc),
        "ConfigMap" => rt::<core::ConfigMap>(doc),
        "Service" => rt::<core::Service>(doc),
        "ClusterRole" => rt::<rbac::ClusterRole>(doc),
        "ClusterRoleBinding" => rt::<rbac::ClusterRoleBinding>(doc),
        "CustomResourceDefinition" => rt::<ext::CustomResourceDefinition>(doc),
        other => panic!("no k8s-openapi check for kind {other}"),
    };
    assert_eq!(
        &back, doc,
        "{} does not round-trip through k8s-openapi",
        doc["kind"]
    );
}

fn kubernetes_validate(path: &Path) {
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict", "--no-warn"])
        .arg(path)
        .output()
        .expect("kubernetes-validate is not installed: run ./dev setup (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate {}:\n{text}",
        path.display()
    );
    assert!(!text.contains("ERROR"), "{text}");
}

#[test]
fn chart_renders_and_plain_manifests_are_current_and_valid() {
    let rendered = rendered_chart();
    let manifests = deploy().join("manifests/tollgate.yaml");
    check_generated(&manifests, &rendered);
    let docs = documents(&rendered);
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ])
    );
    for d in &docs {
        roundtrip(d);
    }
    kubernetes_validate(&manifests);
}

#[test]
fn crd_manifests_are_current_and_valid() {
    let crds = tollgate::kubernetes::crd::manifests().unwrap();
    let path = deploy().join("crds/cilium-policies.yaml");
    check_generated(&path, &crds);
    let docs = documents(&crds);
    assert_eq!(docs.len(), 2);
    for d in &docs {
        roundtrip(d);
    }
    kubernetes_validate(&path);
}

#[test]
fn cluster_role_grants_exactly_the_api_calls_the_code_makes() {
    let docs = documents(&rendered_chart());
    for (kind, scope) in [
        ("ClusterRole", api::Scope::Cluster),
        ("Role", api::Scope::OwnNamespace),
    ] {
        let role = of_app(&docs, kind, "tollgate");
        let mut granted = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
        let used: BTreeSet<(String, String, String)> = api::API_USES
            .iter()
            .filter(|u| u.scope == scope)
            .flat_map(|u| {
                u.verbs
                    .iter()
                    .map(|v| (u.group.to_string(), u.resource.to_string(), v.to_string()))
            })
            .collect();
        assert_eq!(
            granted, used,
            "{kind} rules differ from proxy/src/kubernetes/api.rs"
        );
    }
    // The Role is bound to tollgate's service account in the namespace the DaemonSet runs in.
    let binding = of_app(&docs, "RoleBinding", "tollgate");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert_eq!(
        binding["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(
        binding["subjects"][0]["name"],
        ds["spec"]["template"]["spec"]["serviceAccountName"]
    );
}

#[test]
fn daemonset_flags_and_config_variables_exist_in_tollgate_run() {
    let help = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let docs = documents(&rendered_chart());
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    for arg in container["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        if arg.starts_with("--") {
            assert!(
                help.contains(&format!("{arg} ")),
                "DaemonSet passes {arg}, which `tollgate run` lacks"
            );
        }
    }
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    for key in cm["data"].as_object().unwrap().keys() {
        // TOLLGATE_LOG is the log filter, read by main.rs rather than a flag.
        if key == "TOLLGATE_LOG" {
            continue;
        }
        assert!(
            help.contains(&format!("[env: {key}=")),
            "ConfigMap sets {key}, which `tollgate run` does not read"
        );
    }
    assert!(help.contains("[env: NODE_NAME="));
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for var in ["POD_NAMESPACE", "POD_NAME"] {
        assert!(env.contains(&var), "the DaemonSet passes {var}");
        assert!(
            help.contains(&format!("[env: {var}=")),
            "tollgate run reads {var}"
        );
    }
}

#[test]
fn relay_deployment_flags_exist_and_its_role_only_lists_and_watches_pods() {
    let help = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["relay", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let docs = documents(&rendered_chart());
    let relay = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the relay Deployment");
    let container = &relay["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "relay");
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{arg} ")) || help.contains(&format!("{arg}\n")),
            "the relay Deployment passes {arg}, which `tollgate relay` lacks"
        );
    }
    // The relay's selector finds the DaemonSet's pods and not its own.
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let ds_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = args[args
        .iter()
        .position(|a| *a == "--kubernetes-selector")
        .unwrap()
        + 1];
    let own = &relay["spec"]["template"]["metadata"]["labels"];
    let matches = |labels: &Value| {
        selector
            .split(',')
            .all(|t| t.split_once('=').is_some_and(|(k, v)| labels[k] == v))
    };
    assert!(
        matches(ds_labels),
        "{selector} does not select the DaemonSet's pods"
    );
    assert!(!matches(own), "{selector} selects the relay itself");
    assert!(help.contains("[env: POD_NAMESPACE="));
    let role = of_app(&docs, "Role", "tollgate-relay");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])
    );
    let binding = of_app(&docs, "RoleBinding", "tollgate-relay");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["name"],
        relay["spec"]["template"]["spec"]["serviceAccountName"]
    );
}
