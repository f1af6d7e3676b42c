//! One Kafka connection: requests are read frame by frame, decided (`policy::decide`), and either forwarded
//! byte for byte or answered locally; responses go back in request order.
//!
//! Two halves run side by side. The request half reads a frame, decides, forwards it (or builds the local
//! response) and queues what the client is owed next: "the broker's next response" or "these local bytes". The
//! response half walks that queue in order, so a locally answered request between two forwarded ones is answered
//! exactly between their responses, as Kafka clients require (they match responses by order and check the
//! correlation id). Broker responses are streamed through without being decoded, except Metadata responses,
//! which are filtered to the topics the client may see.
//!
//! Garbage, oversized frames, unknown API keys or versions close this connection with a flow record naming the
//! reason; other connections are not affected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn_error::{ConnError, head_denied};
use super::frame_read::{Frame, FrameRules, SMALL_RESPONSE, read_request, read_response_body};
use super::policy::{self, KafkaDecision};
use super::request::{self, KafkaRequest, RequestHead};
use super::response;
use crate::activity::{Activity, Tracked};
use crate::decision::Downstream;
use crate::flow::{
    DropReason, FlowEndpoint, FlowRecord, KafkaInfo, L7Info, TrafficDirection, Verdict,
};
use crate::inputs::{ClientStream, Proxy, endpoints};
use crate::upstream::Dial;

/// Requests a client may have in flight on one connection before the proxy stops reading more (librdkafka's
/// default `max.in.flight` is 1,000,000 but it sends far fewer; Java's is 5).
const MAX_IN_FLIGHT: usize = 1024;

/// What the client is owed next, in request order.
#[derive(Debug)]
enum Owed {
    /// The broker's next response.
    Broker {
        meta: Meta,
        /// Set for Metadata: the response is filtered (`true` when the request named topics).
        metadata_named: Option<bool>,
        req: Option<Box<KafkaRequest>>,
    },
    /// A response the proxy built.
    Local {
        meta: Meta,
        frame: Bytes,
        drop: DropReason,
    },
}

/// What a flow record says about one request.
#[derive(Debug)]
struct Meta {
    info: KafkaInfo,
    reason: String,
    direction: Option<TrafficDirection>,
    start: Instant,
}

fn kafka_info(req: &KafkaRequest, topics: Vec<String>) -> KafkaInfo {
    KafkaInfo {
        api_key: format!("{:?}", req.api_key),
        api_version: req.api_version,
        correlation_id: req.correlation_id,
        client_id: req.client_id.clone(),
        topics,
        error_code: 0,
    }
}

fn kafka_l7(info: KafkaInfo) -> L7Info {
    L7Info {
        kafka: Some(info),
        ..Default::default()
    }
}

/// What every part of one Kafka connection needs: the daemon's inputs, who talks to whom, and where records go.
struct KafkaConn<'a> {
    proxy: &'a Proxy,
    down: &'a Downstream,
    dst: SocketAddr,
    src_ep: FlowEndpoint,
    dst_ep: FlowEndpoint,
}

