//! Flow records: one per HTTP request (L7) or per refused/spliced connection (L3/L4), kept in a bounded in-memory
//! ring and written as JSON lines to stdout or a file.
//!
//! The JSON field names are modelled on Hubble's `Flow` (flow.proto): `time`, `uuid`, `verdict` (FORWARDED, DROPPED,
//! ERROR), `drop_reason`, `source` / `destination` (ip, port, identity, namespace, pod, `k8s:key=value` labels),
//! `l7` (`http`: method, url, code, protocol; `kafka`: api_key, api_version, correlation_id, topics, error_code),
//! `dns` (query, qtypes, rcode, ips, ttl, cnames, rrtypes), `traffic_direction` (INGRESS, EGRESS), `latency_ns`,
//! `auth_type`, plus `protocol` and `policy` (which rule allowed or which policy denied); `hubble.rs` maps them to
//! Hubble's protobuf field numbers. Writing never blocks the data path: records go through a bounded channel to a
//! writer task, and a full channel counts the record as lost.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

/// What happened to the flow (Hubble `Verdict` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Forwarded,
    Dropped,
    Error,
}

/// Why a flow was dropped or failed (Hubble drop-reason names where one exists). Serialized as its
/// [`DropReason::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No allow rule matched (Hubble 133).
    PolicyDenied,
    /// A deny rule matched (Hubble 181).
    PolicyDeny,
    /// The request was malformed or ambiguous (bad path encoding, smuggling attempt, parse error).
    InvalidRequest,
    /// A configured limit was exceeded (header size/count, connections, streams, timeouts).
    LimitExceeded,
    /// The upstream could not be reached or failed mid-request.
    UpstreamError,
    /// The port needs a protocol parser this build does not have yet: fail closed.
    UnsupportedProtocol,
    /// The allowing rule requires mutual authentication and the connection was not authenticated (Hubble 189).
    AuthRequired,
}

impl DropReason {
    /// The name flow records and metric labels use (the same as its JSON form).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "POLICY_DENIED",
            DropReason::PolicyDeny => "POLICY_DENY",
            DropReason::InvalidRequest => "INVALID_REQUEST",
            DropReason::LimitExceeded => "LIMIT_EXCEEDED",
            DropReason::UpstreamError => "UPSTREAM_ERROR",
            DropReason::UnsupportedProtocol => "UNSUPPORTED_PROTOCOL",
            DropReason::AuthRequired => "AUTH_REQUIRED",
        }
    }
}

/// Its JSON form is its name, so flow records, metric labels and exports spell a reason one way.
impl Serialize for DropReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    Ingress,
    Egress,
}

/// One side of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlowEndpoint {
    pub ip: String,
    pub port: u16,
    pub identity: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `k8s:key=value` strings, as Hubble shows them.
    pub labels: Vec<String>,
}

impl FlowEndpoint {
    pub fn new(addr: SocketAddr, identity: u32) -> Self {
        FlowEndpoint {
            ip: addr.ip().to_string(),
            port: addr.port(),
            identity,
            ..Default::default()
        }
    }

