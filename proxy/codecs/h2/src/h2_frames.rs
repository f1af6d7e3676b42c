//! A reader of HTTP/2 frames (RFC 9113 section 4.1) from one direction of a connection, fed the bytes in whatever
//! pieces they were read or written. It reports the few frames the proxy acts on and skips every other payload
//! without buffering it: memory per reader is fixed (a 9-byte header, at most [`MAX_CAPTURE`] bytes of one payload),
//! whatever the peer sends.

/// Payload bytes kept of one frame: a GOAWAY's last-stream-id, code and the start of its debug data; the start of a
/// HEADERS block. The rest of any payload is skipped.
pub const MAX_CAPTURE: usize = 128;

/// The client connection preface (RFC 9113 section 3.4), before the client's first frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADER_LEN: usize = 9;

/// Frame types (RFC 9113 section 6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A frame the proxy acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SETTINGS; `ack` for the acknowledgement of the peer's.
    Settings {
        ack: bool,
    },
    /// The first frame of a header block. `only_status_431`: the block is one field, `:status: 431` (how the h2
    /// library answers a request whose header list is over its limit; a response hyper writes always has more).
    Headers {
        stream: u32,
        end_stream: bool,
        only_status_431: bool,
    },
    RstStream {
        stream: u32,
        code: u32,
    },
    /// `debug` is the start of the debug data (at most [`MAX_CAPTURE`] - 8 bytes).
    GoAway {
        last_stream: u32,
        code: u32,
        debug: Vec<u8>,
    },
}

/// Reads frames from one direction of one connection.
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes of the client preface still to skip (the client-to-server direction starts with it).
    preface_left: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// The frame whose payload is being read: its header fields, payload bytes left, what was kept of it.
    current: Option<Current>,
}

#[derive(Debug)]
struct Current {
    kind: u8,
    flags: u8,
    stream: u32,
    length: usize,
    left: usize,
    kept: Vec<u8>,
}

impl FrameReader {
    /// A reader of what the server writes.
    pub fn from_server() -> Self {
        Self::new(0)
    }

    /// A reader of what the client writes: the connection preface, then frames. A stream that does not start
    /// with the preface is not HTTP/2; [`FrameReader::feed`] then reports nothing ever.
    pub fn from_client() -> Self {
        Self::new(PREFACE.len())
    }

    fn new(preface_left: usize) -> Self {
        Self {
            preface_left,
            header: [0; HEADER_LEN],
            header_len: 0,
            current: None,
        }
    }

    /// `false` once the client direction turned out not to start with the preface.
    pub fn is_http2(&self) -> bool {
        self.preface_left != usize::MAX
    }

    /// Whether every byte fed so far belongs to a complete frame (or the preface): the place another frame may be
    /// written into the stream.
    pub fn at_frame_boundary(&self) -> bool {
        self.header_len == 0 && self.current.is_none()
    }

    /// Reads `bytes`, the next ones of the direction, and calls `on_frame` for every frame of interest whose
    /// payload (or captured start of it) is complete.
    pub fn feed(&mut self, mut bytes: &[u8], on_frame: &mut impl FnMut(Frame)) {
        bytes = self.skip_preface(bytes);
        while !bytes.is_empty() {
            match self.current.as_mut() {
                None => {
                    let take = (HEADER_LEN - self.header_len).min(bytes.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&bytes[..take]);
                    self.header_len += take;
                    bytes = &bytes[take..];
                    if self.header_len == HEADER_LEN {
                        self.header_len = 0;
                        self.current = Some(Current::from_header(&self.header));
                    }
                }
                Some(cur) => {
                    let take = cur.left.min(bytes.len());
                    let want = cur.capture_len().saturating_sub(cur.kept.len()).min(take);
                    cur.kept.extend_from_slice(&bytes[..want]);
                    cur.left -= take;
                    bytes = &bytes[take..];
                }
            }
            // A frame ends when its payload does (at once for an empty payload).
            if self.current.as_ref().is_some_and(|c| c.left == 0)
                && let Some(frame) = self.current.take().and_then(Current::finish)
            {
                on_frame(frame);
            }
        }
    }

    fn skip_preface<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        if self.preface_left == 0 {
            return bytes;
        }
        if self.preface_left == usize::MAX {
            return &[];
        }
        let done = PREFACE.len() - self.preface_left;
        let take = self.preface_left.min(bytes.len());
        if bytes[..take] != PREFACE[done..done + take] {
            self.preface_left = usize::MAX;
            return &[];
        }
        self.preface_left -= take;
        &bytes[take..]
    }
}