/// Handles one connection to a port with Kafka rules until either side closes or the daemon shuts down.
pub async fn serve<S: ClientStream>(
    proxy: Arc<Proxy>,
    stream: S,
    down: Downstream,
    dst: SocketAddr,
    dial: Dial,
    shutdown: CancellationToken,
) {
    let (src_ep, dst_ep) = endpoints(&proxy, &down, dst);
    let conn = KafkaConn {
        proxy: &proxy,
        down: &down,
        dst,
        src_ep,
        dst_ep,
    };
    let upstream = match proxy.upstream.connect(dst, &dial).await {
        Ok(u) => u,
        Err(e) => {
            conn.record_conn_error(&ConnError::Upstream(e));
            stream.refuse();
            return;
        }
    };
    let activity = Activity::new();
    let (mut down_r, mut down_w) = tokio::io::split(Tracked::new(stream, activity.clone()));
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let head_allowed = |head: &RequestHead, size: usize| conn.head_allowed(head, size);
    let rules = FrameRules {
        limit: proxy.limits.kafka_max_frame,
        timeout: proxy.limits.kafka_frame_timeout,
        budget: &proxy.kafka_budget,
        head_allowed: &head_allowed,
    };
    let (tx, rx) = mpsc::channel::<Owed>(MAX_IN_FLIGHT);
    // Set when either half fails: the other stops too and the connection closes.
    let failed = CancellationToken::new();
    let requests = async {
        let result = conn
            .requests(&mut down_r, &mut up_w, &rules, tx, &failed, &shutdown)
            .await;
        conn.finish(&result, &failed);
    };
    let responses = async {
        let result = conn.responses(&mut up_r, &mut down_w, rx).await;
        conn.finish(&result, &failed);
        let _ = down_w.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(requests, responses) } => {}
        _ = activity.idle(proxy.limits.idle_timeout) => {
            tracing::debug!(client = %down.addr, %dst, "closing idle Kafka connection");
        }
    }
}

