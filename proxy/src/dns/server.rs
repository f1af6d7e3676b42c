//! The DNS listeners (UDP and TCP) and the forwarder: every query from a redirected pod is checked against the
//! source identity's DNS rules; allowed queries go to the resolver the pod asked (its original destination, from
//! the redirect maps), byte for byte; the response teaches the FQDN cache and kernel gate before it is released.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use policy_model::{Decision, DnsQuery, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::batch::RecvBatch;
use super::learn::{LearnPlan, Learner};
use super::metrics::DnsMetrics;
use super::options::{DenyResponse, DnsOptions};
use super::record::{self, Outcome};
use crate::accept::next_connection;
use crate::flow::{FlowLog, FlowRecord};
use crate::policy_source::PolicyStore;
use tollgate_dns_codec::message::{self, Query, Rcode, ResponseInfo};

/// Largest DNS message (TCP length prefix limit; also the UDP receive buffer).
const MAX_MESSAGE: usize = 65_535;

/// Where a redirected query was going and who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The resolver the pod addressed.
    pub resolver: SocketAddr,
}

/// Recovers a query's original resolver (the eBPF maps; or a fixed upstream without eBPF).
pub trait QueryOrigin: Send + Sync {
    fn udp(&self, client: SocketAddr, local: SocketAddr) -> Option<Origin>;
    fn tcp(&self, stream: &TcpStream) -> Option<Origin>;
}

/// No redirect layer: every query goes to one configured resolver (`--dns-upstream`).
#[derive(Debug, Clone, Copy)]
pub struct FixedUpstream(pub SocketAddr);

impl QueryOrigin for FixedUpstream {
    fn udp(&self, _: SocketAddr, _: SocketAddr) -> Option<Origin> {
        Some(Origin { resolver: self.0 })
    }
    fn tcp(&self, _: &TcpStream) -> Option<Origin> {
        Some(Origin { resolver: self.0 })
    }
}

/// Shared state of the DNS listeners.
pub struct DnsServer {
    pub policy: Arc<PolicyStore>,
    pub flows: Arc<FlowLog>,
    pub learner: Learner,
    pub origin: Box<dyn QueryOrigin>,
    pub opts: DnsOptions,
    /// One permit per query in flight; none left means SERVFAIL at once (overload).
    pub inflight: Arc<Semaphore>,
    /// One permit per open DNS-over-TCP client connection (`--dns-max-tcp-connections`).
    pub tcp_connections: Arc<Semaphore>,
    /// Idle upstream UDP sockets per resolver, reused one query at a time.
    pub sockets: SocketPool,
    /// This proxy's counters and hold histogram (rendered by the admin server).
    pub metrics: Arc<DnsMetrics>,
}

/// Connected upstream UDP sockets kept for reuse: creating, marking, binding and registering a socket per query
/// was the largest kernel cost in the benchmark profile. A socket carries one query at a time (so the client's
/// transaction id goes upstream unchanged); it returns to the pool only after a clean exchange (a timed-out query
/// may still be answered late, so its socket is closed). Each socket has its own random source port.
#[derive(Debug, Default)]
pub struct SocketPool {
    idle: std::sync::Mutex<std::collections::HashMap<SocketAddr, Vec<Upstream>>>,
}

/// A pooled socket and the buffer its answers are read into. The buffer goes with the socket, so a query reuses
/// memory an earlier one zeroed instead of allocating and zeroing a fresh one (up to the client's UDP payload
/// size, 4 KiB and more for EDNS clients) only to keep the hundred bytes of a typical answer.
#[derive(Debug)]
struct Upstream {
    socket: UdpSocket,
    buf: Vec<u8>,
}

/// Idle sockets kept per resolver.
const POOL_PER_RESOLVER: usize = 256;

/// The largest answer buffer a pooled socket keeps (EDNS0's common 4096-byte payload, plus the byte that detects
/// more): a client announcing 64 KiB gets a buffer for its query alone, so the pool holds at most 1 MiB of them
/// per resolver whatever clients announce.
const KEPT_BUFFER: usize = 4097;

