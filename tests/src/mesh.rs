//! Two nodes for the node-to-node mTLS tunnel: each is an [`EbpfScenario`] (its own node netns, pods, nginx and
//! `tollgate run --redirect ebpf`), joined by an "inter-node" veth pair with routes to the other node's pods, a
//! development CA both proxies issue SVIDs from (`tollgate certs ca`), a `--nodes` file, and endpoints files in
//! which every pod names its node (each node enrolls only its own pods' cgroups).
//!
//! The case's endpoints carry `node: a` or `node: b`; the service account is the usual
//! `io.cilium.k8s.policy.serviceaccount` label.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::scenario::{CaseFile, EbpfScenario};
use crate::{TempDir, next_id, run, tollgate_bin};

/// The mTLS tests' cluster: web and batch on node A, api and web-b on node B; api's HTTP ports 8080/8081 (GET
/// `/public.*`) and its L4 port 9080 admit web only, and only authenticated (`authentication.mode: required`).
pub const MTLS_CASE: &str = r#"name: mtls
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: api-mtls, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: web}}]
          authentication: {mode: required}
          toPorts:
            - ports: [{port: "8080", protocol: TCP}, {port: "8081", protocol: TCP}]
              rules: {http: [{method: GET, path: "/public.*"}]}
        - fromEndpoints: [{matchLabels: {app: web}}]
          authentication: {mode: required}
          toPorts: [{ports: [{port: "9080", protocol: TCP}]}]
endpoints:
  - {name: web, namespace: prod, labels: {app: web, io.cilium.k8s.policy.serviceaccount: web}, ip: 10.0.8.10, node: a}
  - {name: batch, namespace: prod, labels: {app: batch, io.cilium.k8s.policy.serviceaccount: batch}, ip: 10.0.8.11, node: a}
  - {name: api, namespace: prod, labels: {app: api, io.cilium.k8s.policy.serviceaccount: api}, ip: 10.0.9.20, node: b}
  - {name: web-b, namespace: prod, labels: {app: web, io.cilium.k8s.policy.serviceaccount: web}, ip: 10.0.9.21, node: b}
"#;

/// The tunnel port (HBONE's).
pub const TUNNEL_PORT: u16 = 15008;
/// The TC-steered transparent listener on node B (plain connections arriving from the other node).
pub const TPROXY_PORT: u16 = 15006;

/// Two nodes joined by one link; `a` and `b` run their own tollgate.
#[derive(Debug)]
pub struct TwoNodes {
    // Drop order: proxies and pods first (the scenarios), then the CA directory.
    pub a: EbpfScenario,
    pub b: EbpfScenario,
    /// Node-side names of the inter-node link in A and in B.
    pub link_a: String,
    pub link_b: String,
    pub addr_a: String,
    pub addr_b: String,
    pub ca: TempDir,
}