impl Current {
    fn from_header(h: &[u8; HEADER_LEN]) -> Self {
        let length = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        Self {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            length,
            left: length,
            kept: Vec::new(),
        }
    }

    fn capture_len(&self) -> usize {
        match self.kind {
            HEADERS | RST_STREAM | GOAWAY => MAX_CAPTURE,
            _ => 0,
        }
    }

    fn finish(self) -> Option<Frame> {
        let k = &self.kept;
        match self.kind {
            SETTINGS => Some(Frame::Settings {
                ack: self.flags & ACK != 0,
            }),
            RST_STREAM if k.len() >= 4 => Some(Frame::RstStream {
                stream: self.stream,
                code: be32(&k[0..4]),
            }),
            GOAWAY if k.len() >= 8 => Some(Frame::GoAway {
                last_stream: be32(&k[0..4]) & 0x7fff_ffff,
                code: be32(&k[4..8]),
                debug: k[8..].to_vec(),
            }),
            HEADERS => Some(Frame::Headers {
                stream: self.stream,
                end_stream: self.flags & END_STREAM != 0,
                only_status_431: self.flags & END_HEADERS != 0
                    && header_block(self.flags, self.length, k).is_some_and(only_status_431),
            }),
            _ => None,
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The header block fragment of a HEADERS frame whose payload was `length` bytes, of which `kept` is the start:
/// `None` when the block is longer than what was kept or the padding does not fit.
fn header_block(flags: u8, length: usize, kept: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*kept.first()?);
        start += 1;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    let end = length.checked_sub(pad)?;
    if start > end || end > kept.len() {
        return None;
    }
    Some(&kept[start..end])
}

/// "431" Huffman-coded (RFC 7541 appendix B): 011010 011001 00001, then 7 padding one-bits.
const HUFFMAN_431: &[u8] = &[0x69, 0x90, 0xff];

/// Whether `block` is one header field, `:status: 431`, after any dynamic table size updates: a literal (with,
/// without or never indexing) whose name is one of `:status`'s static entries (8-14) and whose value is "431",
/// raw or Huffman-coded; or one index into the dynamic table (where an earlier such literal may have put it).
fn only_status_431(mut block: &[u8]) -> bool {
    // Dynamic table size updates: 001xxxxx, a 5-bit-prefix integer.
    while block.first().is_some_and(|b| b & 0xe0 == 0x20) {
        match hpack_int(block, 5) {
            Some((_, used)) => block = &block[used..],
            None => return false,
        }
    }
    let Some(&first) = block.first() else {
        return false;
    };
    if first & 0x80 != 0 {
        // Indexed field past the 61 static entries, and nothing after it.
        return hpack_int(block, 7).is_some_and(|(index, used)| index > 61 && used == block.len());
    }
    let prefix = if first & 0x40 != 0 { 6 } else { 4 };
    let Some((name, used)) = hpack_int(block, prefix) else {
        return false;
    };
    if !(8..=14).contains(&name) {
        return false;
    }
    let value = &block[used..];
    let Some((len, head)) = hpack_int(value, 7) else {
        return false;
    };
    let text = &value[head..];
    let huffman = value[0] & 0x80 != 0;
    len == text.len() as u64 && text == if huffman { HUFFMAN_431 } else { b"431" }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1): its value and the bytes it took. `None` when
/// it is cut short or larger than fits the dynamic tables anyone uses (2^28).
fn hpack_int(b: &[u8], n: u32) -> Option<(u64, usize)> {
    let max = (1u64 << n) - 1;
    let mut value = u64::from(*b.first()?) & max;
    if value < max {
        return Some((value, 1));
    }
    for (i, byte) in b.iter().enumerate().skip(1).take(4) {
        value += u64::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Builds a frame: the 9-byte header and `payload`. For the proxy's own GOAWAY and for tests.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .min(0x00ff_ffff);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
    out
}

/// A GOAWAY frame: `last_stream`, error `code`, `debug` data.
pub fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + debug.len());
    payload.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(debug);
    frame(GOAWAY, 0, 0, &payload)
}

/// Frame type codes, for callers that build frames.
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = super::HEADERS;
    pub const RST_STREAM: u8 = super::RST_STREAM;
    pub const SETTINGS: u8 = super::SETTINGS;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = super::GOAWAY;
    pub const CONTINUATION: u8 = 0x9;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(r: &mut FrameReader, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        r.feed(bytes, &mut |f| out.push(f));
        out
    }

