//! Names the attack behind an HTTP/2 refusal the h2 library made itself. h2 guards against rapid reset,
//! CONTINUATION floods and HPACK bombs inside the connection (GOAWAY, then the connection future fails), resets
//! malformed requests and streams over the concurrency limit, and answers oversized header lists with its own 431:
//! hyper never sees those requests, so without this the refusals would leave no flow record.
//!
//! Two sources: the frames the server side wrote ([`RefusalLog`], fed by `h2_watch.rs`; they carry the GOAWAY
//! debug data that names the guard), and, when no GOAWAY was seen, the error the connection ended with
//! ([`refusal`]).

use tollgate_h2_codec::h2_frames::Frame;

use crate::flow::DropReason;

/// Stream refusals recorded one by one per connection; past it one summary record, then none (a flood of bad
/// streams must not flood the flow log).
pub const MAX_STREAM_RECORDS: u32 = 16;

/// Debug data of the proxy's own GOAWAY for a SETTINGS flood (`h2_watch.rs`).
pub const SETTINGS_FLOOD: &str = "settings_flood";

/// One refusal to record: for the connection (`stream` 0) or one stream; `code` the HTTP status the client got
/// (0: none, a reset or GOAWAY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub stream: u32,
    pub code: u16,
    pub reason: DropReason,
    pub why: String,
}

/// Turns the frames the server side of one connection writes into refusal records, at most
/// [`MAX_STREAM_RECORDS`] per-stream ones plus one summary.
#[derive(Debug)]
pub struct RefusalLog {
    max_concurrent_streams: u32,
    max_header_bytes: usize,
    stream_records: u32,
    /// The stream h2 last answered 431: its reset that follows is the same refusal.
    answered_431: Option<u32>,
}

impl RefusalLog {
    pub fn new(max_concurrent_streams: u32, max_header_bytes: usize) -> Self {
        Self {
            max_concurrent_streams,
            max_header_bytes,
            stream_records: 0,
            answered_431: None,
        }
    }

    /// The record for a frame the server wrote, if it is a refusal.
    pub fn server_frame(&mut self, frame: &Frame) -> Option<Refusal> {
        match frame {
            Frame::GoAway { code, debug, .. } => {
                let (reason, why) = goaway(h2::Reason::from(*code), debug)?;
                Some(Refusal {
                    stream: 0,
                    code: 0,
                    reason,
                    why,
                })
            }
            Frame::Headers {
                stream,
                only_status_431: true,
                ..
            } => {
                self.answered_431 = Some(*stream);
                let why = format!(
                    "request header list over the limit of {} bytes (--max-header-bytes); answered 431 by h2 \
                     on stream {stream}",
                    self.max_header_bytes
                );
                self.stream(*stream, 431, DropReason::LimitExceeded, why)
            }
            Frame::RstStream { stream, code } if self.answered_431 != Some(*stream) => {
                let (reason, what) = reset(h2::Reason::from(*code), self.max_concurrent_streams)?;
                let why = format!(
                    "{what}; stream {stream} reset with {:?}",
                    h2::Reason::from(*code)
                );
                self.stream(*stream, 0, reason, why)
            }
            _ => None,
        }
    }

    fn stream(
        &mut self,
        stream: u32,
        code: u16,
        reason: DropReason,
        why: String,
    ) -> Option<Refusal> {
        self.stream_records = self.stream_records.saturating_add(1);
        if self.stream_records > MAX_STREAM_RECORDS + 1 {
            return None;
        }
        let why = if self.stream_records == MAX_STREAM_RECORDS + 1 {
            format!(
                "more than {MAX_STREAM_RECORDS} HTTP/2 streams refused on this connection; later refusals on it \
                 are not recorded one by one (this one: {why})"
            )
        } else {
            why
        };
        Some(Refusal {
            stream,
            code,
            reason,
            why,
        })
    }
}