    pub fn with_pod(
        mut self,
        namespace: &str,
        pod: &str,
        labels: &BTreeMap<String, String>,
    ) -> Self {
        self.namespace = Some(namespace.to_string());
        self.pod = Some(pod.to_string());
        self.labels = labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpInfo {
    pub method: String,
    pub url: String,
    /// Response status sent to the client (0 when none was sent).
    pub code: u16,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: String,
    /// Headers named by `LOG` header actions (secret values are never recorded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Set for gRPC requests: the grpc-status sent back when the proxy answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

/// One DNS query and what became of it (Hubble `DNS` fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DnsInfo {
    /// The question name as the client sent it (0x20 casing kept), with the trailing dot.
    pub query: String,
    pub qtypes: Vec<String>,
    /// Response code sent to the client (the resolver's, or the proxy's own REFUSED/NXDOMAIN/SERVFAIL/FORMERR).
    pub rcode: u16,
    /// A/AAAA answers (following CNAMEs).
    pub ips: Vec<String>,
    /// Smallest TTL of the answers, seconds.
    pub ttl: u32,
    /// CNAME targets, in chain order.
    pub cnames: Vec<String>,
    /// Record types in the answer section.
    pub rrtypes: Vec<String>,
    /// `proxy` (answered by the resolver through the proxy) or `proxy-refused` (answered by the proxy).
    pub observation_source: String,
}

/// One Kafka request and what became of it (Hubble `Kafka` fields, plus the client id and every topic).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KafkaInfo {
    /// API key name in Kafka's spelling (`Produce`, `Fetch`, `Metadata`, ...).
    pub api_key: String,
    pub api_version: i16,
    pub correlation_id: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Topics the request named (ids resolved to names where the proxy has seen them).
    pub topics: Vec<String>,
    /// Error code sent back by the proxy (29 TOPIC_AUTHORIZATION_FAILED, ...); 0 for forwarded requests, whose
    /// responses are relayed without being decoded.
    pub error_code: i16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct L7Info {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaInfo>,
}

/// How the connection's source was authenticated (Hubble's `auth_type`, field 35).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthType {
    /// Plain connection: the source identity comes from its address.
    #[default]
    Disabled,
    /// Carried by the node-to-node mTLS tunnel: the source identity comes from its X.509-SVID.
    Spire,
}

impl AuthType {
    pub fn is_disabled(&self) -> bool {
        *self == AuthType::Disabled
    }
}

/// One flow record (field names modelled on Hubble's `Flow`, see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// When the record was started; written as RFC 3339 UTC with nanoseconds.
    pub time: FlowTime,
    pub uuid: FlowId,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<DropReason>,
    /// Shared, not copied: every request of a connection names the same two endpoints (`flow_record::ConnEndpoints`).
    pub source: Arc<FlowEndpoint>,
    pub destination: Arc<FlowEndpoint>,
    /// `TCP`, `HTTP`, `gRPC`.
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Info>,
    /// DNS query/response details (records from the DNS proxy; `l7` is then present and empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_direction: Option<TrafficDirection>,
    pub latency_ns: u64,
    /// Which rule allowed or which policy denied (`policy_model::Reason` Display), or the error.
    pub policy: String,
    /// `SPIRE` for connections carried by the node-to-node mTLS tunnel; omitted for plain ones.
    #[serde(skip_serializing_if = "AuthType::is_disabled")]
    pub auth_type: AuthType,
    /// The SPIFFE ID the peer proved with its certificate: the source workload on the destination node, the
    /// destination node proxy on the source node; or the ID a refused peer presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_spiffe_id: Option<String>,
    /// The policy generation in force when the record was logged (stamped by [`FlowLog::record`] when the
    /// daemon registered a source with [`FlowLog::set_revision_source`]); Hubble's `Policy.revision`.
    #[serde(skip_serializing_if = "is_zero")]
    pub policy_revision: u64,
    /// The request's W3C `traceparent` header, when it carried one (Hubble's `trace_context`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// Set by [`FlowLog::record`] on the first record of a connection with a given policy outcome: the observer
    /// then emits a Cilium policy-verdict event (type 5) naming the deciding policies before the record itself.
    #[serde(skip)]
    pub policy_verdict_event: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl FlowRecord {
    pub fn new(
        verdict: Verdict,
        source: impl Into<Arc<FlowEndpoint>>,
        destination: impl Into<Arc<FlowEndpoint>>,
        protocol: &str,
    ) -> Self {
        FlowRecord {
            time: FlowTime::now(),
            uuid: uuid_v4(),
            verdict,
            drop_reason: None,
            source: source.into(),
            destination: destination.into(),
            protocol: protocol.to_string(),
            l7: None,
            dns: None,
            traffic_direction: None,
            latency_ns: 0,
            policy: String::new(),
            auth_type: AuthType::Disabled,
            peer_spiffe_id: None,
            policy_revision: 0,
            trace_parent: None,
            policy_verdict_event: false,
        }
    }
}

/// When a flow record was started. Kept as a time, and written as RFC 3339 UTC with nanoseconds
/// (`2026-11-22T23:01:02.123456789Z`) only when a sink serializes or shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowTime(pub SystemTime);

impl FlowTime {
    pub fn now() -> Self {
        FlowTime(SystemTime::now())
    }