impl KafkaConn<'_> {
    fn flow(&self, verdict: Verdict, drop: Option<DropReason>) -> FlowRecord {
        let mut rec = FlowRecord::new(verdict, self.src_ep.clone(), self.dst_ep.clone(), "Kafka");
        self.down.stamp(&mut rec);
        rec.drop_reason = drop;
        rec
    }

    /// The record of one request.
    fn record(&self, verdict: Verdict, meta: Meta, drop: Option<DropReason>) {
        let mut rec = self.flow(verdict, drop);
        rec.traffic_direction = meta.direction;
        rec.policy = meta.reason;
        rec.latency_ns = meta.start.elapsed().as_nanos() as u64;
        rec.l7 = Some(kafka_l7(meta.info));
        self.proxy.flows.record(rec);
    }

    /// The record of the error that closes the connection; none when a peer simply went away.
    fn record_conn_error(&self, e: &ConnError) {
        let (client, dst) = (self.down.addr, self.dst);
        let Some((verdict, drop)) = e.outcome() else {
            tracing::debug!(%client, %dst, "Kafka connection ended: {e}");
            return;
        };
        tracing::info!(%client, %dst, "closing Kafka connection: {e}");
        let mut rec = self.flow(verdict, Some(drop));
        rec.policy = format!("Kafka connection closed: {e}");
        if let ConnError::HeadDenied {
            info, direction, ..
        } = e
        {
            rec.traffic_direction = *direction;
            rec.l7 = Some(kafka_l7((**info).clone()));
        }
        self.proxy.flows.record(rec);
    }

    /// Ends one half: its error is recorded and stops the other half.
    fn finish(&self, result: &Result<(), ConnError>, failed: &CancellationToken) {
        if let Err(e) = result {
            self.record_conn_error(e);
            failed.cancel();
        }
    }

    /// The decision from a large frame's header, before its body is read.
    fn head_allowed(&self, head: &RequestHead, size: usize) -> Result<(), ConnError> {
        let snap = self.proxy.policy.current();
        match policy::decide_head(&snap, self.down, self.dst, head.view()) {
            KafkaDecision::Forward { .. } => Ok(()),
            KafkaDecision::Deny {
                reason,
                drop_reason,
                direction,
                error_code,
            } => Err(head_denied(
                head,
                size,
                reason,
                drop_reason,
                direction,
                error_code,
            )),
        }
    }

    /// The request half: reads each frame, decides, forwards it or builds the local answer, and queues what the
    /// client is owed next.
    async fn requests<R, W>(
        &self,
        down_r: &mut R,
        up_w: &mut W,
        rules: &FrameRules<'_>,
        tx: mpsc::Sender<Owed>,
        failed: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let frame = tokio::select! {
                f = read_request(down_r, rules) => f?,
                _ = failed.cancelled() => return Ok(()),
                // Draining for a restart: stop taking requests, answer those in flight, close.
                _ = shutdown.cancelled() => return Ok(()),
            };
            let Some(frame) = frame else { return Ok(()) };
            let Some(owed) = self.take_frame(frame, up_w).await? else {
                continue;
            };
            if tx.send(owed).await.is_err() {
                return Ok(());
            }
        }
    }

    /// One request frame, decided, then forwarded byte for byte or answered locally. `None` when the client is owed
    /// nothing back (acks=0): the record is then all there is.
    async fn take_frame<W: AsyncWrite + Unpin>(
        &self,
        Frame { bytes, budget }: Frame,
        up_w: &mut W,
    ) -> Result<Option<Owed>, ConnError> {
        let start = Instant::now();
        let req = request::decode(bytes.slice(4..))?;
        let snap = self.proxy.policy.current();
        let (policy_topics, record_topics, unknown_id) =
            policy::topic_names(&req, &self.proxy.kafka_topics, self.dst);
        let decision = policy::decide(
            &snap,
            self.down,
            self.dst,
            req.view(),
            &policy_topics,
            unknown_id,
        );
        drop(snap);
        let expects = response::expects_response(&req);
        let info = kafka_info(&req, record_topics);
        match decision {
            KafkaDecision::Forward {
                reason,
                direction,
                filter_metadata,
            } => {
                up_w.write_all(&bytes).await.map_err(ConnError::Upstream)?;
                drop((bytes, budget));
                let meta = Meta {
                    info,
                    reason,
                    direction,
                    start,
                };
                if !expects {
                    self.record(Verdict::Forwarded, meta, None);
                    return Ok(None);
                }
                let metadata_named = filter_metadata.then_some(!req.topics.is_empty());
                let req = filter_metadata.then(|| Box::new(req));
                Ok(Some(Owed::Broker {
                    meta,
                    metadata_named,
                    req,
                }))
            }
            KafkaDecision::Deny {
                reason,
                drop_reason,
                direction,
                error_code,
            } => {
                let meta = Meta {
                    info: KafkaInfo { error_code, ..info },
                    reason,
                    direction,
                    start,
                };
                tracing::debug!(client = %self.down.addr, dst = %self.dst, api_key = ?req.api_key,
                    "Kafka request denied: {}", meta.reason);
                let answer = response::error_frame(&req, error_code);
                // The denied frame is done with: its memory and budget go before any wait.
                drop((req, bytes, budget));
                let frame = match answer {
                    Ok(frame) => frame,
                    Err(e) => {
                        self.record(Verdict::Dropped, meta, Some(drop_reason));
                        return Err(e.into());
                    }
                };
                if !expects {
                    self.record(Verdict::Dropped, meta, Some(drop_reason));
                    return Ok(None);
                }
                // Recorded when written, so the record's latency covers the queue wait.
                Ok(Some(Owed::Local {
                    meta,
                    frame,
                    drop: drop_reason,
                }))
            }
        }
    }

    /// The response half: walks what the client is owed, in request order.
    async fn responses<R, W>(
        &self,
        up_r: &mut R,
        down_w: &mut W,
        mut rx: mpsc::Receiver<Owed>,
    ) -> Result<(), ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while let Some(owed) = rx.recv().await {
            match owed {
                Owed::Local { meta, frame, drop } => {
                    down_w
                        .write_all(&frame)
                        .await
                        .map_err(|e| ConnError::Truncated(e, "client"))?;
                    self.record(Verdict::Dropped, meta, Some(drop));
                }
                Owed::Broker {
                    mut meta,
                    metadata_named,
                    req,
                } => {
                    let limit = self.proxy.limits.kafka_max_response;
                    let (head, size) =
                        read_response_head(up_r, meta.info.correlation_id, limit).await?;
                    let refused = match (metadata_named, req) {
                        (Some(named), Some(req)) => {
                            let response = (head, size, named);
                            self.relay_metadata(up_r, down_w, response, &req, &mut meta)
                                .await?
                        }
                        _ => {
                            relay_response(up_r, down_w, &head, size).await?;
                            false
                        }
                    };
                    if refused {
                        // A Metadata request naming a topic the client may not use: the client sees 29.
                        self.record(Verdict::Dropped, meta, Some(DropReason::PolicyDenied));
                    } else {
                        self.record(Verdict::Forwarded, meta, None);
                    }
                }
            }
        }
        Ok(())
    }

    /// A Metadata response (`head`, `size`, whether the request named topics), filtered to the topics the client
    /// may see; the topic ids it carries are learned for this broker. `true` when the request named a topic the
    /// client may not use.
    async fn relay_metadata<R, W>(
        &self,
        up_r: &mut R,
        down_w: &mut W,
        (head, size, named): ([u8; 8], usize, bool),
        req: &KafkaRequest,
        meta: &mut Meta,
    ) -> Result<bool, ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let body = read_response_body(up_r, &head[4..], size).await?;
        let snap = self.proxy.policy.current();
        let (filtered, report) = response::filter_metadata(&body, req.api_version, named, |t| {
            policy::topic_visible(&snap, self.down, self.dst, req, t)
        })?;
        drop(snap);
        self.proxy.kafka_topics.learn(self.dst, &report.learned);
        let refused = named && !report.denied.is_empty();
        if !report.denied.is_empty() {
            let what = if named {
                "TOPIC_AUTHORIZATION_FAILED for"
            } else {
                "hidden from this client"
            };
            meta.reason = format!("{}; {what}: {}", meta.reason, report.denied.join(", "));
        }
        if refused {
            meta.info.error_code = response::code::TOPIC_AUTHORIZATION_FAILED;
        }
        match filtered {
            Some(f) => down_w.write_all(&f).await,
            None => {
                down_w.write_all(&head[..4]).await?;
                down_w.write_all(&body).await
            }
        }
        .map_err(|e| ConnError::Truncated(e, "client"))?;
        Ok(refused)
    }
}

