//! Fuzzes the Kafka request path (the `tollgate-kafka-codec` crate, `proxy/codecs/kafka`): arbitrary
//! bytes as a request frame (length check, the header decoded ahead of the body, which must agree with the whole
//! frame's decoding, header and body decoding, topic extraction) and, for every frame that decodes, the local error
//! responses the proxy would send, which must parse back as a response of the same key and version with the same
//! correlation id. The same bytes also go through the Metadata response filter. Must
//! never panic.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Decodable;
use libfuzzer_sys::fuzz_target;

use tollgate_kafka_codec::{request, response};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = request::frame_len(data[..4].try_into().unwrap(), request::DEFAULT_MAX_FRAME);
    }
    let frame = Bytes::copy_from_slice(data);
    // The header decoded ahead of the body must agree with the whole frame's decoding.
    let head = request::decode_head(data);
    if let Ok(req) = request::decode(frame.clone()) {
        let head = head.expect("a frame that decodes has a header that decodes");
        assert_eq!(
            (head.api_key, head.api_version, head.correlation_id, head.client_id.as_deref()),
            (req.api_key, req.api_version, req.correlation_id, req.client_id.as_deref())
        );
        for code in [29, 100] {
            match response::error_frame(&req, code) {
                Ok(out) => {
                    let mut b = out.slice(4..);
                    let len = i32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
                    assert_eq!(len, b.len());
                    let h = ResponseHeader::decode(
                        &mut b,
                        req.api_key.response_header_version(req.api_version),
                    )
                    .expect("self-built response header parses");
                    assert_eq!(h.correlation_id, req.correlation_id);
                    ResponseKind::decode(req.api_key, &mut b, req.api_version)
                        .expect("self-built response body parses");
                }
                Err(response::ResponseError::NoLocalResponse(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    // As a broker's Metadata response, in a version taken from the input.
    let version = data.first().map_or(0, |b| i16::from(*b % 14));
    let _ = response::filter_metadata(&frame, version, data.len() % 2 == 0, |t| t.len() % 2 == 0);
});
