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
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::budget::{FrameBudget, HEAD_BYTES, Held, Part};
use super::policy::{self, KafkaDecision};
use super::request::{self, FrameError, KafkaRequest, RequestHead};
use super::response::{self, ResponseError};
use crate::activity::{Activity, Tracked};
use crate::decision::Downstream;
use crate::flow::{DropReason, FlowRecord, KafkaInfo, L7Info, TrafficDirection, Verdict};
use crate::inputs::{ClientStream, Proxy, endpoints};
use crate::upstream::Dial;

/// Requests a client may have in flight on one connection before the proxy stops reading more (librdkafka's
/// default `max.in.flight` is 1,000,000 but it sends far fewer; Java's is 5).
const MAX_IN_FLIGHT: usize = 1024;

/// Broker responses up to this size are read whole and written in one go; larger ones are streamed.
const SMALL_RESPONSE: usize = 64 * 1024;

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

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("request: {0}")]
    Frame(#[from] FrameError),
    #[error(
        "request: frame of {size} bytes not complete within {secs} s of its first byte \
         (--kafka-frame-timeout-secs): {received} bytes received{waiting}"
    )]
    FrameDeadline {
        size: usize,
        received: usize,
        secs: f64,
        waiting: &'static str,
    },
    #[error("request: {0}")]
    Budget(#[from] super::budget::BudgetError),
    /// Recorded with the request's Kafka fields (`info`).
    #[error(
        "request: {key} v{version} request of {size} bytes denied from its header, its body not read: {reason}"
    )]
    HeadDenied {
        key: String,
        version: i16,
        size: usize,
        reason: String,
        drop_reason: DropReason,
        direction: Option<TrafficDirection>,
        info: Box<KafkaInfo>,
    },
    #[error("{0}")]
    Response(#[from] ResponseError),
    #[error("frame cut short by the {side} ({0})", side = .1)]
    Truncated(std::io::Error, &'static str),
    #[error(
        "broker response of {size} bytes exceeds the {limit}-byte limit (--kafka-max-response-bytes)"
    )]
    ResponseTooLarge { size: usize, limit: usize },
    #[error("broker response has correlation id {got}, expected {want}: responses out of order")]
    Correlation { got: i32, want: i32 },
    #[error("broker connection: {0}")]
    Upstream(std::io::Error),
}

/// A request frame read whole, and the bytes of the in-flight budget its buffer holds.
#[derive(Debug)]
struct Frame {
    bytes: Bytes,
    budget: Held,
}

/// What reading a request frame needs besides the socket.
struct FrameRules<'a> {
    limit: usize,
    timeout: Duration,
    budget: &'a FrameBudget,
    /// The decision from the header of a frame larger than `HEAD_BYTES`, before the rest is read.
    head_allowed: &'a (dyn Fn(&RequestHead, usize) -> Result<(), ConnError> + Sync),
}

/// One frame being received: its buffer grows with the bytes that arrived (never to the announced size at once),
/// each growth paid from the budget first, and every wait ends at the frame's deadline.
struct FrameRead<'a> {
    rules: &'a FrameRules<'a>,
    size: usize,
    deadline: tokio::time::Instant,
    buf: Vec<u8>,
    /// Bytes of `buf` paid for; reads never go past them.
    paid: usize,
    held: Held,
}