/// The attack a GOAWAY h2 (or the proxy) sent names, from its error code and debug data. `None` for a graceful
/// GOAWAY (NO_ERROR).
pub fn goaway(reason: h2::Reason, debug: &[u8]) -> Option<(DropReason, String)> {
    if reason == h2::Reason::NO_ERROR {
        return None;
    }
    let debug = String::from_utf8_lossy(debug);
    let what = match (reason, debug.as_ref()) {
        (h2::Reason::ENHANCE_YOUR_CALM, "too_many_resets") => {
            "HTTP/2 rapid reset flood (CVE-2023-44487): the client reset more streams than h2 allows pending"
        }
        (h2::Reason::ENHANCE_YOUR_CALM, "too_many_continuations") => {
            "HTTP/2 CONTINUATION flood (CVE-2024-27316): one header block in more CONTINUATION frames than allowed"
        }
        (h2::Reason::ENHANCE_YOUR_CALM, "header_list_way_too_large") => {
            "HTTP/2 HPACK bomb: a header list that decodes far past --max-header-bytes"
        }
        (h2::Reason::ENHANCE_YOUR_CALM, "too_many_internal_resets") => {
            "HTTP/2 too many resets: the client made the server reset more of its streams than allowed \
             (CVE-2025-8671)"
        }
        (h2::Reason::ENHANCE_YOUR_CALM, "too_many_data_frames") => {
            "HTTP/2 DATA frame flood: too many small DATA frames"
        }
        (h2::Reason::ENHANCE_YOUR_CALM, SETTINGS_FLOOD) => {
            "HTTP/2 SETTINGS flood (CVE-2019-9515): more SETTINGS frames than the proxy accepts"
        }
        (h2::Reason::ENHANCE_YOUR_CALM, _) => {
            "HTTP/2 flood refused (one of h2's abuse limits: rapid reset, CONTINUATION flood, HPACK bomb)"
        }
        _ => {
            let why = format!(
                "HTTP/2 protocol error; connection closed with GOAWAY {reason:?}{}",
                debug_note(&debug)
            );
            return Some((DropReason::InvalidRequest, why));
        }
    };
    let why = format!(
        "{what}; connection closed with GOAWAY {reason:?}{}",
        debug_note(&debug)
    );
    Some((DropReason::LimitExceeded, why))
}

fn debug_note(debug: &str) -> String {
    if debug.is_empty() {
        String::new()
    } else {
        format!(" (debug data \"{}\")", debug.escape_debug())
    }
}

/// What a stream reset h2 sent on its own refuses. `None` for the codes hyper uses for streams it served (NO_ERROR,
/// CANCEL, INTERNAL_ERROR, ...): those requests have their own records.
fn reset(reason: h2::Reason, max_concurrent_streams: u32) -> Option<(DropReason, String)> {
    match reason {
        h2::Reason::PROTOCOL_ERROR => Some((
            DropReason::InvalidRequest,
            "malformed HTTP/2 request (RFC 9113 section 8.1.1: uppercase or connection-specific header names, \
             bad or missing pseudo-headers, content-length not matching the body)"
                .into(),
        )),
        h2::Reason::REFUSED_STREAM => Some((
            DropReason::LimitExceeded,
            format!(
                "HTTP/2 stream over the limit of {max_concurrent_streams} concurrent streams \
                 (--h2-max-concurrent-streams)"
            ),
        )),
        h2::Reason::FLOW_CONTROL_ERROR
        | h2::Reason::STREAM_CLOSED
        | h2::Reason::FRAME_SIZE_ERROR
        | h2::Reason::COMPRESSION_ERROR => Some((
            DropReason::InvalidRequest,
            "HTTP/2 stream error (the client broke the protocol on this stream)".into(),
        )),
        _ => None,
    }
}

/// The drop reason and record text for a connection error, when it is a GOAWAY h2 sent because of what the client
/// did. `None` for anything else: the client's own GOAWAY, resets, I/O errors (the client went away).
pub fn refusal(e: &h2::Error) -> Option<(DropReason, String)> {
    if !(e.is_go_away() && e.is_library()) {
        return None;
    }
    Some(classify(e.reason()?, &e.to_string()))
}

