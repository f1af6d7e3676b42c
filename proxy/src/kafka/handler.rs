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
//! reason; other connections are not affected. Every record is built by `record.rs` from a typed outcome.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn_error::{ConnError, head_denied};
use super::frame_read::{Frame, FrameReader, FrameRules, SMALL_RESPONSE, read_response_body};
use super::policy::{self, KafkaDecision};
use super::read_ahead::ReadAhead;
use super::record::{Outcome, RecordEnds, RequestFacts};
use super::request::{self, KafkaRequest, RequestHead};
use super::response;
use crate::activity::{Activity, Tracked};
use crate::decision::Downstream;
use crate::flow::DropReason;
use crate::inputs::{Accepted, ClientStream, Proxy, endpoints};

/// Requests a client may have in flight on one connection before the proxy stops reading more (librdkafka's
/// default `max.in.flight` is 1,000,000 but it sends far fewer; Java's is 5).
const MAX_IN_FLIGHT: usize = 1024;

/// What the client is owed next, in request order.
#[derive(Debug)]
enum Owed {
    /// The broker's next response.
    Broker {
        facts: RequestFacts,
        /// Set for Metadata: the request, whose response is filtered to the topics the client may see.
        metadata: Option<Box<KafkaRequest>>,
    },
    /// A response the proxy built.
    Local {
        facts: RequestFacts,
        frame: Bytes,
        drop: DropReason,
    },
}

/// What every part of one Kafka connection needs: the daemon's inputs, who talks to whom, and where records go.
struct KafkaConn<'a> {
    proxy: &'a Proxy,
    down: &'a Downstream,
    dst: SocketAddr,
    ends: RecordEnds<'a>,
}

/// Handles one connection to a port with Kafka rules until either side closes or the daemon shuts down.
///
/// A plain fn returning the future: an `async fn` would keep its arguments in the task beside the parts taken from
/// them, for the connection's life.
pub fn serve<S: ClientStream>(conn: Accepted, stream: S) -> impl Future<Output = ()> + Send {
    let Accepted {
        proxy,
        down,
        dst,
        dial,
        shutdown,
    } = conn;
    async move {
        let (src, dst_ep) = endpoints(&proxy, &down, dst);
        let conn = KafkaConn {
            proxy: &proxy,
            down: &down,
            dst,
            ends: RecordEnds {
                down: &down,
                src,
                dst: dst_ep,
            },
        };
        let upstream = match proxy.upstream.connect(dst, &dial).await {
            Ok(u) => u,
            Err(e) => {
                conn.record_closed(&ConnError::Upstream(e));
                stream.refuse();
                return;
            }
        };
        let activity = Activity::new();
        let (down_r, mut down_w) = tokio::io::split(Tracked::new(stream, activity.clone()));
        let (up_r, mut up_w) = tokio::io::split(upstream);
        // Read-ahead on each side (outside the frame budget, like the socket's own buffer).
        let mut up_r = ReadAhead::new(up_r);
        let down_r = ReadAhead::new(down_r);
        let head_allowed = |head: &RequestHead, size: usize| conn.head_allowed(head, size);
        let rules = FrameRules {
            limit: proxy.limits.kafka_max_frame,
            timeout: proxy.limits.kafka_frame_timeout,
            budget: &proxy.kafka_budget,
            head_allowed: &head_allowed,
        };
        let mut frames = FrameReader::new(down_r, rules);
        // Boxed: the channel allocates its slots 32 at a time when it is made, so an idle connection would hold 32
        // unboxed `Owed`s (7 KiB).
        let (tx, rx) = mpsc::channel::<Box<Owed>>(MAX_IN_FLIGHT);
        // Set when either half fails (the other stops too and the connection closes) or when the daemon drains for
        // a restart (a child of its shutdown token): the request half stops taking requests, those in flight are
        // answered, the connection closes.
        let stop = shutdown.child_token();
        let requests = async {
            let result = conn.requests(&mut frames, &mut up_w, tx, &stop).await;
            conn.finish(&result, &stop);
        };
        let responses = async {
            let result = conn.responses(&mut up_r, &mut down_w, rx).await;
            conn.finish(&result, &stop);
            let _ = down_w.shutdown().await;
        };
        // `join`, not `async { join!(..) }`: the block would hold both halves twice (captured, then joined), and the
        // task is as large as that for the connection's life.
        tokio::select! {
            _ = futures::future::join(requests, responses) => {}
            _ = activity.idle(proxy.limits.idle_timeout) => {
                tracing::debug!(client = %down.addr, %dst, "closing idle Kafka connection");
            }
        }
    }
}

