//! Reading one request frame under the memory rules: the buffer grows with the bytes that arrived, paid from the
//! process-wide budget, every wait ends at the frame's deadline, and a large frame's header is decided before its
//! body is read.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::conn_error::ConnError;
use super::request::{self, RequestHead};
use crate::kafka_state::budget::{FrameBudget, HEAD_BYTES, Held, Part};

/// Broker responses up to this size are read whole and written in one go; larger ones are streamed.
pub(super) const SMALL_RESPONSE: usize = 64 * 1024;

/// A request frame read whole, and the bytes of the in-flight budget its buffer holds.
#[derive(Debug)]
pub(super) struct Frame {
    pub(super) bytes: Bytes,
    pub(super) budget: Held,
}

/// What reading a request frame needs besides the socket.
pub(super) struct FrameRules<'a> {
    pub(super) limit: usize,
    pub(super) timeout: Duration,
    pub(super) budget: &'a FrameBudget,
    /// The decision from the header of a frame larger than `HEAD_BYTES`, before the rest is read.
    pub(super) head_allowed: &'a (dyn Fn(&RequestHead, usize) -> Result<(), ConnError> + Sync),
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
                return Err(ConnError::eof("client"));
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

/// The request side of one connection: its read half and the rules every frame is read under, for all its frames.
pub(super) struct FrameReader<'a, R> {
    r: R,
    rules: FrameRules<'a>,
}

impl<'a, R: AsyncRead + Unpin> FrameReader<'a, R> {
    pub(super) fn new(r: R, rules: FrameRules<'a>) -> Self {
        FrameReader { r, rules }
    }

    /// The next request frame; `Ok(None)` on a clean close between frames.
    pub(super) async fn next(&mut self) -> Result<Option<Frame>, ConnError> {
        read_request(&mut self.r, &self.rules).await
    }
}

/// Reads one length-prefixed request frame. `Ok(None)` on a clean close between frames. A frame larger than
/// `HEAD_BYTES` is read that far, its header decided (`head_allowed`), and only then read to its end.
pub(super) async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    rules: &FrameRules<'_>,
) -> Result<Option<Frame>, ConnError> {
    // Up to the whole length prefix in the first read, on the stack: an idle connection holds no budget, and a
    // frame costs one read for its prefix rather than one per byte-count step.
    let mut first = [0u8; 4];
    let got = match r.read(&mut first).await {
        Ok(0) => return Ok(None),
        Ok(n) => n,
        Err(e) => return Err(ConnError::Truncated(e, "client")),
    };
    // Boxed: the rest of the frame (budget waits, deadlines) is state only while a frame arrives, not in every idle
    // connection's task, which waits at the read above.
    Box::pin(read_rest(r, rules, first, got)).await.map(Some)
}

/// The rest of a request frame whose first `got` bytes are `first[..got]`.
async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    rules: &FrameRules<'_>,
    first: [u8; 4],
    got: usize,
) -> Result<Frame, ConnError> {
    let mut f = FrameRead {
        rules,
        size: 0,
        deadline: tokio::time::Instant::now() + rules.timeout,
        buf: Vec::new(),
        paid: 0,
        held: Held::default(),
    };
    f.grow(4, Part::Head).await?;
    f.buf.extend_from_slice(&first[..got]);
    f.fill(r, 4, Part::Head).await?;
    let prefix: [u8; 4] = f.buf[..4].try_into().expect("4 bytes");
    f.size = request::frame_len(prefix, rules.limit)?;
    let total = 4 + f.size;
    f.fill(r, total.min(HEAD_BYTES), Part::Head).await?;
    if total > HEAD_BYTES {
        (rules.head_allowed)(&request::decode_head(&f.buf[4..])?, f.size)?;
        f.fill(r, total, Part::Bulk).await?;
    }
    Ok(Frame {
        bytes: Bytes::from(f.buf),
        budget: f.held,
    })
}

/// Reads the rest of a `size`-byte response whose first bytes are `start`; the buffer grows with what arrives,
/// not to the size the broker announced.
pub(super) async fn read_response_body<R: AsyncRead + Unpin>(
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
        return Err(ConnError::eof("broker"));
    }
    Ok(body.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::DropReason;
    use crate::kafka::conn_error::head_denied;
    use kafka_protocol::messages::{
        ApiKey, ProduceRequest, RequestHeader, RequestKind, produce_request,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use std::sync::Mutex;
    use std::time::Instant;
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
