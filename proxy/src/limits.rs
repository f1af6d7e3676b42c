//! Resource limits with the defaults users expect from a production HTTP proxy. Exceeding one answers with the
//! protocol's own error (431, 400, 408, 503, GOAWAY/RST_STREAM) and a flow record; never a panic.

use std::time::Duration;

/// Per-process limits. Every field has a `--flag` on `tollgate run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line + headers) in bytes; HTTP/1 answers 431 beyond it, HTTP/2 refuses the
    /// stream (hyper sends 431 for an oversized header list).
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1 request; 431 beyond it.
    pub max_headers: usize,
    /// Time a client has to send a complete HTTP/1 request head after connecting or after the previous response,
    /// and time any connection to an HTTP port has to start its first request (protocol detection included).
    pub header_read_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed (gracefully for HTTP); an HTTP
    /// connection on which no request started for this long is closed too (h2 PINGs alone do not keep it).
    /// Upgraded (WebSocket, CONNECT) tunnels obey it as well.
    pub idle_timeout: Duration,
    /// A request body has this long to start, and earns one second more per `body_min_rate` bytes delivered;
    /// one falling behind gets 408 (a trickled body cannot hold a connection forever).
    pub body_grace: Duration,
    /// See `body_grace`, in bytes per second.
    pub body_min_rate: u64,
    /// Concurrent downstream connections; beyond it an HTTP port answers 503 and closes, others are closed.
    pub max_connections: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub h2_max_concurrent_streams: u32,
    /// Time to connect to the original destination.
    pub connect_timeout: Duration,
    /// After the listener is handed to a successor (or closed on SIGTERM), open connections keep being served
    /// normally for up to this long, so clients holding a keep-alive or h2 connection finish their work without
    /// an error; then they are asked to close (GOAWAY / `Connection: close`) and reconnect to the successor.
    pub drain: Duration,
    /// How long in-flight requests get to finish once connections are asked to close.
    pub shutdown_grace: Duration,
    /// Largest Kafka request frame (8 MiB: 8 times what clients send by default); a bigger one closes the
    /// connection with a flow record before any of it is buffered.
    pub kafka_max_frame: usize,
    /// Largest Kafka response frame (100 MiB, brokers' `socket.request.max.bytes`: Fetch responses are streamed).
    pub kafka_max_response: usize,
    /// Bytes of Kafka request frames being received, all connections together (`kafka_state::budget`); a frame waits
    /// for room within its deadline.
    pub kafka_inflight_budget: usize,
    /// Time from a Kafka request frame's first byte to its last (budget waits included); past it the connection
    /// is closed with a DROPPED record, so a frame announced and never finished holds nothing for long.
    pub kafka_frame_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            body_grace: Duration::from_secs(30),
            body_min_rate: 500,
            max_connections: 16_384,
            h2_max_concurrent_streams: 256,
            connect_timeout: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            kafka_max_frame: tollgate_kafka_codec::request::DEFAULT_MAX_FRAME,
            kafka_max_response: tollgate_kafka_codec::request::DEFAULT_MAX_RESPONSE,
            // Three frames at the 8 MiB limit, or 18 MiB of frame bodies (`kafka_state::budget`) and 6 MiB kept for
            // small requests; RSS stays well under 64 MiB whatever the clients announce.
            kafka_inflight_budget: 24 * 1024 * 1024,
            kafka_frame_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// hyper's HTTP/1 read buffer must hold one full head; it refuses values below 8 KiB.
    pub fn h1_max_buf_size(&self) -> usize {
        self.max_header_bytes.max(8192)
    }
}