impl TwoNodes {
    /// Builds both nodes from a case whose endpoints name their node (`a` or `b`); proxies are not started.
    pub fn new(name: &str, case_text: &str) -> Result<Self> {
        let case = CaseFile::parse(name, case_text)?;
        let split = |node: &str| -> Result<CaseFile> {
            let mut c = CaseFile::parse(name, case_text)?;
            c.name = format!("{name}-{node}");
            c.endpoints.retain(|e| e.node.as_deref() == Some(node));
            Ok(c)
        };
        for e in &case.endpoints {
            if !matches!(e.node.as_deref(), Some("a" | "b")) {
                bail!("{name}: endpoint {} must say node: a or node: b", e.key());
            }
        }
        let a = EbpfScenario::new(split("a")?)?;
        let b = EbpfScenario::new(split("b")?)?;
        let n = next_id();
        let tag = format!("tgi{}x{n}", std::process::id() % 100_000);
        let (link_a, link_b) = (format!("{tag}a"), format!("{tag}b"));
        let subnet = 100 + (n % 100);
        let (addr_a, addr_b) = (format!("192.168.{subnet}.1"), format!("192.168.{subnet}.2"));
        a.node.netns.exec(&[
            "ip",
            "link",
            "add",
            &link_a,
            "type",
            "veth",
            "peer",
            "name",
            &link_b,
            "netns",
            b.node.netns.name(),
        ])?;
        for (sc, link, addr) in [(&a, &link_a, &addr_a), (&b, &link_b, &addr_b)] {
            sc.node.netns.sh(&format!(
                "set -e; ip addr add {addr}/24 dev {link}; ip link set {link} up; \
                 sysctl -qw net.ipv4.conf.{link}.rp_filter=0"
            ))?;
        }
        // Each node routes the other node's pods over the link.
        for e in &case.endpoints {
            let (sc, via) = match e.node.as_deref() {
                Some("a") => (&b, &addr_a),
                _ => (&a, &addr_b),
            };
            sc.node
                .netns
                .exec(&["ip", "route", "add", &format!("{}/32", e.ip), "via", via])?;
        }
        let ca = TempDir::new(&format!("{name}-ca"))?;
        run(std::process::Command::new(tollgate_bin())
            .args(["certs", "ca", "--trust-domain", "cluster.local", "--out"])
            .arg(ca.path())
            .stdout(Stdio::null()))
        .context("tollgate certs ca")?;
        let nodes = format!(
            "nodes:\n  - {{name: a, tunnel: \"{addr_a}:{TUNNEL_PORT}\"}}\n  - {{name: b, tunnel: \"{addr_b}:{TUNNEL_PORT}\"}}\n"
        );
        // Every pod in both files (identities and nodes are cluster-wide); cgroups only where the pod runs.
        for sc in [&a, &b] {
            let mut text = String::from("endpoints:\n");
            for e in &case.endpoints {
                let labels: Vec<String> = e
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k:?}: {v:?}"))
                    .collect();
                let cgroup = sc
                    .pods
                    .get(&e.key())
                    .map(|p| format!(", cgroup: {:?}", p.cgroup.path().display().to_string()))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "  - {{name: {}, namespace: {}, labels: {{{}}}, ip: {}, node: {}{cgroup}}}\n",
                    e.name,
                    e.namespace,
                    labels.join(", "),
                    e.ip,
                    e.node.as_deref().unwrap_or_default(),
                ));
            }
            sc.dir.write("endpoints.yaml", &text)?;
            sc.dir.write("nodes.yaml", &nodes)?;
        }
        // Each node delivers TC-steered packets (plain connections from the other node) to its transparent listener.
        for sc in [&a, &b] {
            sc.node.netns.sh(
                "ip rule add fwmark 0x200 lookup 100 && ip route add local 0.0.0.0/0 dev lo table 100",
            )?;
        }
        Ok(TwoNodes {
            a,
            b,
            link_a,
            link_b,
            addr_a,
            addr_b,
            ca,
        })
    }

    /// The `tollgate run` flags of node `which` (`a` or `b`) with the tunnel on; `extra` is appended.
    pub fn args(&self, which: &str, extra: &[&str]) -> Vec<String> {
        let (sc, addr, link) = match which {
            "a" => (&self.a, &self.addr_a, &self.link_a),
            _ => (&self.b, &self.addr_b, &self.link_b),
        };
        let mut args = sc.ebpf_args();
        args.extend(
            [
                "--node-name",
                which,
                "--tunnel-listen",
                &format!("{addr}:{TUNNEL_PORT}"),
                "--nodes",
                &sc.dir.path().join("nodes.yaml").display().to_string(),
                "--svid-source",
                &format!("dev-ca:{}", self.ca.path().display()),
                "--tproxy-port",
                &TPROXY_PORT.to_string(),
                "--tc-interface",
                link,
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts both proxies with the tunnel on and waits for both tunnel listeners.
    pub fn start(&mut self, extra: &[&str]) -> Result<()> {
        let (args_a, args_b) = (self.args("a", extra), self.args("b", extra));
        self.b.start_proxy_with(&args_b)?;
        self.a.start_proxy_with(&args_a)?;
        for sc in [&self.a, &self.b] {
            if !sc.proxy_log().contains("mTLS tunnel listener ready") {
                bail!("no tunnel listener:\n{}", sc.proxy_log());
            }
        }
        Ok(())
    }

    /// The CA directory (`ca.pem`, `ca.key`) both proxies issue from.
    pub fn ca_dir(&self) -> PathBuf {
        self.ca.path().to_path_buf()
    }

    /// Writes an SVID for `spiffe_id` from the cluster CA into a new directory (svid.pem, svid.key, bundle.pem).
    pub fn issue(&self, spiffe_id: &str, ttl_secs: u64) -> Result<PathBuf> {
        let out = self.ca.path().join(format!("svid-{}", next_id()));
        fs::create_dir_all(&out)?;
        run(std::process::Command::new(tollgate_bin())
            .args(["certs", "issue", "--ca"])
            .arg(self.ca.path())
            .args([
                "--spiffe-id",
                spiffe_id,
                "--ttl-secs",
                &ttl_secs.to_string(),
                "--out",
            ])
            .arg(&out)
            .stdout(Stdio::null()))?;
        Ok(out)
    }
}
