//! Fuzzes the HTTP/2 frame reader the proxy runs on both directions of every h2 connection it serves (the
//! `tollgate-h2-codec` crate, `proxy/codecs/h2`): arbitrary bytes as what the server writes and, after the
//! preface, as what a client writes. Must never panic, must keep at most `MAX_CAPTURE` bytes of any payload, and
//! must report the same frames however the bytes are split into reads (the first byte picks the split).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_h2_codec::h2_frames::{Frame, FrameReader, MAX_CAPTURE, PREFACE};

fn whole(mut r: FrameReader, data: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    r.feed(data, &mut |f| out.push(f));
    out
}

fn pieces(mut r: FrameReader, data: &[u8], step: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    for chunk in data.chunks(step) {
        r.feed(chunk, &mut |f| out.push(f));
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let step = usize::from(split % 17) + 1;
    let server = whole(FrameReader::from_server(), data);
    assert_eq!(server, pieces(FrameReader::from_server(), data, step));
    for f in &server {
        if let Frame::GoAway { debug, .. } = f {
            assert!(debug.len() <= MAX_CAPTURE - 8);
        }
    }
    let mut client = PREFACE.to_vec();
    client.extend_from_slice(data);
    let from_client = whole(FrameReader::from_client(), &client);
    assert_eq!(from_client, server, "the preface is skipped, nothing else changes");
    assert_eq!(from_client, pieces(FrameReader::from_client(), &client, step));
});
