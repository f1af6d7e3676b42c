//! Names the attack behind an HTTP/2 connection the h2 library closed itself. h2 guards against rapid reset,
//! CONTINUATION floods and HPACK bombs inside the connection (GOAWAY, then the connection future fails): hyper never
//! sees a request, so without this the refusal would leave no flow record.

use crate::flow::DropReason;

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

    #[test]
    fn only_goaways_h2_sent_are_refusals() {
        assert!(refusal(&h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM)).is_none());
    }
}