impl SocketPool {
    fn take(&self, resolver: SocketAddr, mark: u32) -> std::io::Result<Upstream> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&resolver)
            .and_then(Vec::pop);
        match pooled {
            Some(u) => Ok(u),
            None => Ok(Upstream {
                socket: marked_udp(resolver, mark)?,
                buf: Vec::new(),
            }),
        }
    }

    fn give_back(&self, resolver: SocketAddr, mut upstream: Upstream) {
        if upstream.buf.len() > KEPT_BUFFER {
            upstream.buf = Vec::new();
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(resolver).or_default();
        if list.len() < POOL_PER_RESOLVER {
            list.push(upstream);
        }
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// A handled query: the answer to send (`None`: drop) and its flow record, built after the answer is sent so the
/// client does not wait for it (every query still gets its record).
struct Handled {
    reply: Option<Vec<u8>>,
    record: Box<dyn FnOnce() -> FlowRecord + Send>,
}

impl Handled {
    fn new(reply: Option<Vec<u8>>, record: impl FnOnce() -> FlowRecord + Send + 'static) -> Self {
        Handled {
            reply,
            record: Box::new(record),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl DnsServer {
    /// Serves UDP until `stop` is cancelled (the socket stays open for a successor that took it over).
    pub async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>, stop: CancellationToken) {
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("DNS UDP listener has no local address: {e}");
                return;
            }
        };
        let mut batch = RecvBatch::new(MAX_MESSAGE);
        // One wait for the stop for the whole loop (a fresh one per batch registers and removes a waiter each time).
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let n = tokio::select! {
                biased;
                _ = &mut stopped => break,
                r = batch.recv(&socket) => match r {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!("DNS UDP receive failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let started = Instant::now();
            for (msg, client) in (0..n).filter_map(|i| batch.datagram(i)) {
                self.clone()
                    .spawn_udp_query(&socket, local, msg.to_vec(), client, started);
            }
        }
    }

    /// Answers one UDP query on its own task (SERVFAIL at once when `--dns-max-inflight` queries are in flight).
    fn spawn_udp_query(
        self: Arc<Self>,
        socket: &Arc<UdpSocket>,
        local: SocketAddr,
        msg: Vec<u8>,
        client: SocketAddr,
        started: Instant,
    ) {
        let socket = socket.clone();
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            // Overload: answer SERVFAIL now rather than queue without bound.
            self.metrics.overload();
            if let Ok(q) = message::parse_query(&msg) {
                let reply = message::answer_from_query(&msg, &q, Rcode::ServFail);
                let _ = socket.try_send_to(&reply, client);
            }
            return;
        };
        tokio::spawn(async move {
            let origin = self.origin.udp(client, local);
            let handled = self
                .handle(&msg, client, origin, Transport::Udp, started)
                .await;
            if let Some(reply) = handled.reply {
                let _ = socket.send_to(&reply, client).await;
            }
            self.flows.record((handled.record)());
            drop(permit);
        });
    }

    /// Serves TCP (length-prefixed messages; pods fall back to it on TC=1) until `stop` is cancelled.
    pub async fn serve_tcp(self: Arc<Self>, listener: Arc<TcpListener>, stop: CancellationToken) {
        let pause = Duration::from_millis(50);
        let failed = |e: &std::io::Error| tracing::warn!("DNS TCP accept failed: {e}");
        while let Some((stream, client)) = next_connection(&listener, &stop, pause, failed).await {
            let Ok(permit) = self.tcp_connections.clone().try_acquire_owned() else {
                self.refuse_tcp(stream, client);
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.tcp_connection(stream, client).await;
                drop(permit);
            });
        }
    }

    /// Over the TCP connection limit: closed with RST (a clean close would read as an empty answer) and recorded.
    fn refuse_tcp(&self, stream: TcpStream, client: SocketAddr) {
        self.metrics.overload();
        let resolver = self.origin.tcp(&stream).map(|o| o.resolver);
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
        let limit = self.opts.max_tcp_connections;
        tracing::debug!(%client, limit, "DNS TCP connection refused: connection limit reached");
        self.flows.record(record::tcp_connection_limit(
            &self.policy.current(),
            client,
            resolver,
            limit,
        ));
    }

    async fn tcp_connection(self: Arc<Self>, mut stream: TcpStream, client: SocketAddr) {
        let origin = self.origin.tcp(&stream);
        let idle = self.opts.upstream_timeout.max(Duration::from_secs(10));
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
            match tokio::time::timeout(idle, stream.read_exact(&mut msg)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let started = Instant::now();
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                self.metrics.overload();
                return;
            };
            let handled = self
                .handle(&msg, client, origin, Transport::Tcp, started)
                .await;
            drop(permit);
            let sent = match &handled.reply {
                Some(reply) => write_framed(&mut stream, reply).await.is_ok(),
                None => false,
            };
            self.flows.record((handled.record)());
            if !sent {
                return;
            }
        }
    }

    /// One query to its answer (or `None`: drop) and its flow record, to be built once the answer is on its way.
    async fn handle(
        &self,
        msg: &[u8],
        client: SocketAddr,
        origin: Option<Origin>,
        transport: Transport,
        started: Instant,
    ) -> Handled {
        let snap = self.policy.current();
        let resolver = origin.map(|o| o.resolver);
        let query = match message::parse_query(msg) {
            Ok(q) => q,
            Err(bad) => {
                self.metrics.malformed();
                let reply = bad.reply(msg);
                let answered = reply.is_some();
                return Handled::new(reply, move || {
                    record::malformed(&snap, client, resolver, &bad, answered, started)
                });
            }
        };
        let Some(Origin { resolver }) = origin else {
            // Not redirected by the datapath (no map record): there is no resolver to forward to.
            self.metrics.servfail();
            let reply = message::answer_from_query(msg, &query, Rcode::ServFail);
            return Handled::new(Some(reply), move || {
                record::no_origin(&snap, client, &query, started)
            });
        };
        let protocol = match transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let flow = snap
            .engine
            .flow(client.ip(), resolver.ip(), resolver.port(), protocol);
        let verdict = snap.engine.dns(
            &flow,
            &DnsQuery {
                name: &query.name,
                qtype: query.qtype,
            },
        );
        let for_record = snap.clone();
        let record = move |query: Query, outcome: Outcome| {
            move || record::dns_flow(&for_record, client, resolver, &query, outcome, started)
        };
        if verdict.decision == Decision::Deny {
            self.metrics.denied();
            let rcode = match self.opts.deny_response {
                DenyResponse::Refused => Rcode::Refused,
                DenyResponse::Nxdomain => Rcode::NxDomain,
            };
            let reply = message::answer_from_query(msg, &query, rcode);
            let reason = verdict.reason.to_string();
            return Handled::new(
                Some(reply),
                record(query, Outcome::Denied { rcode, reason }),
            );
        }
        self.metrics.allowed();
        let forwarded = match transport {
            Transport::Udp => self.forward_udp(resolver, msg, &query).await,
            Transport::Tcp => self.forward_tcp(resolver, msg, &query).await,
        };
        let answered = forwarded.and_then(|(resp, info)| {
            self.learn_before_release(&snap.engine, client, flow.src_identity, &info, &query.name)
                .map(|()| (resp, info))
        });
        match answered {
            Ok((mut resp, info)) => {
                message::restore_case(&mut resp, msg, &query);
                let reason = verdict.reason.to_string();
                Handled::new(
                    Some(resp),
                    record(query, Outcome::Answered { info, reason }),
                )
            }
            Err(why) => {
                self.metrics.servfail();
                let reply = message::answer_from_query(msg, &query, Rcode::ServFail);
                Handled::new(Some(reply), record(query, Outcome::UpstreamFailed { why }))
            }
        }
    }

    /// Learns what an allowed answer teaches BEFORE it is released: the client may connect the moment it has the
    /// answer. `Err` names why learning failed; the query must then fail (SERVFAIL, the client retries), since an
    /// answer the kernel gate does not know would make the client's connect fail.
    fn learn_before_release(
        &self,
        engine: &policy_model::PolicyEngine,
        client: SocketAddr,
        source: policy_model::Identity,
        info: &ResponseInfo,
        name: &str,
    ) -> Result<(), String> {
        let Some(plan) = LearnPlan::new(engine, source, info, self.learner.min_ttl) else {
            return Ok(());
        };
        let hold = Instant::now();
        let learned = self
            .learner
            .apply(client.ip(), source.0, &plan, SystemTime::now());
        self.metrics.hold(hold.elapsed());
        learned.map_err(|e| {
            tracing::warn!(%name, "FQDN learning failed, answering SERVFAIL: {e}");
            format!("FQDN learning failed: {e}")
        })
    }

    /// Sends the client's bytes to the resolver from a marked socket of the pool and waits for the matching
    /// response; unrelated datagrams (late answers to an earlier query of the socket, spoofs) are ignored.
    async fn forward_udp(
        &self,
        resolver: SocketAddr,
        msg: &[u8],
        query: &Query,
    ) -> Result<(Vec<u8>, ResponseInfo), String> {
        let mut upstream = self
            .sockets
            .take(resolver, self.opts.mark)
            .map_err(|e| e.to_string())?;
        let socket = &upstream.socket;
        socket
            .send(msg)
            .await
            .map_err(|e| format!("sending to {resolver}: {e}"))?;
        // Room for what the client accepts plus one byte to detect more: the resolver sees the client's own EDNS0
        // size, so a longer datagram is a resolver fault. The socket's own buffer, grown (and zeroed) only past the
        // largest size an earlier query of this socket needed.
        let cap = usize::from(query.udp_payload) + 1;
        if upstream.buf.len() < cap {
            upstream.buf.resize(cap, 0);
        }
        let buf = &mut upstream.buf[..cap];
        let deadline = tokio::time::Instant::now() + self.opts.upstream_timeout;
        loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(buf)).await {
                Ok(Ok(n)) if n == cap => {
                    return Err(format!(
                        "{resolver} sent a response larger than the client's UDP payload size {}",
                        query.udp_payload
                    ));
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("receiving from {resolver}: {e}")),
                Err(_) => {
                    return Err(format!(
                        "{resolver} did not answer within {:?}",
                        self.opts.upstream_timeout
                    ));
                }
            };
            match message::inspect_response(query, &buf[..n]) {
                Ok(info) => {
                    let answer = buf[..n].to_vec();
                    // The answer is read: mark the socket not readable without the recv() that would find it
                    // empty (the next datagram marks it again), sparing that failing syscall on its next query.
                    let _ = socket.try_io(Interest::READABLE, || {
                        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                    });
                    self.sockets.give_back(resolver, upstream);
                    return Ok((answer, info));
                }
                Err(e) => tracing::debug!(%resolver, "ignoring a datagram: {e}"),
            }
        }
    }

    /// TCP to the resolver for a query that came over TCP (one connection per query).
    async fn forward_tcp(
        &self,
        resolver: SocketAddr,
        msg: &[u8],
        query: &Query,
    ) -> Result<(Vec<u8>, ResponseInfo), String> {
        let timeout = self.opts.upstream_timeout;
        let exchange = async {
            let mut s = crate::upstream::connect_marked(resolver, self.opts.mark, timeout)
                .await
                .map_err(|e| e.to_string())?;
            write_framed(&mut s, msg)
                .await
                .map_err(|e| format!("sending to {resolver}: {e}"))?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)
                .await
                .map_err(|e| format!("reading from {resolver}: {e}"))?;
            let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut resp)
                .await
                .map_err(|e| format!("reading from {resolver}: {e}"))?;
            let info = message::inspect_response(query, &resp).map_err(|e| e.to_string())?;
            Ok((resp, info))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("{resolver} did not answer within {timeout:?}")),
        }
    }
}

