//! The DNS listeners (UDP and TCP) and the forwarder: every query from a redirected pod is checked against the
//! source identity's DNS rules; allowed queries go to the resolver the pod asked (its original destination, from
//! the redirect maps), byte for byte; the response teaches the FQDN cache and kernel gate before it is released.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use policy_model::{Decision, DnsQuery, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::learn::{LearnPlan, Learner};
use super::message::{self, Query, Rcode, ResponseInfo};
use super::metrics::METRICS;
use super::record::{self, Outcome};
use super::{DenyResponse, DnsOptions};
use crate::flow::FlowLog;
use crate::policy_source::PolicySource;

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
    pub policy: Arc<PolicySource>,
    pub flows: Arc<FlowLog>,
    pub learner: Learner,
    pub origin: Box<dyn QueryOrigin>,
    pub opts: DnsOptions,
    /// One permit per query in flight; none left means SERVFAIL at once (overload).
    pub inflight: Arc<Semaphore>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
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
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (n, client) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("DNS UDP receive failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let msg = buf[..n].to_vec();
            let started = Instant::now();
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                // Overload: answer SERVFAIL now rather than queue without bound.
                METRICS.overload();
                if let Ok(q) = message::parse_query(&msg) {
                    let reply = message::answer_from_query(&msg, &q, Rcode::ServFail);
                    let _ = socket.send_to(&reply, client).await;
                }
                continue;
            };
            let me = self.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                let origin = me.origin.udp(client, local);
                if let Some(reply) = me
                    .handle(&msg, client, origin, Transport::Udp, started)
                    .await
                {
                    let _ = socket.send_to(&reply, client).await;
                }
                drop(permit);
            });
        }
    }

    /// Serves TCP (length-prefixed messages; pods fall back to it on TC=1) until `stop` is cancelled.
    pub async fn serve_tcp(self: Arc<Self>, listener: Arc<TcpListener>, stop: CancellationToken) {
        loop {
            let (stream, client) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("DNS TCP accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let me = self.clone();
            tokio::spawn(async move { me.tcp_connection(stream, client).await });
        }
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
                METRICS.overload();
                return;
            };
            let reply = self
                .handle(&msg, client, origin, Transport::Tcp, started)
                .await;
            drop(permit);
            let Some(reply) = reply else { return };
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            if stream.write_all(&len.to_be_bytes()).await.is_err()
                || stream.write_all(&reply).await.is_err()
            {
                return;
            }
        }
    }

    /// One query to its answer (or `None`: drop). Records the flow.
    async fn handle(
        &self,
        msg: &[u8],
        client: SocketAddr,
        origin: Option<Origin>,
        transport: Transport,
        started: Instant,
    ) -> Option<Vec<u8>> {
        let snap = self.policy.current();
        let resolver = origin.map(|o| o.resolver);
        let query = match message::parse_query(msg) {
            Ok(q) => q,
            Err(bad) => {
                METRICS.malformed();
                let reply = bad.reply(msg);
                self.flows.record(record::malformed(
                    &snap, client, resolver, &bad, reply.is_some(), started,
                ));
                return reply;
            }
        };
        let Some(Origin { resolver }) = origin else {
            // Not redirected by the datapath (no map record): there is no resolver to forward to.
            METRICS.servfail();
            self.flows
                .record(record::no_origin(&snap, client, &query, started));
            return Some(message::answer_from_query(msg, &query, Rcode::ServFail));
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
        if verdict.decision == Decision::Deny {
            METRICS.denied();
            let rcode = match self.opts.deny_response {
                DenyResponse::Refused => Rcode::Refused,
                DenyResponse::Nxdomain => Rcode::NxDomain,
            };
            let reply = message::answer_from_query(msg, &query, rcode);
            self.flows.record(record::dns_flow(
                &snap,
                client,
                resolver,
                &query,
                Outcome::Denied {
                    rcode,
                    reason: verdict.reason.to_string(),
                },
                started,
            ));
            return Some(reply);
        }
        METRICS.allowed();
        let forwarded = match transport {
            Transport::Udp => self.forward_udp(resolver, msg, &query).await,
            Transport::Tcp => self.forward_tcp(resolver, msg, &query).await,
        };
        let (mut resp, info) = match forwarded {
            Ok(x) => x,
            Err(why) => {
                METRICS.servfail();
                self.flows.record(record::dns_flow(
                    &snap,
                    client,
                    resolver,
                    &query,
                    Outcome::UpstreamFailed { why },
                    started,
                ));
                return Some(message::answer_from_query(msg, &query, Rcode::ServFail));
            }
        };
        // Learn before release: the client may connect the moment it has the answer.
        if let Some(plan) = LearnPlan::new(
            &snap.engine,
            flow.src_identity,
            &info,
            self.learner.min_ttl,
        ) {
            let hold = Instant::now();
            let learned = self.learner.apply(
                client.ip(),
                flow.src_identity.0,
                &plan,
                SystemTime::now(),
            );
            METRICS.hold(hold.elapsed());
            if let Err(e) = learned {
                // Releasing an answer the kernel gate does not know would make the client's connect fail: fail
                // the query instead, so the client retries.
                tracing::warn!(name = %query.name, "FQDN learning failed, answering SERVFAIL: {e}");
                METRICS.servfail();
                self.flows.record(record::dns_flow(
                    &snap,
                    client,
                    resolver,
                    &query,
                    Outcome::UpstreamFailed {
                        why: format!("FQDN learning failed: {e}"),
                    },
                    started,
                ));
                return Some(message::answer_from_query(msg, &query, Rcode::ServFail));
            }
        }
        message::restore_case(&mut resp, msg, &query);
        self.flows.record(record::dns_flow(
            &snap,
            client,
            resolver,
            &query,
            Outcome::Answered {
                info,
                reason: verdict.reason.to_string(),
            },
            started,
        ));
        Some(resp)
    }

    /// Sends the client's bytes to the resolver from a fresh marked socket (random source port per query, like a
    /// stub resolver) and waits for the matching response; unrelated datagrams are ignored.
    async fn forward_udp(
        &self,
        resolver: SocketAddr,
        msg: &[u8],
        query: &Query,
    ) -> Result<(Vec<u8>, ResponseInfo), String> {
        let socket = marked_udp(resolver, self.opts.mark).map_err(|e| e.to_string())?;
        socket
            .send(msg)
            .await
            .map_err(|e| format!("sending to {resolver}: {e}"))?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let deadline = tokio::time::Instant::now() + self.opts.upstream_timeout;
        loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
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
                Ok(info) => return Ok((buf[..n].to_vec(), info)),
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
            let len = u16::try_from(msg.len()).map_err(|_| "query too long".to_string())?;
            let mut out = Vec::with_capacity(msg.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(msg);
            s.write_all(&out)
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

/// A UDP socket connected to `dst`, with `SO_MARK` so the redirect layer never loops it back.
fn marked_udp(dst: SocketAddr, mark: u32) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM.nonblocking(), None)?;
    if mark != 0 {
        socket.set_mark(mark).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("setting SO_MARK {mark:#x} on the DNS upstream socket needs CAP_NET_ADMIN: {e}"),
            )
        })?;
    }
    let any: SocketAddr = match dst.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    socket.bind(&any.into())?;
    socket.connect(&dst.into())?;
    UdpSocket::from_std(socket.into())
}