    /// Seconds and nanoseconds since the Unix epoch (a time before it counts as the epoch, as it is written).
    pub fn unix(&self) -> (i64, i32) {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        (d.as_secs() as i64, d.subsec_nanos() as i32)
    }

    /// Reads the RFC 3339 UTC text this type writes (fraction optional, up to 9 digits).
    pub fn parse(rfc3339: &str) -> Option<Self> {
        let (secs, nanos) = parse_rfc3339(rfc3339)?;
        let secs = u64::try_from(secs).ok()?;
        Some(FlowTime(
            UNIX_EPOCH + std::time::Duration::new(secs, u32::try_from(nanos).ok()?),
        ))
    }
}

impl std::fmt::Display for FlowTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (secs, nanos) = self.unix();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil-from-days (Howard Hinnant's public-domain algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60,
        )
    }
}

impl Serialize for FlowTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Formats a time as RFC 3339 UTC (`2026-11-22T23:01:02.123456789Z`) without pulling in a calendar crate.
pub fn rfc3339(t: SystemTime) -> String {
    FlowTime(t).to_string()
}

/// Seconds and nanoseconds since the Unix epoch of an RFC 3339 UTC time (`2026-11-22T23:01:02.5Z`).
pub fn parse_rfc3339(rfc3339: &str) -> Option<(i64, i32)> {
    let b = rfc3339.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| rfc3339.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = match rfc3339.get(19..)?.strip_prefix('.') {
        Some(frac) => {
            let digits = frac.trim_end_matches('Z');
            let padded = format!("{digits:0<9}");
            padded.get(..9)?.parse::<i32>().ok()?
        }
        None => 0,
    };
    // Days from civil (inverse of the algorithm `FlowTime` writes with).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss, nanos))
}

/// A random (version 4) UUID without a syscall per record: 128 bits of process seed from getrandom(2), mixed
/// with a counter through splitmix64, so ids are unique per process and unpredictable across processes.
fn uuid_v4() -> FlowId {
    use std::sync::OnceLock;
    static SEED: OnceLock<[u64; 2]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        let mut b = [0u8; 16];
        // SAFETY: getrandom(2) writes at most b.len() bytes into the buffer we own.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != 16 {
            // Never block startup on entropy: the time still makes ids unique per process.
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            b = (t ^ u128::from(std::process::id()) << 64).to_le_bytes();
        }
        [
            u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(b[8..].try_into().unwrap_or_default()),
        ]
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = splitmix64(seed[0] ^ n);
    let lo = splitmix64(seed[1].wrapping_add(n));
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    FlowId(b)
}

/// A flow record's id: 16 random (or hashed) bytes, written only when a sink serializes or shows it, as RFC 9562
/// version-4 text (the version and variant bits set, 8-4-4-4-12 hex) from a stack buffer, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowId(pub [u8; 16]);

impl std::fmt::Display for FlowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut b = self.0;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut out = [0u8; 36];
        let mut at = 0;
        for (i, x) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[at] = b'-';
                at += 1;
            }
            out[at] = HEX[usize::from(x >> 4)];
            out[at + 1] = HEX[usize::from(x & 0x0f)];
            at += 2;
        }
        // Only ASCII hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

impl Serialize for FlowId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowSink {
    Stdout,
    File(PathBuf),
    None,
}

impl FlowSink {
    /// `-` is stdout, anything else a file path (appended to).
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            FlowSink::Stdout
        } else {
            FlowSink::File(PathBuf::from(s))
        }
    }
}