/// Writes one length-prefixed DNS message (one write: prefix and message in the same segment).
async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a {} byte DNS message does not fit a TCP length prefix",
                msg.len()
            ),
        )
    })?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

/// A UDP socket connected to `dst`, with `SO_MARK` so the redirect layer never loops it back.
fn marked_udp(dst: SocketAddr, mark: u32) -> std::io::Result<UdpSocket> {
    let socket =
        crate::upstream::marked_socket(dst, socket2::Type::DGRAM, None, mark, "DNS upstream")?;
    let any: SocketAddr = match dst.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    socket.bind(&any.into())?;
    socket.connect(&dst.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    //! The listeners and forwarder over loopback: a fake resolver (hickory-built answers) on 127.0.0.53, the
    //! "pod" on 127.0.0.10, the proxy on 127.0.0.1. No root needed.
    use super::*;
    use crate::dns::learn::tests::Recorder;
    use crate::dns::learn::{FqdnGate, Learner};
    use crate::flow::{FlowRecord, FlowSink, Verdict};
    use crate::policy_source::PolicyFiles;
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;
    use tollgate_dns_codec::testutil::{a, cname, query, response};

    const POD: &str = "127.0.0.10";

    /// Answers like a recursive resolver, in lower case (so the proxy must restore 0x20 casing): `big.test` is
    /// truncated over UDP and complete over TCP; `slow.test` never answers; `alias.test` is a CNAME chain.
    fn answer(msg: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
        let m = Message::from_vec(msg).ok()?;
        let qname = m.queries[0].name().to_ascii().to_ascii_lowercase();
        let answers = match qname.as_str() {
            "slow.test." => return None,
            "api.stripe.com." => vec![a("api.stripe.com", 5, "203.0.113.10")],
            "alias.test." => vec![
                cname("alias.test", 30, "bucket.s3.amazonaws.com"),
                a("bucket.s3.amazonaws.com", 20, "198.51.100.20"),
            ],
            "big.test." if !over_tcp => {
                return Some(response(
                    msg,
                    Some(&qname),
                    vec![],
                    ResponseCode::NoError,
                    true,
                ));
            }
            "big.test." => (0..40)
                .map(|i| a("big.test", 60, &format!("192.0.2.{i}")))
                .collect(),
            _ => {
                return Some(response(
                    msg,
                    Some(&qname),
                    vec![],
                    ResponseCode::NXDomain,
                    false,
                ));
            }
        };
        Some(response(
            msg,
            Some(&qname),
            answers,
            ResponseCode::NoError,
            false,
        ))
    }

    async fn fake_resolver() -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.53:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(r) = answer(&buf[..n], false) {
                    let _ = udp.send_to(&r, from).await;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    s.read_exact(&mut len).await.ok()?;
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    s.read_exact(&mut q).await.ok()?;
                    let r = answer(&q, true)?;
                    s.write_all(&(r.len() as u16).to_be_bytes()).await.ok()?;
                    s.write_all(&r).await.ok()
                });
            }
        });
        addr
    }

    struct Harness {
        _dir: tempfile::TempDir,
        server: Arc<DnsServer>,
        udp: SocketAddr,
        tcp: SocketAddr,
        gate: Arc<Recorder>,
        stop: CancellationToken,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn harness(deny: DenyResponse, inflight: usize) -> Harness {
        harness_with_tcp_limit(deny, inflight, 1024).await
    }

    async fn harness_with_tcp_limit(deny: DenyResponse, inflight: usize, tcp: usize) -> Harness {
        let resolver = fake_resolver().await;
        let dir = tempfile::tempdir().unwrap();
        let policy = format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: egress-fqdn, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: worker}}}}
  egress:
    - toEndpoints: [{{matchLabels: {{"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}}}]
      toPorts:
        - ports: [{{port: "{port}", protocol: ANY}}]
          rules:
            dns:
              - matchName: api.stripe.com
              - matchPattern: "*.test"
              - matchPattern: "*.s3.amazonaws.com"
    - toFQDNs: [{{matchName: api.stripe.com}}, {{matchPattern: "*.s3.amazonaws.com"}}]
      toPorts:
        - ports: [{{port: "443", protocol: TCP}}]
"#,
            port = resolver.port()
        );
        let endpoints = format!(
            "endpoints:\n  - {{name: worker, namespace: prod, labels: {{app: worker}}, ip: {POD}}}\n  \
             - {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}, ip: {}}}\n",
            resolver.ip()
        );
        std::fs::write(dir.path().join("p.yaml"), policy).unwrap();
        std::fs::write(dir.path().join("e.yaml"), endpoints).unwrap();
        let policy = PolicyFiles::load(&dir.path().join("p.yaml"), &dir.path().join("e.yaml"))
            .unwrap()
            .store()
            .clone();
        let gate = Arc::new(Recorder::default());
        let server = Arc::new(DnsServer {
            learner: Learner {
                cache: policy.current().fqdn.clone(),
                gate: Some(gate.clone() as Arc<dyn FqdnGate>),
                min_ttl: Duration::ZERO,
            },
            policy,
            flows: Arc::new(FlowLog::new(256, FlowSink::None).unwrap()),
            origin: Box::new(FixedUpstream(resolver)),
            opts: DnsOptions {
                deny_response: deny,
                upstream_timeout: Duration::from_millis(500),
                mark: 0,
                max_tcp_connections: tcp,
            },
            inflight: Arc::new(Semaphore::new(inflight)),
            tcp_connections: Arc::new(Semaphore::new(tcp)),
            sockets: SocketPool::default(),
            metrics: Arc::default(),
        });
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let tcp = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let (ua, ta) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(server.clone().serve_udp(udp, stop.clone()));
        tokio::spawn(server.clone().serve_tcp(tcp, stop.clone()));
        Harness {
            _dir: dir,
            server,
            udp: ua,
            tcp: ta,
            gate,
            stop,
        }
    }

    async fn ask_udp(to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
        let c = UdpSocket::bind(format!("{POD}:0")).await.unwrap();
        c.send_to(msg, to).await.unwrap();
        let mut buf = vec![0u8; 65535];
        match tokio::time::timeout(Duration::from_secs(10), c.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    async fn ask_tcp(to: SocketAddr, msg: &[u8]) -> Vec<u8> {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{POD}:0").parse().unwrap()).unwrap();
        let mut s = sock.connect(to).await.unwrap();
        s.write_all(&(msg.len() as u16).to_be_bytes())
            .await
            .unwrap();
        s.write_all(msg).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut r).await.unwrap();
        r
    }

    /// The latest flow record, waiting (bounded) for the first one: records are written after the answer is sent.
    async fn last_flow(h: &Harness) -> FlowRecord {
        for _ in 0..500 {
            if let Some(f) = h.server.flows.last(1).pop() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no flow record within 5 s")
    }

    #[tokio::test]
    async fn allowed_query_is_forwarded_learned_before_release_and_recorded() {
        let h = harness(DenyResponse::Refused, 64).await;
        let q = query(0x5151, "aPi.StRiPe.CoM", RecordType::A, true);
        let r = ask_udp(h.udp, &q).await.expect("answer");
        // Learned by the time the client has the answer.
        assert_eq!(h.gate.allowed.lock().unwrap().len(), 1);
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.metadata.id, 0x5151, "transaction id preserved");
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "aPi.StRiPe.CoM.",
            "client casing back"
        );
        assert_eq!(m.answers.len(), 1);
        assert!(m.edns.is_some(), "EDNS0 kept end to end");
        let f = last_flow(&h).await;
        assert_eq!(f.verdict, Verdict::Forwarded);
        assert_eq!(f.protocol, "DNS");
        let dns = f.dns.unwrap();
        assert_eq!(dns.query, "aPi.StRiPe.CoM.");
        assert_eq!(
            (dns.qtypes, dns.rcode, dns.ttl),
            (vec!["A".to_string()], 0, 5)
        );
        assert_eq!(dns.ips, ["203.0.113.10"]);
        assert!(f.policy.contains("allowed by"), "{}", f.policy);
        assert_eq!(f.source.pod.as_deref(), Some("worker"));
        let ip = "203.0.113.10".parse().unwrap();
        assert_eq!(
            h.server.learner.cache.read().names_for_ip(ip),
            ["api.stripe.com"]
        );
    }

    #[tokio::test]
    async fn cname_chains_are_learned_under_every_name() {
        let h = harness(DenyResponse::Refused, 64).await;
        let r = ask_udp(h.udp, &query(1, "alias.test", RecordType::A, false))
            .await
            .unwrap();
        assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 2);
        let ip = "198.51.100.20".parse().unwrap();
        assert_eq!(
            h.server.learner.cache.read().names_for_ip(ip),
            ["alias.test", "bucket.s3.amazonaws.com"]
        );
        let allowed = h.gate.allowed.lock().unwrap().clone();
        assert_eq!(allowed.len(), 1, "selected via the CNAME target");
        assert_eq!(
            allowed[0].2,
            Duration::from_secs(20),
            "smallest TTL of the chain"
        );
        assert_eq!(
            last_flow(&h).await.dns.unwrap().cnames,
            ["bucket.s3.amazonaws.com."]
        );
    }

    #[tokio::test]
    async fn denied_queries_get_refused_or_nxdomain_and_a_dropped_record() {
        for (deny, want) in [
            (DenyResponse::Refused, ResponseCode::Refused),
            (DenyResponse::Nxdomain, ResponseCode::NXDomain),
        ] {
            let h = harness(deny, 64).await;
            let q = query(0x0bad, "Evil.Example.org", RecordType::A, true);
            let r = ask_udp(h.udp, &q).await.expect("answer");
            let m = Message::from_vec(&r).unwrap();
            assert_eq!(m.metadata.response_code, want);
            assert_eq!(m.metadata.id, 0x0bad);
            assert_eq!(m.queries[0].name().to_ascii(), "Evil.Example.org.");
            assert!(h.gate.allowed.lock().unwrap().is_empty());
            let f = last_flow(&h).await;
            assert_eq!(f.verdict, Verdict::Dropped);
            assert_eq!(f.dns.unwrap().rcode, u16::from(want));
            assert!(f.policy.contains("denied"), "{}", f.policy);
        }
    }

    #[tokio::test]
    async fn upstream_timeout_gives_servfail() {
        let h = harness(DenyResponse::Refused, 64).await;
        let r = ask_udp(h.udp, &query(3, "slow.test", RecordType::A, false))
            .await
            .expect("SERVFAIL, not silence");
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let f = last_flow(&h).await;
        assert_eq!(f.verdict, Verdict::Error);
        assert!(f.policy.contains("did not answer"), "{}", f.policy);
    }

    /// A pooled socket keeps its answer buffer for the next query, but never one grown past [`KEPT_BUFFER`] by a
    /// client announcing a huge UDP payload: the pool's memory stays bounded whatever clients announce.
    #[tokio::test]
    async fn pooled_sockets_keep_small_answer_buffers_only() {
        let pool = SocketPool::default();
        let resolver: SocketAddr = "127.0.0.1:53".parse().unwrap();
        for (size, kept) in [(1233, 1233), (KEPT_BUFFER, KEPT_BUFFER), (65_536, 0)] {
            let mut u = pool.take(resolver, 0).unwrap();
            u.buf = vec![0; size];
            pool.give_back(resolver, u);
            assert_eq!(
                pool.take(resolver, 0).unwrap().buf.len(),
                kept,
                "buffer of {size}"
            );
        }
    }

    #[tokio::test]
    async fn overload_gives_servfail_at_once() {
        let h = harness(DenyResponse::Refused, 1).await;
        // The one permit is held by a query the resolver never answers.
        let to = h.udp;
        let slow =
            tokio::spawn(
                async move { ask_udp(to, &query(4, "slow.test", RecordType::A, false)).await },
            );
        let mut got = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let r = ask_udp(h.udp, &query(5, "api.stripe.com", RecordType::A, false))
                .await
                .unwrap();
            if Message::from_vec(&r).unwrap().metadata.response_code == ResponseCode::ServFail {
                got = Some(r);
                break;
            }
        }
        assert!(
            got.is_some(),
            "a query beyond --dns-max-inflight gets SERVFAIL"
        );
        let _ = slow.await;
    }

    #[tokio::test]
    async fn truncated_udp_answer_then_tcp_fallback() {
        let h = harness(DenyResponse::Refused, 64).await;
        let q = query(6, "BIG.test", RecordType::A, true);
        let r = ask_udp(h.udp, &q).await.unwrap();
        let m = Message::from_vec(&r).unwrap();
        assert!(m.metadata.truncation, "TC passed through");
        let r = ask_tcp(h.tcp, &q).await;
        let m = Message::from_vec(&r).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 40);
        assert_eq!(m.queries[0].name().to_ascii(), "BIG.test.");
        // Denied over TCP too.
        let r = ask_tcp(h.tcp, &query(7, "evil.example.org", RecordType::A, false)).await;
        assert_eq!(
            Message::from_vec(&r).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
    }

    /// Beyond `--dns-max-tcp-connections` open TCP connections a new one is reset at once and recorded; closing
    /// one frees its place.
    #[tokio::test]
    async fn tcp_connections_beyond_the_limit_are_reset_and_recorded() {
        let h = harness_with_tcp_limit(DenyResponse::Refused, 64, 2).await;
        let connect = || async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{POD}:0").parse().unwrap()).unwrap();
            sock.connect(h.tcp).await.unwrap()
        };
        let (first, _second) = (connect().await, connect().await);
        // Both are accepted (and hold their places) before the third arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = connect().await;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the connection over the limit is closed at once");
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "reset, not a clean close: {read:?}"
        );
        let f = last_flow(&h).await;
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.drop_reason, Some(crate::flow::DropReason::LimitExceeded));
        assert!(
            f.policy.contains("--dns-max-tcp-connections"),
            "{}",
            f.policy
        );
        drop(first);
        // The closed connection's place is free again once the server has seen it close.
        let q = query(9, "a.test", RecordType::A, false);
        let mut answered = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut s = connect().await;
            s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&q).await.unwrap();
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).await.is_ok() {
                answered = true;
                break;
            }
        }
        assert!(answered, "a place freed by a closed connection is reused");
    }

    #[tokio::test]
    async fn malformed_queries_get_formerr_or_are_dropped_with_a_record() {
        let h = harness(DenyResponse::Refused, 64).await;
        let good = query(0x7777, "a.test", RecordType::A, false);
        let mut lp = good[..12].to_vec();
        lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let r = ask_udp(h.udp, &lp).await.expect("FORMERR");
        assert_eq!((r[0], r[1], r[3] & 0x0f), (0x77, 0x77, 1));
        let f = last_flow(&h).await;
        assert_eq!(f.verdict, Verdict::Dropped);
        assert!(f.policy.contains("FORMERR"), "{}", f.policy);
        // Too short to answer: dropped, but recorded.
        let before = h.server.flows.len();
        let c = UdpSocket::bind(format!("{POD}:0")).await.unwrap();
        c.send_to(&[1, 2, 3], h.udp).await.unwrap();
        let mut waited = 0;
        while h.server.flows.len() == before && waited < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert!(last_flow(&h).await.policy.contains("dropped"));
    }
}