    fn server_stream() -> Vec<u8> {
        let mut s = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 1, 0]);
        s.extend(frame(SETTINGS, ACK, 0, &[]));
        s.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &[0x08, 0x83, 0x69, 0x90, 0xff],
        ));
        s.extend(frame(0x0, 0, 3, &[7; 300]));
        s.extend(frame(RST_STREAM, 0, 3, &1u32.to_be_bytes()));
        s.extend(goaway(3, 11, b"too_many_resets"));
        s
    }

    fn expected() -> Vec<Frame> {
        vec![
            Frame::Settings { ack: false },
            Frame::Settings { ack: true },
            Frame::Headers {
                stream: 1,
                end_stream: true,
                only_status_431: true,
            },
            Frame::RstStream { stream: 3, code: 1 },
            Frame::GoAway {
                last_stream: 3,
                code: 11,
                debug: b"too_many_resets".to_vec(),
            },
        ]
    }

    #[test]
    fn reads_frames_whole_and_byte_by_byte() {
        let s = server_stream();
        assert_eq!(read(&mut FrameReader::from_server(), &s), expected());
        let mut r = FrameReader::from_server();
        let mut out = Vec::new();
        for b in &s {
            r.feed(std::slice::from_ref(b), &mut |f| out.push(f));
        }
        assert_eq!(out, expected());
    }

    #[test]
    fn client_direction_skips_the_preface_and_ignores_http1() {
        let mut s = PREFACE.to_vec();
        s.extend(frame(SETTINGS, 0, 0, &[]));
        let mut r = FrameReader::from_client();
        assert_eq!(read(&mut r, &s[..10]), vec![]);
        assert_eq!(read(&mut r, &s[10..]), vec![Frame::Settings { ack: false }]);
        let mut h1 = FrameReader::from_client();
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(read(&mut h1, req), vec![]);
        assert!(!h1.is_http2());
        assert_eq!(read(&mut h1, &frame(SETTINGS, 0, 0, &[])), vec![]);
    }

    #[test]
    fn debug_data_and_header_blocks_are_capped() {
        let mut r = FrameReader::from_server();
        let out = read(&mut r, &goaway(1, 11, &[b'x'; 70_000]));
        let Frame::GoAway { debug, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(debug.len(), MAX_CAPTURE - 8);
        assert!(r.current.is_none() && r.header_len == 0);
        // A long block is never a lone 431, even when it starts like one.
        let mut block = vec![0x48, 0x83, 0x69, 0x90, 0xff];
        block.extend([0x88; 200]);
        let out = read(&mut r, &frame(HEADERS, END_HEADERS, 1, &block));
        assert!(
            matches!(
                out[0],
                Frame::Headers {
                    only_status_431: false,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn lone_431_recognised_in_every_form() {
        let yes: &[&[u8]] = &[
            &[0x08, 0x83, 0x69, 0x90, 0xff],
            &[0xbe],
            &[0xff, 0x10],
            &[0x3f, 0xe1, 0x1f, 0xbe],
        ];
        let no: &[&[u8]] = &[
            &[0x88],
            &[0xbe, 0xbf],
            &[0x48, 0x83, 0x69, 0x90],
            &[0xff],
            &[],
        ];
        for b in yes {
            assert!(only_status_431(b), "{b:x?}");
        }
        for b in no {
            assert!(!only_status_431(b), "{b:x?}");
        }
        // Padding and priority are stripped first; a block without END_HEADERS is never a lone field.
        let mut padded = vec![2];
        padded.extend([0, 0, 0, 0, 16]);
        padded.extend([0x08, 0x83, 0x69, 0x90, 0xff]);
        padded.extend([0, 0]);
        let f = frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 5, &padded);
        let out = read(&mut FrameReader::from_server(), &f);
        assert!(
            matches!(
                out[0],
                Frame::Headers {
                    only_status_431: true,
                    stream: 5,
                    ..
                }
            ),
            "{out:?}"
        );
        let f = frame(HEADERS, 0, 5, &[0x08, 0x83, 0x69, 0x90, 0xff]);
        let out = read(&mut FrameReader::from_server(), &f);
        assert!(
            matches!(
                out[0],
                Frame::Headers {
                    only_status_431: false,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn short_payloads_report_nothing_or_no_431() {
        let mut s = frame(RST_STREAM, 0, 1, &[0, 0]);
        s.extend(frame(GOAWAY, 0, 0, &[0; 7]));
        s.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x88]));
        let out = read(&mut FrameReader::from_server(), &s);
        assert_eq!(
            out,
            vec![Frame::Headers {
                stream: 1,
                end_stream: false,
                only_status_431: false
            }]
        );
    }
}
