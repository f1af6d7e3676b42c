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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::policy::{self, KafkaDecision};
use super::request::{self, FrameError, KafkaRequest};
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
    #[error("{0}")]
    Response(#[from] ResponseError),
    #[error("frame cut short by the {side} ({0})", side = .1)]
    Truncated(std::io::Error, &'static str),
    #[error(
        "broker response of {size} bytes exceeds the {limit}-byte limit (--kafka-max-frame-bytes)"
    )]
    ResponseTooLarge { size: usize, limit: usize },
    #[error("broker response has correlation id {got}, expected {want}: responses out of order")]
    Correlation { got: i32, want: i32 },
    #[error("broker connection: {0}")]
    Upstream(std::io::Error),
}

/// Reads one length-prefixed request frame. `Ok(None)` on a clean close between frames.
async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, ConnError> {
    let mut prefix = [0u8; 4];
    match r.read(&mut prefix[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(ConnError::Truncated(e, "client")),
    }
    r.read_exact(&mut prefix[1..])
        .await
        .map_err(|e| ConnError::Truncated(e, "client"))?;
    let size = request::frame_len(prefix, limit)?;
    // Read into uninitialised capacity (no zeroing of a possibly large Produce frame), never past this frame.
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.extend_from_slice(&prefix);
    let mut body = r.take(size as u64);
    while buf.len() < 4 + size {
        let n = body
            .read_buf(&mut buf)
            .await
            .map_err(|e| ConnError::Truncated(e, "client"))?;
        if n == 0 {
            return Err(ConnError::Truncated(
                std::io::ErrorKind::UnexpectedEof.into(),
                "client",
            ));
        }
    }
    Ok(Some(buf.freeze()))
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
            ConnError::Frame(_) => (Verdict::Dropped, DropReason::InvalidRequest),
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
    let limit = proxy.limits.kafka_max_frame;
    let (tx, mut rx) = mpsc::channel::<Owed>(MAX_IN_FLIGHT);
    // Set when either half fails: the other stops too and the connection closes.
    let failed = CancellationToken::new();

    let requests = async {
        let result: Result<(), ConnError> = async {
            loop {
                let frame = tokio::select! {
                    f = read_request(&mut down_r, limit) => f?,
                    _ = failed.cancelled() => return Ok(()),
                    // Draining for a restart: stop taking requests, answer those in flight, close.
                    _ = shutdown.cancelled() => return Ok(()),
                };
                let Some(frame) = frame else { return Ok(()) };
                let start = Instant::now();
                let req = request::decode(frame.slice(4..))?;
                let snap = proxy.policy.current();
                let (policy_topics, record_topics, unknown_id) =
                    policy::topic_names(&req, &proxy.kafka_topics, dst);
                let decision =
                    policy::decide(&snap, &down, dst, &req, &policy_topics, unknown_id);
                let expects = response::expects_response(&req);
                match decision {
                    KafkaDecision::Forward {
                        reason,
                        direction,
                        filter_metadata,
                    } => {
                        up_w.write_all(&frame).await.map_err(ConnError::Upstream)?;
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
                        let frame = match response::error_frame(&req, error_code) {
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
                                let mut body = BytesMut::zeroed(size);
                                body[..4].copy_from_slice(&head[4..]);
                                up_r.read_exact(&mut body[4..])
                                    .await
                                    .map_err(|e| ConnError::Truncated(e, "broker"))?;
                                let body = body.freeze();
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