impl FrameRead<'_> {
    /// Reads into `buf` until it holds `upto` bytes.
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        upto: usize,
        part: Part,
    ) -> Result<(), ConnError> {
        while self.buf.len() < upto {
            if self.buf.len() == self.paid {
                self.grow(upto, part).await?;
            }
            let want = (self.paid.min(upto) - self.buf.len()) as u64;
            let mut limited = (&mut *r).take(want);
            let n = tokio::time::timeout_at(self.deadline, limited.read_buf(&mut self.buf))
                .await
                .map_err(|_| self.expired(false))?
                .map_err(|e| ConnError::Truncated(e, "client"))?;
            if n == 0 {
                return Err(ConnError::Truncated(
                    std::io::ErrorKind::UnexpectedEof.into(),
                    "client",
                ));
            }
        }
        Ok(())
    }

    /// Pays for more buffer: double what arrived so far (at least 4 KiB), never past `upto`, so the buffer is at
    /// most twice what was received.
    async fn grow(&mut self, upto: usize, part: Part) -> Result<(), ConnError> {
        let step = (upto - self.paid).min(self.paid.max(4096));
        let take = self.rules.budget.take(&mut self.held, step, part);
        tokio::time::timeout_at(self.deadline, take)
            .await
            .map_err(|_| self.expired(true))??;
        self.paid += step;
        self.buf.reserve_exact(self.paid - self.buf.len());
        Ok(())
    }

    fn expired(&self, budget: bool) -> ConnError {
        ConnError::FrameDeadline {
            size: self.size,
            received: self.buf.len().saturating_sub(4),
            secs: self.rules.timeout.as_secs_f64(),
            waiting: if budget {
                "; it was waiting for room in the in-flight budget (--kafka-inflight-budget-bytes)"
            } else {
                ""
            },
        }
    }
}

/// Reads one length-prefixed request frame. `Ok(None)` on a clean close between frames. A frame larger than
/// `HEAD_BYTES` is read that far, its header decided (`head_allowed`), and only then read to its end.
async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    rules: &FrameRules<'_>,
) -> Result<Option<Frame>, ConnError> {
    let mut first = [0u8; 1];
    match r.read(&mut first).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(ConnError::Truncated(e, "client")),
    }
    let mut f = FrameRead {
        rules,
        size: 0,
        deadline: tokio::time::Instant::now() + rules.timeout,
        buf: Vec::new(),
        paid: 0,
        held: Held::default(),
    };
    f.grow(4, Part::Head).await?;
    f.buf.extend_from_slice(&first);
    f.fill(r, 4, Part::Head).await?;
    let prefix: [u8; 4] = f.buf[..4].try_into().expect("4 bytes");
    f.size = request::frame_len(prefix, rules.limit)?;
    let total = 4 + f.size;
    f.fill(r, total.min(HEAD_BYTES), Part::Head).await?;
    if total > HEAD_BYTES {
        (rules.head_allowed)(&request::decode_head(&f.buf[4..])?, f.size)?;
        f.fill(r, total, Part::Bulk).await?;
    }
    Ok(Some(Frame {
        bytes: Bytes::from(f.buf),
        budget: f.held,
    }))
}