/// Reads a broker response's length and correlation id, and checks both: within `limit`, and answering the
/// request owed next (`want`).
async fn read_response_head<R: AsyncRead + Unpin>(
    up_r: &mut R,
    want: i32,
    limit: usize,
) -> Result<([u8; 8], usize), ConnError> {
    let mut head = [0u8; 8];
    up_r.read_exact(&mut head)
        .await
        .map_err(|e| ConnError::Truncated(e, "broker"))?;
    let len = i32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let size = usize::try_from(len).unwrap_or(usize::MAX);
    if size > limit || size < 4 {
        return Err(ConnError::ResponseTooLarge { size, limit });
    }
    let got = i32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
    if got != want {
        return Err(ConnError::Correlation { got, want });
    }
    Ok((head, size))
}

/// Passes a `size`-byte broker response whose first bytes are `head` through undecoded.
async fn relay_response<R, W>(
    up_r: &mut R,
    down_w: &mut W,
    head: &[u8; 8],
    size: usize,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to_client = |e| ConnError::Truncated(e, "client");
    if size <= SMALL_RESPONSE {
        // Most responses (Produce acks, Metadata, group calls) are small: one buffer, one write, so the client
        // gets one segment rather than a header and a body.
        let mut buf = BytesMut::with_capacity(4 + size);
        buf.extend_from_slice(head);
        let mut body = (&mut *up_r).take((size - 4) as u64);
        while buf.len() < 4 + size {
            let n = body
                .read_buf(&mut buf)
                .await
                .map_err(|e| ConnError::Truncated(e, "broker"))?;
            if n == 0 {
                return Err(ConnError::eof("broker"));
            }
        }
        return down_w.write_all(&buf).await.map_err(to_client);
    }
    // Large (Fetch) responses are streamed, not buffered whole.
    down_w.write_all(head).await.map_err(to_client)?;
    let rest = (size - 4) as u64;
    let copied = tokio::io::copy(&mut (&mut *up_r).take(rest), down_w)
        .await
        .map_err(|e| ConnError::Truncated(e, "broker"))?;
    if copied != rest {
        return Err(ConnError::eof("broker"));
    }
    Ok(())
}