impl KafkaConn<'_> {
    /// The record of one request.
    fn record(&self, facts: RequestFacts, outcome: Outcome) {
        self.proxy.flows.record(self.ends.request(facts, outcome));
    }

    /// The record of the error that closes the connection; none when a peer simply went away.
    fn record_closed(&self, e: &ConnError) {
        let (client, dst) = (self.down.addr, self.dst);
        match self.ends.closed(e) {
            Some(rec) => {
                tracing::info!(%client, %dst, "closing Kafka connection: {e}");
                self.proxy.flows.record(rec);
            }
            None => tracing::debug!(%client, %dst, "Kafka connection ended: {e}"),
        }
    }

    /// Ends one half: its error is recorded and stops the other half.
    fn finish(&self, result: &Result<(), ConnError>, stop: &CancellationToken) {
        if let Err(e) = result {
            self.record_closed(e);
            stop.cancel();
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
        frames: &mut FrameReader<'_, R>,
        up_w: &mut W,
        tx: mpsc::Sender<Box<Owed>>,
        stop: &CancellationToken,
    ) -> Result<(), ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let frame = tokio::select! {
                f = frames.next() => f?,
                // The other half failed, or the daemon drains: answer what is in flight, close.
                _ = stop.cancelled() => return Ok(()),
            };
            let Some(frame) = frame else { return Ok(()) };
            // Boxed, like each response below: the decision and forwarding state exist only while a request is
            // handled, not in every idle connection's task.
            let Some(owed) = Box::pin(self.request(frame, up_w)).await? else {
                continue;
            };
            if tx.send(Box::new(owed)).await.is_err() {
                return Ok(());
            }
        }
    }

    /// One request frame, decided, then forwarded byte for byte or answered locally. `None` when the client is owed
    /// nothing back (acks=0): the record is then all there is.
    async fn request<W: AsyncWrite + Unpin>(
        &self,
        frame: Frame,
        up_w: &mut W,
    ) -> Result<Option<Owed>, ConnError> {
        let start = Instant::now();
        let req = request::decode(frame.bytes.slice(4..))?;
        let (policy_topics, record_topics, unknown_id) =
            policy::topic_names(&req, &self.proxy.kafka_topics, self.dst);
        let snap = self.proxy.policy.current();
        let decision = policy::decide(
            &snap,
            self.down,
            self.dst,
            req.view(),
            &policy_topics,
            unknown_id,
        );
        drop(snap);
        match decision {
            KafkaDecision::Forward {
                reason,
                direction,
                filter_metadata,
            } => {
                let facts = RequestFacts::new(&req, record_topics, reason, direction, start);
                self.forward(frame, req, facts, filter_metadata, up_w).await
            }
            KafkaDecision::Deny {
                reason,
                drop_reason,
                direction,
                error_code,
            } => {
                let mut facts = RequestFacts::new(&req, record_topics, reason, direction, start);
                facts.info.error_code = error_code;
                self.refuse(frame, req, facts, drop_reason)
            }
        }
    }

    /// Sends an allowed frame to the broker as it arrived.
    async fn forward<W: AsyncWrite + Unpin>(
        &self,
        frame: Frame,
        req: KafkaRequest,
        facts: RequestFacts,
        filter_metadata: bool,
        up_w: &mut W,
    ) -> Result<Option<Owed>, ConnError> {
        let Frame { bytes, budget } = frame;
        up_w.write_all(&bytes).await.map_err(ConnError::Upstream)?;
        // Sent: the frame's memory and budget go before the wait for its response.
        drop((bytes, budget));
        if !response::expects_response(&req) {
            self.record(facts, Outcome::Forwarded);
            return Ok(None);
        }
        let metadata = filter_metadata.then(|| Box::new(req));
        Ok(Some(Owed::Broker { facts, metadata }))
    }

    /// Builds the local error response of a denied frame; the frame never reaches the broker.
    fn refuse(
        &self,
        frame: Frame,
        req: KafkaRequest,
        facts: RequestFacts,
        drop_reason: DropReason,
    ) -> Result<Option<Owed>, ConnError> {
        tracing::debug!(client = %self.down.addr, dst = %self.dst, api_key = ?req.api_key,
            "Kafka request denied: {}", facts.reason);
        let answer = response::error_frame(&req, facts.info.error_code);
        let expects = response::expects_response(&req);
        // The denied frame is done with: its memory and budget go before any wait.
        let Frame { bytes, budget } = frame;
        drop((req, bytes, budget));
        let frame = match answer {
            Ok(frame) => frame,
            Err(e) => {
                self.record(facts, Outcome::Refused(drop_reason));
                return Err(e.into());
            }
        };
        if !expects {
            self.record(facts, Outcome::Refused(drop_reason));
            return Ok(None);
        }
        // Recorded when written, so the record's latency covers the queue wait.
        Ok(Some(Owed::Local {
            facts,
            frame,
            drop: drop_reason,
        }))
    }

    /// The response half: walks what the client is owed, in request order.
    async fn responses<R, W>(
        &self,
        up_r: &mut R,
        down_w: &mut W,
        mut rx: mpsc::Receiver<Box<Owed>>,
    ) -> Result<(), ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while let Some(owed) = rx.recv().await {
            match *owed {
                Owed::Local { facts, frame, drop } => {
                    down_w
                        .write_all(&frame)
                        .await
                        .map_err(|e| ConnError::Truncated(e, "client"))?;
                    self.record(facts, Outcome::Refused(drop));
                }
                Owed::Broker { facts, metadata } => {
                    Box::pin(self.response(up_r, down_w, facts, metadata.as_deref())).await?;
                }
            }
        }
        Ok(())
    }

    /// The broker's response to one forwarded request, relayed (Metadata: filtered) and recorded.
    async fn response<R, W>(
        &self,
        up_r: &mut R,
        down_w: &mut W,
        mut facts: RequestFacts,
        metadata: Option<&KafkaRequest>,
    ) -> Result<(), ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limit = self.proxy.limits.kafka_max_response;
        let (head, size) = read_response_head(up_r, facts.info.correlation_id, limit).await?;
        let refused = match metadata {
            Some(req) => {
                self.metadata(up_r, down_w, (head, size), req, &mut facts)
                    .await?
            }
            None => {
                relay_response(up_r, down_w, &head, size).await?;
                false
            }
        };
        let outcome = if refused {
            // A Metadata request naming a topic the client may not use: the client sees 29.
            Outcome::Refused(DropReason::PolicyDenied)
        } else {
            Outcome::Forwarded
        };
        self.record(facts, outcome);
        Ok(())
    }

    /// A Metadata response (`head`, `size`), filtered to the topics the client may see; the topic ids it carries
    /// are learned for this broker. `true` when the request named a topic the client may not use.
    async fn metadata<R, W>(
        &self,
        up_r: &mut R,
        down_w: &mut W,
        (head, size): ([u8; 8], usize),
        req: &KafkaRequest,
        facts: &mut RequestFacts,
    ) -> Result<bool, ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let named = !req.topics.is_empty();
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
            facts.reason = format!("{}; {what}: {}", facts.reason, report.denied.join(", "));
        }
        if refused {
            facts.info.error_code = response::code::TOPIC_AUTHORIZATION_FAILED;
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