/// Counters a status endpoint (later: Hubble `ServerStatus`) reports.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Records produced.
    pub seen: AtomicU64,
    /// Records that could not be written because the writer fell behind.
    pub lost: AtomicU64,
}

/// The flow log: bounded ring of recent records plus the JSON-lines writer.
#[derive(Debug)]
pub struct FlowLog {
    ring: Mutex<VecDeque<Arc<FlowRecord>>>,
    capacity: usize,
    pub counters: FlowCounters,
    tx: Option<mpsc::Sender<Arc<FlowRecord>>>,
    /// Follow-mode subscribers (observer `GetFlows --follow`); a slow subscriber lags, never the data path.
    live: tokio::sync::broadcast::Sender<std::sync::Arc<FlowRecord>>,
    /// Consumers that must see every record (metrics, file export); called synchronously, so they must be cheap.
    taps: std::sync::RwLock<Vec<FlowTap>>,
    /// Connections (with their policy outcome) that already had a policy-verdict event, see [`PolicyVerdicts`].
    policy_verdicts: Mutex<PolicyVerdicts>,
    /// The live policy generation, stamped on each record (`policy_revision`).
    revision: std::sync::OnceLock<RevisionSlot>,
}

/// Reads the policy generation in force now (see [`FlowLog::set_revision_source`]).
pub type RevisionSource = Box<dyn Fn() -> u64 + Send + Sync>;

struct RevisionSlot(RevisionSource);

impl std::fmt::Debug for RevisionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevisionSource")
    }
}

/// Remembers which (connection, policy outcome) pairs already produced a policy-verdict event, so Cilium's "one
/// per new connection" holds for keep-alive connections carrying many requests. Bounded: the oldest keys are
/// forgotten first (a forgotten, still-open connection gets one more event, never an unbounded set).
#[derive(Debug, Default)]
struct PolicyVerdicts {
    seen: std::collections::HashSet<u64>,
    order: VecDeque<u64>,
}

/// Connection keys [`PolicyVerdicts`] remembers (16 bytes each, twice).
const POLICY_VERDICT_KEYS: usize = 16_384;

impl PolicyVerdicts {
    /// True the first time this connection is seen with this outcome.
    fn first(&mut self, rec: &FlowRecord) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&rec.source.ip, rec.source.port, &rec.destination.ip).hash(&mut h);
        (
            rec.destination.port,
            &rec.protocol,
            rec.verdict == Verdict::Forwarded,
        )
            .hash(&mut h);
        let key = h.finish();
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > POLICY_VERDICT_KEYS
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Records that come from a policy decision (allowed, or denied by policy), as opposed to parse errors, limits or
/// upstream failures: only these get Cilium's policy-verdict event.
fn is_policy_decision(rec: &FlowRecord) -> bool {
    match rec.verdict {
        Verdict::Forwarded => true,
        Verdict::Dropped => matches!(
            rec.drop_reason,
            Some(DropReason::PolicyDenied | DropReason::PolicyDeny | DropReason::AuthRequired)
        ),
        Verdict::Error => false,
    }
}

/// Sends `item` to the live subscribers (if any) and keeps it in `ring`, the oldest leaving past `capacity`: the
/// follow stream and the history of the flow log, and of the web UI's hub.
pub fn publish<T>(
    live: &tokio::sync::broadcast::Sender<Arc<T>>,
    ring: &Mutex<VecDeque<Arc<T>>>,
    capacity: usize,
    item: Arc<T>,
) {
    if live.receiver_count() > 0 {
        let _ = live.send(item.clone());
    }
    let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() >= capacity {
        ring.pop_front();
    }
    ring.push_back(item);
}

/// Queues `msg` for a writer thread without blocking the data path (taps call this): a full or closed queue drops
/// it and counts it in `dropped`.
pub fn offer<M>(queue: &std::sync::mpsc::SyncSender<M>, msg: M, dropped: &AtomicU64) {
    if queue.try_send(msg).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A consumer of every flow record, registered with [`FlowLog::add_tap`].
pub struct FlowTap(pub Box<dyn Fn(&FlowRecord) + Send + Sync>);

impl std::fmt::Debug for FlowTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowTap")
    }
}