/// `detail` is h2's message. h2 (0.4) leaves the GOAWAY debug data, which names the guard that fired, out of the
/// error it returns, so an ENHANCE_YOUR_CALM names every guard that sends it.
pub fn classify(reason: h2::Reason, detail: &str) -> (DropReason, String) {
    let (drop_reason, what) = if reason == h2::Reason::ENHANCE_YOUR_CALM {
        (
            DropReason::LimitExceeded,
            "HTTP/2 flood refused (rapid reset, CONTINUATION flood or HPACK bomb: one of h2's abuse limits)",
        )
    } else {
        (DropReason::InvalidRequest, "HTTP/2 protocol error")
    };
    (
        drop_reason,
        format!("{what}; connection closed with GOAWAY {reason:?} ({detail})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhance_your_calm_names_the_floods() {
        let detail = "connection error detected: detected excessive load generating behavior";
        let (reason, text) = classify(h2::Reason::ENHANCE_YOUR_CALM, detail);
        assert_eq!(reason, DropReason::LimitExceeded);
        for name in [
            "rapid reset",
            "CONTINUATION flood",
            "HPACK bomb",
            "GOAWAY ENHANCE_YOUR_CALM",
            detail,
        ] {
            assert!(text.contains(name), "{name}: {text}");
        }
    }

    #[test]
    fn protocol_errors_are_invalid_requests() {
        let (reason, text) = classify(h2::Reason::PROTOCOL_ERROR, "connection error detected");
        assert_eq!(reason, DropReason::InvalidRequest);
        assert!(
            text.starts_with("HTTP/2 protocol error; connection closed with GOAWAY PROTOCOL_ERROR"),
            "{text}"
        );
    }

    fn rst(stream: u32, code: h2::Reason) -> Frame {
        Frame::RstStream {
            stream,
            code: u32::from(code),
        }
    }

    #[test]
    fn goaway_debug_data_names_the_attack() {
        for (debug, name) in [
            ("too_many_resets", "rapid reset flood (CVE-2023-44487)"),
            (
                "too_many_continuations",
                "CONTINUATION flood (CVE-2024-27316)",
            ),
            ("header_list_way_too_large", "HPACK bomb"),
            ("too_many_internal_resets", "too many resets"),
            ("settings_flood", "SETTINGS flood (CVE-2019-9515)"),
        ] {
            let (reason, why) = goaway(h2::Reason::ENHANCE_YOUR_CALM, debug.as_bytes()).unwrap();
            assert_eq!(reason, DropReason::LimitExceeded);
            assert!(why.starts_with(&format!("HTTP/2 {name}")), "{why}");
            assert!(
                why.ends_with(&format!(
                    "GOAWAY ENHANCE_YOUR_CALM (debug data \"{debug}\")"
                )),
                "{why}"
            );
        }
        assert!(goaway(h2::Reason::NO_ERROR, b"").is_none());
        let (reason, why) = goaway(h2::Reason::FRAME_SIZE_ERROR, b"").unwrap();
        assert_eq!(reason, DropReason::InvalidRequest);
        assert_eq!(
            why,
            "HTTP/2 protocol error; connection closed with GOAWAY FRAME_SIZE_ERROR"
        );
    }

    #[test]
    fn stream_refusals_are_named_and_capped() {
        let mut log = RefusalLog::new(8, 4096);
        let r = log
            .server_frame(&rst(1, h2::Reason::REFUSED_STREAM))
            .unwrap();
        assert_eq!(
            (r.stream, r.code, r.reason),
            (1, 0, DropReason::LimitExceeded)
        );
        assert!(r.why.contains("limit of 8 concurrent streams"), "{}", r.why);
        // hyper's own resets of streams it served are not refusals.
        assert!(log.server_frame(&rst(3, h2::Reason::CANCEL)).is_none());
        assert!(log.server_frame(&rst(3, h2::Reason::NO_ERROR)).is_none());
        // The 431 h2 answers, and not the reset that follows it on the same stream.
        let h = Frame::Headers {
            stream: 5,
            end_stream: true,
            only_status_431: true,
        };
        let r = log.server_frame(&h).unwrap();
        assert_eq!((r.code, r.reason), (431, DropReason::LimitExceeded));
        assert!(
            r.why.contains("limit of 4096 bytes (--max-header-bytes)"),
            "{}",
            r.why
        );
        assert!(
            log.server_frame(&rst(5, h2::Reason::PROTOCOL_ERROR))
                .is_none()
        );
        let mut n = 2;
        let mut stream = 7;
        while let Some(r) = log.server_frame(&rst(stream, h2::Reason::PROTOCOL_ERROR)) {
            n += 1;
            stream += 2;
            if n == MAX_STREAM_RECORDS + 1 {
                assert!(
                    r.why.starts_with("more than 16 HTTP/2 streams refused"),
                    "{}",
                    r.why
                );
            } else {
                assert_eq!(r.reason, DropReason::InvalidRequest);
                assert!(r.why.starts_with("malformed HTTP/2 request"), "{}", r.why);
            }
            assert!(n <= MAX_STREAM_RECORDS + 1);
        }
        assert_eq!(n, MAX_STREAM_RECORDS + 1);
        // The connection's GOAWAY is still recorded after the cap.
        let g = Frame::GoAway {
            last_stream: 9,
            code: 11,
            debug: b"too_many_internal_resets".to_vec(),
        };
        assert!(log.server_frame(&g).is_some());
    }

    #[test]
    fn only_goaways_h2_sent_are_refusals() {
        assert!(refusal(&h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM)).is_none());
    }
}