/// Reads the rest of a `size`-byte response whose first bytes are `start`; the buffer grows with what arrives,
/// not to the size the broker announced.
async fn read_response_body<R: AsyncRead + Unpin>(
    r: &mut R,
    start: &[u8],
    size: usize,
) -> Result<Bytes, ConnError> {
    let mut body = Vec::with_capacity(size.min(SMALL_RESPONSE));
    body.extend_from_slice(start);
    let rest = (size - start.len()) as u64;
    let got = (&mut *r)
        .take(rest)
        .read_to_end(&mut body)
        .await
        .map_err(|e| ConnError::Truncated(e, "broker"))?;
    if got as u64 != rest {
        return Err(ConnError::Truncated(
            std::io::ErrorKind::UnexpectedEof.into(),
            "broker",
        ));
    }
    Ok(body.into())
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

/// The error closing a connection whose large frame's header alone is denied: answering it like other denials
/// would need its body (the local response lists its topics), and reading that body is what this refusal avoids.
fn head_denied(
    head: &RequestHead,
    size: usize,
    reason: String,
    drop_reason: DropReason,
    direction: Option<TrafficDirection>,
    error_code: i16,
) -> ConnError {
    ConnError::HeadDenied {
        key: format!("{:?}", head.api_key),
        version: head.api_version,
        size,
        reason,
        drop_reason,
        direction,
        info: Box::new(KafkaInfo {
            api_key: format!("{:?}", head.api_key),
            api_version: head.api_version,
            correlation_id: head.correlation_id,
            client_id: head.client_id.clone(),
            topics: Vec::new(),
            error_code,
        }),
    }
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
    let client = down.addr;
    let (src_ep, dst_ep) = endpoints(&proxy, &down, dst);
    let record = |verdict: Verdict, meta: Meta, drop: Option<DropReason>| {
        let mut rec = FlowRecord::new(verdict, src_ep.clone(), dst_ep.clone(), "Kafka");
        down.stamp(&mut rec);
        rec.drop_reason = drop;
        rec.traffic_direction = meta.direction;
        rec.policy = meta.reason;
        rec.latency_ns = meta.start.elapsed().as_nanos() as u64;
        rec.l7 = Some(L7Info {
            kafka: Some(meta.info),
            ..Default::default()
        });
        proxy.flows.record(rec);
    };
    let record_conn_error = |e: &ConnError| {
        // A peer closing mid-stream is how connections end, not an error worth a flow record.
        if let ConnError::Truncated(io, _) | ConnError::Upstream(io) = e
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        {
            tracing::debug!(%client, %dst, "Kafka connection ended: {e}");
            return;
        }
        let (verdict, drop) = match e {
            ConnError::Frame(FrameError::TooLarge { .. })
            | ConnError::FrameDeadline { .. }
            | ConnError::Budget(_) => (Verdict::Dropped, DropReason::LimitExceeded),
            ConnError::Frame(_) => (Verdict::Dropped, DropReason::InvalidRequest),
            ConnError::HeadDenied { drop_reason, .. } => (Verdict::Dropped, *drop_reason),
            ConnError::Response(ResponseError::NoLocalResponse(_)) => {
                (Verdict::Dropped, DropReason::PolicyDenied)
            }
            ConnError::ResponseTooLarge { .. } => (Verdict::Error, DropReason::LimitExceeded),
            _ => (Verdict::Error, DropReason::UpstreamError),
        };
        tracing::info!(%client, %dst, "closing Kafka connection: {e}");
        let mut rec = FlowRecord::new(verdict, src_ep.clone(), dst_ep.clone(), "Kafka");
        down.stamp(&mut rec);
        rec.drop_reason = Some(drop);
        rec.policy = format!("Kafka connection closed: {e}");
        if let ConnError::HeadDenied {
            info, direction, ..
        } = e
        {
            rec.traffic_direction = *direction;
            rec.l7 = Some(L7Info {
                kafka: Some((**info).clone()),
                ..Default::default()
            });
        }
        proxy.flows.record(rec);
    };

    let upstream = match proxy.upstream.connect(dst, &dial).await {
        Ok(u) => u,
        Err(e) => {
            record_conn_error(&ConnError::Upstream(e));
            stream.refuse();
            return;
        }
    };
    let activity = Activity::new();
    let (mut down_r, mut down_w) = tokio::io::split(Tracked::new(stream, activity.clone()));
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let limit = proxy.limits.kafka_max_response;
    let head_allowed = |head: &RequestHead, size: usize| {
        let snap = proxy.policy.current();
        match policy::decide_head(&snap, &down, dst, head.view()) {
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
    };
    let rules = FrameRules {
        limit: proxy.limits.kafka_max_frame,
        timeout: proxy.limits.kafka_frame_timeout,
        budget: &proxy.kafka_budget,
        head_allowed: &head_allowed,
    };
    let (tx, mut rx) = mpsc::channel::<Owed>(MAX_IN_FLIGHT);
    // Set when either half fails: the other stops too and the connection closes.
    let failed = CancellationToken::new();

    let requests = async {
        let result: Result<(), ConnError> = async {
            loop {
                let frame = tokio::select! {
                    f = read_request(&mut down_r, &rules) => f?,
                    _ = failed.cancelled() => return Ok(()),
                    // Draining for a restart: stop taking requests, answer those in flight, close.
                    _ = shutdown.cancelled() => return Ok(()),
                };
                let Some(Frame { bytes: frame, budget }) = frame else { return Ok(()) };
                let start = Instant::now();
                let req = request::decode(frame.slice(4..))?;
                let snap = proxy.policy.current();
                let (policy_topics, record_topics, unknown_id) =
                    policy::topic_names(&req, &proxy.kafka_topics, dst);
                let decision =
                    policy::decide(&snap, &down, dst, req.view(), &policy_topics, unknown_id);
                let expects = response::expects_response(&req);
                match decision {
                    KafkaDecision::Forward {
                        reason,
                        direction,
                        filter_metadata,
                    } => {
                        up_w.write_all(&frame).await.map_err(ConnError::Upstream)?;
                        drop((frame, budget));
                        let meta = Meta {
                            info: kafka_info(&req, record_topics),
                            reason,
                            direction,
                            start,
                        };
                        if !expects {
                            record(Verdict::Forwarded, meta, None);
                            continue;
                        }
                        let metadata_named = filter_metadata.then_some(!req.topics.is_empty());
                        let req = filter_metadata.then(|| Box::new(req));
                        if tx
                            .send(Owed::Broker {
                                meta,
                                metadata_named,
                                req,
                            })
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    KafkaDecision::Deny {
                        reason,
                        drop_reason,
                        direction,
                        error_code,
                    } => {
                        let mut info = kafka_info(&req, record_topics);
                        info.error_code = error_code;
                        let meta = Meta {
                            info,
                            reason,
                            direction,
                            start,
                        };
                        tracing::debug!(%client, %dst, api_key = ?req.api_key, "Kafka request denied: {}", meta.reason);
                        let answer = response::error_frame(&req, error_code);
                        // The denied frame is done with: its memory and budget go before any wait below.
                        drop((req, frame, budget));
                        let frame = match answer {
                            Ok(f) => f,
                            Err(e) => {
                                record(Verdict::Dropped, meta, Some(drop_reason));
                                return Err(e.into());
                            }
                        };
                        if !expects {
                            // acks=0: the client expects nothing back, the record is all there is.
                            record(Verdict::Dropped, meta, Some(drop_reason));
                            continue;
                        }
                        // Recorded when written, so the record's latency covers the queue wait.
                        let owed = Owed::Local {
                            meta,
                            frame,
                            drop: drop_reason,
                        };
                        if tx.send(owed).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        .await;
        drop(tx);
        if let Err(e) = &result {
            record_conn_error(e);
            failed.cancel();
        }
        result
    };

    let responses = async {
        let result: Result<(), ConnError> = async {
            while let Some(owed) = rx.recv().await {
                match owed {
                    Owed::Local { meta, frame, drop } => {
                        down_w
                            .write_all(&frame)
                            .await
                            .map_err(|e| ConnError::Truncated(e, "client"))?;
                        record(Verdict::Dropped, meta, Some(drop));
                    }
                    Owed::Broker {
                        mut meta,
                        metadata_named,
                        req,
                    } => {
                        let mut refused = false;
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
                        if got != meta.info.correlation_id {
                            return Err(ConnError::Correlation {
                                got,
                                want: meta.info.correlation_id,
                            });
                        }
                        match (metadata_named, req) {
                            (Some(named), Some(req)) => {
                                let body = read_response_body(&mut up_r, &head[4..], size).await?;
                                let snap = proxy.policy.current();
                                let (filtered, report) = response::filter_metadata(
                                    &body,
                                    req.api_version,
                                    named,
                                    |t| policy::topic_visible(&snap, &down, dst, &req, t),
                                )?;
                                proxy.kafka_topics.learn(dst, &report.learned);
                                if !report.denied.is_empty() {
                                    let (what, denied) = if named {
                                        ("TOPIC_AUTHORIZATION_FAILED for", true)
                                    } else {
                                        ("hidden from this client", false)
                                    };
                                    meta.reason = format!(
                                        "{}; {what}: {}",
                                        meta.reason,
                                        report.denied.join(", ")
                                    );
                                    if denied {
                                        refused = true;
                                        meta.info.error_code =
                                            response::code::TOPIC_AUTHORIZATION_FAILED;
                                    }
                                }
                                match filtered {
                                    Some(f) => down_w.write_all(&f).await,
                                    None => {
                                        down_w.write_all(&head[..4]).await?;
                                        down_w.write_all(&body).await
                                    }
                                }
                                .map_err(|e| ConnError::Truncated(e, "client"))?;
                            }
                            _ if size <= SMALL_RESPONSE => {
                                // Most responses (Produce acks, Metadata, group calls) are small: one buffer, one
                                // write, so the client gets one segment rather than a header and a body.
                                let mut buf = BytesMut::with_capacity(4 + size);
                                buf.extend_from_slice(&head);
                                let mut body = (&mut up_r).take((size - 4) as u64);
                                while buf.len() < 4 + size {
                                    let n = body
                                        .read_buf(&mut buf)
                                        .await
                                        .map_err(|e| ConnError::Truncated(e, "broker"))?;
                                    if n == 0 {
                                        return Err(ConnError::Truncated(
                                            std::io::ErrorKind::UnexpectedEof.into(),
                                            "broker",
                                        ));
                                    }
                                }
                                down_w
                                    .write_all(&buf)
                                    .await
                                    .map_err(|e| ConnError::Truncated(e, "client"))?;
                            }
                            _ => {
                                // Large (Fetch) responses are streamed, not buffered whole.
                                down_w
                                    .write_all(&head)
                                    .await
                                    .map_err(|e| ConnError::Truncated(e, "client"))?;
                                let rest = (size - 4) as u64;
                                let copied =
                                    tokio::io::copy(&mut (&mut up_r).take(rest), &mut down_w)
                                        .await
                                        .map_err(|e| ConnError::Truncated(e, "broker"))?;
                                if copied != rest {
                                    return Err(ConnError::Truncated(
                                        std::io::ErrorKind::UnexpectedEof.into(),
                                        "broker",
                                    ));
                                }
                            }
                        }
                        if refused {
                            // A Metadata request naming a topic the client may not use: the client sees 29.
                            record(Verdict::Dropped, meta, Some(DropReason::PolicyDenied));
                        } else {
                            record(Verdict::Forwarded, meta, None);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = &result {
            record_conn_error(e);
            failed.cancel();
        }
        let _ = down_w.shutdown().await;
        result
    };

    tokio::select! {
        _ = async { tokio::join!(requests, responses) } => {}
        _ = activity.idle(proxy.limits.idle_timeout) => {
            tracing::debug!(%client, %dst, "closing idle Kafka connection");
        }
    }
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Truncated(e, "client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{
        ApiKey, ProduceRequest, RequestHeader, RequestKind, produce_request,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    /// A Produce v3 frame, length prefix included, whose one partition carries `records` bytes.
    fn produce_frame(records: usize) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(3)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("w1")))
            .encode(&mut buf, ApiKey::Produce.request_header_version(3))
            .unwrap();
        let partition = produce_request::PartitionProduceData::default()
            .with_records(Some(Bytes::from(vec![0u8; records])));
        let topic = produce_request::TopicProduceData::default()
            .with_name(kafka_protocol::messages::TopicName(
                StrBytes::from_static_str("events"),
            ))
            .with_partition_data(vec![partition]);
        RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(1)
                .with_topic_data(vec![topic]),
        )
        .encode(&mut buf, 3)
        .unwrap();
        let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        frame
    }

    fn rules<'a>(
        budget: &'a FrameBudget,
        timeout_ms: u64,
        head_allowed: &'a (dyn Fn(&RequestHead, usize) -> Result<(), ConnError> + Sync),
    ) -> FrameRules<'a> {
        FrameRules {
            limit: request::DEFAULT_MAX_FRAME,
            timeout: Duration::from_millis(timeout_ms),
            budget,
            head_allowed,
        }
    }

    fn allow(_: &RequestHead, _: usize) -> Result<(), ConnError> {
        Ok(())
    }

    #[tokio::test]
    async fn a_large_frame_holds_only_what_arrived_and_is_closed_at_its_deadline() {
        let budget = FrameBudget::new(24 << 20);
        let frame = produce_frame((8 << 20) - 1024);
        let sent = 300 * 1024;
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(&frame[..sent]).await.unwrap();
        let heads = Mutex::new(Vec::new());
        let record_head = |h: &RequestHead, size: usize| {
            heads.lock().unwrap().push((h.clone(), size));
            Ok(())
        };
        let r = rules(&budget, 2000, &record_head);
        let (result, held_midway) = tokio::join!(read_request(&mut server, &r), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            budget.total() - budget.available()
        });
        // Budget (and buffer) grow with what arrived: at most double, never the announced 8 MiB.
        assert!(
            (sent..=2 * sent).contains(&held_midway),
            "{held_midway} bytes held for {sent} received"
        );
        let err = result.unwrap_err();
        assert!(
            matches!(err, ConnError::FrameDeadline { received, waiting: "", .. } if received == sent - 4),
            "{err}"
        );
        assert!(
            err.to_string().contains("--kafka-frame-timeout-secs"),
            "{err}"
        );
        let heads = heads.into_inner().unwrap();
        assert_eq!(
            heads.len(),
            1,
            "the header was decided once, before the body"
        );
        assert_eq!(heads[0].0.api_key, ApiKey::Produce);
        assert_eq!(heads[0].0.client_id.as_deref(), Some("w1"));
        assert_eq!(heads[0].1, frame.len() - 4);
        assert_eq!(budget.available(), budget.total(), "all given back");
    }

    #[tokio::test]
    async fn a_header_denied_large_frame_is_refused_before_its_body() {
        let budget = FrameBudget::new(24 << 20);
        let frame = produce_frame(1 << 20);
        let (mut client, mut server) = tokio::io::duplex(2 << 20);
        // Only the first 64 KiB: a refusal that needed the body would wait for the deadline instead.
        client.write_all(&frame[..HEAD_BYTES]).await.unwrap();
        let deny = |h: &RequestHead, size: usize| {
            Err(head_denied(
                h,
                size,
                "no rule".into(),
                DropReason::PolicyDenied,
                None,
                29,
            ))
        };
        let r = rules(&budget, 60_000, &deny);
        let started = Instant::now();
        let err = read_request(&mut server, &r).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(
            matches!(&err, ConnError::HeadDenied { drop_reason: DropReason::PolicyDenied, info, .. }
                if info.correlation_id == 7),
            "{err}"
        );
        assert!(err.to_string().contains("denied from its header"), "{err}");
        assert_eq!(budget.available(), budget.total());
    }

    #[tokio::test]
    async fn frames_are_read_whole_and_small_ones_without_a_header_step() {
        let budget = FrameBudget::new(24 << 20);
        let never = |_: &RequestHead, _: usize| -> Result<(), ConnError> {
            panic!("a frame within HEAD_BYTES is decided whole")
        };
        for (records, head_step) in [(100, false), (3 << 20, true)] {
            let frame = produce_frame(records);
            let (mut client, mut server) = tokio::io::duplex(64 * 1024);
            let writer = async move {
                client.write_all(&frame).await.unwrap();
                frame
            };
            let r = if head_step {
                rules(&budget, 10_000, &allow)
            } else {
                rules(&budget, 10_000, &never)
            };
            let (got, frame) = tokio::join!(read_request(&mut server, &r), writer);
            let got = got.unwrap().expect("a frame");
            assert_eq!(&got.bytes[..], &frame[..]);
            assert!(got.budget.bytes() >= frame.len() && got.budget.bytes() < 2 * frame.len());
            let req = request::decode(got.bytes.slice(4..)).unwrap();
            assert_eq!(req.api_key, ApiKey::Produce);
        }
        assert_eq!(budget.available(), budget.total());
    }

    #[tokio::test]
    async fn a_frame_without_budget_waits_then_meets_its_deadline() {
        // 300 KiB for frame bodies: one 290 KiB frame fits, a second must wait for it.
        let budget = FrameBudget::new(400 * 1024);
        let frame = produce_frame(290 * 1024);
        let read_one = |budget, timeout_ms| {
            let frame = frame.clone();
            async move {
                let (mut client, mut server) = tokio::io::duplex(1 << 20);
                client.write_all(&frame).await.unwrap();
                read_request(&mut server, &rules(budget, timeout_ms, &allow)).await
            }
        };
        let first = read_one(&budget, 10_000).await.unwrap().expect("a frame");
        let err = read_one(&budget, 300).await.unwrap_err();
        assert!(
            err.to_string().contains(
                "waiting for room in the in-flight budget (--kafka-inflight-budget-bytes)"
            ),
            "{err}"
        );
        drop(first);
        assert!(read_one(&budget, 10_000).await.unwrap().is_some());
        assert_eq!(budget.available(), budget.total());
    }
}