impl FlowLog {
    /// Creates the log; when `sink` is not `None`, spawns the writer (needs a tokio runtime).
    pub fn new(capacity: usize, sink: FlowSink) -> std::io::Result<Self> {
        let tx = match sink {
            FlowSink::None => None,
            FlowSink::Stdout => Some(spawn_writer(Box::new(std::io::stdout()))),
            FlowSink::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot open flow log {}: {e}", path.display()),
                        )
                    })?;
                Some(spawn_writer(Box::new(f)))
            }
        };
        Ok(FlowLog {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
            counters: FlowCounters::default(),
            tx,
            live: tokio::sync::broadcast::channel(LIVE_QUEUE).0,
            taps: std::sync::RwLock::new(Vec::new()),
            policy_verdicts: Mutex::new(PolicyVerdicts::default()),
            revision: std::sync::OnceLock::new(),
        })
    }

    /// Registers where the live policy generation comes from (once; later calls are ignored).
    pub fn set_revision_source(&self, source: RevisionSource) {
        let _ = self.revision.set(RevisionSlot(source));
    }

    pub fn record(&self, mut rec: FlowRecord) {
        if rec.policy_revision == 0
            && let Some(revision) = self.revision.get()
        {
            rec.policy_revision = (revision.0)();
        }
        if is_policy_decision(&rec) {
            rec.policy_verdict_event = self
                .policy_verdicts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .first(&rec);
        }
        // Shared between the ring and the writer: one allocation, no deep copy.
        let rec = Arc::new(rec);
        self.counters.seen.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.tx
            && tx.try_send(rec.clone()).is_err()
        {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
        }
        for tap in self.taps.read().unwrap_or_else(|p| p.into_inner()).iter() {
            (tap.0)(&rec);
        }
        publish(&self.live, &self.ring, self.capacity, rec);
    }

    /// Records produced from now on (follow mode). Subscribe before reading [`FlowLog::last`] to miss nothing.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<FlowRecord>> {
        self.live.subscribe()
    }

    /// Calls `tap` with every record recorded from now on.
    pub fn add_tap(&self, tap: FlowTap) {
        self.taps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(tap);
    }

    /// How many records the ring keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many records the ring holds now.
    pub fn len(&self) -> usize {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recent `n` records, oldest first.
    pub fn last(&self, n: usize) -> Vec<FlowRecord> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .map(|r| FlowRecord::clone(r))
            .collect()
    }
}

/// Records queued for the writer; at the writer's poll interval this absorbs bursts of several 100k records/s.
const QUEUE: usize = 65_536;
/// Records a follow-mode subscriber may fall behind before it skips ahead.
const LIVE_QUEUE: usize = 4096;
const WRITER_POLL: std::time::Duration = std::time::Duration::from_millis(20);

