//! Kubernetes mode (`tollgate run --kubernetes`): policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
//! NetworkPolicy), pods and namespaces come from the API server instead of files; the compiled result goes through
//! the same `PolicyStore` and datapath gate as standalone mode. The cluster itself is the control plane: tollgate
//! only reads from it, plus the status of the policies it validated.
//!
//! - `cluster`: pure reduction of API objects to endpoints and per-object validated policies.
//! - `cgroup`: where the kubelet put a pod's cgroup (for the eBPF enrollment).
//! - `status`: the `Valid` condition written back to each Cilium policy.
//! - `crd`: the CRDs, from our own types, for clusters without Cilium.
//! - `api`: the one table of API calls made (RBAC is checked against it).
//! - `lease`: the Lease that makes one daemon per cluster the status writer.
//! - `watch`: watchers, reconciler, status writer.
//!
//! What this module must not do: decide policy (policy-model does) or touch the datapath (datapath.rs does, from
//! the snapshot this module produces).

pub mod api;
pub mod cgroup;
pub mod cluster;
pub mod crd;
pub mod lease;
pub mod status;
pub mod watch;

use std::path::PathBuf;

use anyhow::Context;

use crate::policy_source::{PolicyStore, kubernetes as feed};

/// Flags of Kubernetes mode.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Take policies, pods and namespaces from the Kubernetes API (in-cluster config, or $KUBECONFIG).
    #[arg(long, env = "TOLLGATE_KUBERNETES")]
    pub kubernetes: bool,
    /// This node's name (the DaemonSet passes spec.nodeName); only its pods are enrolled.
    #[arg(long, env = "NODE_NAME", required_if_eq("kubernetes", "true"))]
    pub node_name: Option<String>,
    /// Where the kubelet's pod cgroups live (cgroup v2 mount as seen by tollgate). Default: /sys/fs/cgroup/unified
    /// when that exists (hybrid hosts), else /sys/fs/cgroup.
    #[arg(long, env = "TOLLGATE_POD_CGROUP_ROOT")]
    pub pod_cgroup_root: Option<PathBuf>,
    /// Namespace of the Lease that picks the one daemon writing policy status (the DaemonSet passes its own
    /// namespace from the downward API). Default: the service account's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub status_lease_namespace: Option<String>,
    /// This daemon's identity in that Lease (the DaemonSet passes metadata.name). Default: the node name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

impl KubeArgs {
    fn scope(&self) -> anyhow::Result<watch::NodeScope> {
        let node_name = self
            .node_name
            .clone()
            .context("--kubernetes needs --node-name (or NODE_NAME from the downward API)")?;
        let cgroup_root = self.pod_cgroup_root.clone().unwrap_or_else(|| {
            let hybrid = PathBuf::from("/sys/fs/cgroup/unified");
            if hybrid.is_dir() {
                hybrid
            } else {
                PathBuf::from("/sys/fs/cgroup")
            }
        });
        Ok(watch::NodeScope {
            lease: None,
            node_name,
            cgroup_root,
        })
    }

    fn lease(&self, node_name: &str, default_namespace: &str) -> lease::LeaseSettings {
        lease::LeaseSettings {
            namespace: self
                .status_lease_namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_string()),
            identity: self
                .pod_name
                .clone()
                .unwrap_or_else(|| node_name.to_string()),
            timing: lease::LeaseTiming::default(),
        }
    }
}

/// Connects (in-cluster config or $KUBECONFIG), waits until every resource has been listed once, and returns the
/// policy store built from that state plus the reconciler that keeps it current (`watch::run_updates`).
pub async fn start(args: &KubeArgs) -> anyhow::Result<(PolicyStore, watch::Reconciler)> {
    let mut scope = args.scope()?;
    let config = kube::Config::infer().await.context(
        "connecting to the Kubernetes API: no in-cluster service account and no usable $KUBECONFIG",
    )?;
    scope.lease = Some(args.lease(&scope.node_name, &config.default_namespace));
    let client = api::client(config, &scope.node_name)?;
    start_with_client(client, scope).await
}

/// As [`start`], with a given client (tests point it at their API server).
pub async fn start_with_client(
    client: kube::Client,
    scope: watch::NodeScope,
) -> anyhow::Result<(PolicyStore, watch::Reconciler)> {
    tracing::info!(node = %scope.node_name, "waiting for the initial list of pods, namespaces and policies");
    let mut reconciler = watch::start_watchers(client, scope);
    let first = reconciler
        .next()
        .await
        .context("the Kubernetes watchers stopped before the first list completed")?;
    let source = feed::start(first.engine, first.endpoints);
    Ok((source, reconciler))
}
