//! The admin socket's wire format: one JSON request line from the client, one JSON response line back, then the
//! daemon closes. The same types serve the daemon (serialize) and the CLI (deserialize), so both sides agree by
//! construction.

use serde::{Deserialize, Serialize};

use crate::policy_source::ReloadError;

/// Largest request line the daemon reads (a trace request is a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest response line the CLI accepts (a `bpf list` of full maps is a few MiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    EndpointList,
    /// `id`: an identity number, `namespace/pod`, or an IP.
    EndpointGet {
        id: String,
    },
    PolicyGet {
        endpoint: Option<String>,
    },
    PolicyTrace(TraceRequest),
    BpfList,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRequest {
    /// `namespace/pod` or an IP.
    pub from: String,
    pub to: String,
    pub port: u16,
    /// `TCP` or `UDP`; default TCP (UDP for a DNS question).
    pub protocol: Option<String>,
    pub http_method: Option<String>,
    pub http_path: Option<String>,
    pub dns_name: Option<String>,
    pub kafka_topic: Option<String>,
    /// `produce` or `consume`.
    pub kafka_role: Option<String>,
    pub kafka_api_version: Option<i16>,
}

/// `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(format!("encoding the answer: {e}")),
        }
    }

    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub node: Option<String>,
    pub redirect_mode: String,
    pub policy: PolicyStatus,
    /// `--redirect ebpf` only.
    pub datapath: Option<DatapathStatus>,
    pub listeners: Vec<Listener>,
    pub tunnel: Option<TunnelStatus>,
    pub flows: FlowStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub generation: u64,
    pub policies: Vec<String>,
    pub endpoints: usize,
    pub rejected_updates: u64,
    pub last_reload_error: Option<ReloadError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStatus {
    pub pin_root: String,
    /// Set when the pinned state could not be read (the rest is then empty).
    pub error: Option<String>,
    pub maps: Vec<MapFill>,
    pub cgroups: Vec<CgroupPrograms>,
    pub tc_links: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    /// `None`: not countable (ring buffer; `max_entries` is then its size in bytes).
    pub entries: Option<usize>,
    pub max_entries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPrograms {
    pub cgroup_id: u64,
    /// The cgroup directory, when an endpoint (or the proxy) names it.
    pub path: Option<String>,
    /// `namespace/pod`, or `tollgate (proxy)` for the proxy's own cgroup.
    pub endpoint: Option<String>,
    pub identity: Option<u32>,
    pub programs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub node: String,
    pub node_id: String,
    /// The node SVID's expiry (RFC 3339) and seconds left.
    pub svid_expiry: Option<String>,
    pub svid_expires_in_secs: Option<i64>,
    pub peers: Vec<Listener>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    pub ring_capacity: usize,
    pub ring_len: usize,
    pub seen: u64,
    pub lost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// `namespace/pod`.
    pub name: String,
    pub identity: u32,
    pub ip: String,
    pub labels: Vec<String>,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    /// `8080/TCP http ingress`.
    pub l7_ports: Vec<String>,
    pub cgroup: Option<String>,
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub endpoint: String,
    pub identity: u32,
    pub effective: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyGet {
    pub generation: u64,
    pub endpoints: Vec<EndpointPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceAnswer {
    pub generation: u64,
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    /// What was asked at L7, in words (`GET /cart`, `DNS api.example.com`, `Kafka produce topic=orders`).
    pub request: Option<String>,
    pub trace: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfList {
    pub pin_root: String,
    pub maps: Vec<MapFill>,
    pub redirects: Vec<RedirectRow>,
    pub fqdn: Vec<FqdnRow>,
    pub ipcache: Vec<IpcacheRow>,
    pub cgroups: Vec<CgroupPrograms>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectRow {
    pub identity: u32,
    /// The endpoints holding the identity (`namespace/pod`).
    pub endpoints: Vec<String>,
    pub direction: String,
    /// `TCP`, `UDP`, or `-` for the per-identity flags entry.
    pub protocol: String,
    pub port: u16,
    /// `http`, `kafka`, `dns` or `-`.
    pub l7: String,
    pub proxy_port: u16,
    pub fqdn_restricted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnRow {
    pub identity: u32,
    pub endpoints: Vec<String>,
    pub ip: String,
    /// Names the DNS proxy learned this IP for.
    pub names: Vec<String>,
    /// `TCP/443`, or `any`.
    pub port: String,
    /// Seconds left; `None` = never expires.
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheRow {
    pub prefix: String,
    pub identity: u32,
    pub local: bool,
}