fn spawn_writer(out: Box<dyn Write + Send>) -> mpsc::Sender<Arc<FlowRecord>> {
    let (tx, mut rx) = mpsc::channel::<Arc<FlowRecord>>(QUEUE);
    // A plain thread that polls: file/stdout writes are blocking syscalls that must not stall the reactor, and
    // polling (instead of waking the thread per record) keeps futex wake-ups off the request path.
    std::thread::Builder::new()
        .name("flow-writer".into())
        .spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
            loop {
                let mut wrote = false;
                loop {
                    match rx.try_recv() {
                        Ok(rec) => {
                            let _ = serde_json::to_writer(&mut out, &*rec);
                            let _ = out.write_all(b"\n");
                            wrote = true;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
                if wrote {
                    let _ = out.flush();
                }
                std::thread::sleep(WRITER_POLL);
            }
        })
        .expect("spawning the flow-writer thread");
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u16) -> FlowRecord {
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        FlowRecord::new(
            Verdict::Forwarded,
            FlowEndpoint::new(a, 256),
            FlowEndpoint::new(a, i.into()),
            "HTTP",
        )
    }

    #[test]
    fn ring_is_bounded_and_counts_everything() {
        let log = FlowLog::new(3, FlowSink::None).unwrap();
        for i in 0..5 {
            log.record(rec(i));
        }
        let last: Vec<u32> = log
            .last(10)
            .iter()
            .map(|r| r.destination.identity)
            .collect();
        assert_eq!(last, vec![2, 3, 4]);
        assert_eq!(log.counters.seen.load(Ordering::Relaxed), 5);
        assert_eq!(log.counters.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn one_policy_verdict_per_connection_and_outcome() {
        let log = FlowLog::new(16, FlowSink::None).unwrap();
        log.set_revision_source(Box::new(|| 7));
        let conn = |port: u16, verdict: Verdict| {
            let mut r = rec(1);
            Arc::make_mut(&mut r.source).port = port;
            r.verdict = verdict;
            if verdict == Verdict::Dropped {
                r.drop_reason = Some(DropReason::PolicyDenied);
            }
            r
        };
        log.record(conn(1000, Verdict::Forwarded));
        log.record(conn(1000, Verdict::Forwarded));
        log.record(conn(1000, Verdict::Dropped));
        log.record(conn(1001, Verdict::Forwarded));
        let mut err = conn(1002, Verdict::Error);
        err.drop_reason = Some(DropReason::UpstreamError);
        log.record(err);
        let flags: Vec<bool> = log
            .last(10)
            .iter()
            .map(|r| r.policy_verdict_event)
            .collect();
        assert_eq!(flags, [true, false, true, true, false]);
        assert!(log.last(10).iter().all(|r| r.policy_revision == 7));
        let json = serde_json::to_value(&log.last(1)[0]).unwrap();
        assert!(json.get("policy_verdict_event").is_none(), "internal flag");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_795_820_000, 5);
        assert_eq!(rfc3339(t), "2026-11-27T22:53:20.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn flow_times_serialize_as_rfc3339_and_parse_back() {
        let t = FlowTime(UNIX_EPOCH + std::time::Duration::new(1_795_820_000, 5));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-11-27T22:53:20.000000005Z\""
        );
        assert_eq!(FlowTime::parse(&t.to_string()), Some(t));
        assert_eq!(t.unix(), (1_795_820_000, 5));
        assert_eq!(
            FlowTime::parse("2026-11-23T00:01:02.5Z").map(|t| t.unix()),
            Some((1_795_392_062, 500_000_000))
        );
        assert_eq!(FlowTime::parse("garbage"), None);
    }

    #[test]
    fn uuids_are_v4_shaped_and_distinct() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| uuid_v4().to_string()).collect();
        assert_eq!(ids.len(), 10_000);
        let one = ids.iter().next().unwrap();
        assert_eq!(&one[14..15], "4");
        assert!(matches!(&one[19..20], "8" | "9" | "a" | "b"), "{one}");
        let bytes: [u8; 16] = std::array::from_fn(|i| (i as u8) * 17);
        assert_eq!(
            FlowId(bytes).to_string(),
            "00112233-4455-4677-8899-aabbccddeeff",
            "8-4-4-4-12 hex, version 4, variant 10"
        );
    }

    #[test]
    fn drop_reasons_serialize_as_their_names() {
        let r = DropReason::UnsupportedProtocol;
        assert_eq!(serde_json::to_value(r).unwrap(), "UNSUPPORTED_PROTOCOL");
    }

    #[test]
    fn json_uses_contract_field_names() {
        let mut r = rec(7);
        r.drop_reason = Some(DropReason::PolicyDenied);
        r.verdict = Verdict::Dropped;
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["drop_reason"], "POLICY_DENIED");
        assert_eq!(v["destination"]["identity"], 7);
        assert_eq!(v["uuid"].as_str().unwrap().len(), 36);
    }
}
