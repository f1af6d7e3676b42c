//! `tollgate-tls-bench`: full mTLS handshakes per second with the node-to-node tunnel's TLS stack (crate `certs`:
//! rustls, TLS 1.3 only, ALPN h2, client certificate required, no session resumption). Driven by
//! `tests/tests/mtls_bench.rs`, which also runs HAProxy (OpenSSL) on the same core for comparison.
//!
//! `tollgate-tls-bench serve --listen ADDR --svid-dir DIR`
//!   A current_thread tokio server with `certs::server_config` and the SVID of `DIR` (`svid.pem`, `svid.key`,
//!   `bundle.pem`, read through `certs::FileSource` as the proxy does). The handshake path is the tunnel server's:
//!   nodelay, accept with a 10 s timeout, peer SPIFFE ID read; then it writes `ok`, sends close_notify and closes.
//!   Prints `listening on ADDR` when ready; on SIGTERM/SIGINT prints one JSON line
//!   `{"accepted", "handshakes", "failures", "errors"}` and exits.
//!
//! `tollgate-tls-bench load --connect ADDR --svid-dir DIR --connections N --duration-secs S`
//!   `[--openssl-compatible | --plain-h2c]`
//!   N concurrent loops (tokio multi-thread runtime, one worker per CPU it may run on), each doing full handshakes
//!   back to back with `certs::client_config` and the SVID of `DIR`: a new TCP connection each time, no resumption.
//!   Without `--openssl-compatible` it expects exactly `ok` then a clean close (the `serve` side). With it, it sends
//!   a minimal HTTP/2 request (preface, empty SETTINGS, `GET /`) and waits for a HEADERS frame carrying `:status
//!   200`, which is what HAProxy in `mode http` with `http-request return status 200` answers on an h2 connection.
//!   Either way an answer from the server proves it accepted the client certificate. `--plain-h2c` sends the same
//!   HTTP/2 request over plain TCP without TLS (`--svid-dir` still required, unused): what HAProxy spends on the
//!   HTTP/2 part alone, to separate it from the handshake. Prints one JSON line:
//!   `{"handshakes", "failures", "secs", "per_sec", "errors", "tickets_received", "negotiated"}`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use certs::{AllowedIds, FileSource, SvidFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The tunnel server's handshake timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// One connection of the load generator, handshake and answer included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How many distinct error messages are kept for the report.
const MAX_ERRORS: usize = 8;

const USAGE: &str = "usage:
  tollgate-tls-bench serve --listen ADDR --svid-dir DIR
  tollgate-tls-bench load --connect ADDR --svid-dir DIR --connections N --duration-secs S [--openssl-compatible | --plain-h2c]";

/// `--name value` pairs and bare `--flag`s.
#[derive(Debug, Default)]
struct Args {
    pairs: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Args {
    fn parse(args: &[String], flag_names: &[&str]) -> Result<Self> {
        let mut out = Args::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}\n{USAGE}");
            };
            if flag_names.contains(&name) {
                out.flags.push(name.to_owned());
            } else {
                let v = it
                    .next()
                    .with_context(|| format!("--{name} needs a value\n{USAGE}"))?;
                out.pairs.push((name.to_owned(), v.clone()));
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .with_context(|| format!("--{name} is required\n{USAGE}"))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.get(name)?;
        v.parse()
            .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}"))
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

/// Loads the SVID directory through the same file source the proxy uses; the source keeps polling the files.
fn load_store(dir: &str) -> Result<(Arc<certs::SvidStore>, certs::SourceHandle)> {
    let files = SvidFiles::in_dir(&PathBuf::from(dir));
    FileSource::new(&files)
        .start()
        .with_context(|| format!("loading the SVID from {dir}"))
}

/// Distinct error messages, at most [`MAX_ERRORS`].
#[derive(Debug, Default)]
struct Errors(Mutex<Vec<String>>);

impl Errors {
    fn note(&self, msg: String) {
        let mut v = self.0.lock().expect("errors lock");
        if v.len() < MAX_ERRORS && !v.contains(&msg) {
            v.push(msg);
        }
    }

    fn list(&self) -> Vec<String> {
        self.0.lock().expect("errors lock").clone()
    }
}

#[derive(Debug, Default)]
struct ServerStats {
    accepted: AtomicU64,
    handshakes: AtomicU64,
    failures: AtomicU64,
    errors: Errors,
}

fn serve(args: &Args) -> Result<()> {
    let listen: SocketAddr = args.parsed("listen")?;
    let svid_dir = args.get("svid-dir")?.to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (store, _source) = load_store(&svid_dir)?;
        let config = certs::server_config(&store, AllowedIds::AnyTrusted)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("listening on {}", listener.local_addr()?);
        let stats = Arc::new(ServerStats::default());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (tcp, _peer) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(&acceptor, tcp).await {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    stats.errors.note(format!("{e:#}"));
                } else {
                    stats.handshakes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        println!(
            "{}",
            serde_json::json!({
                "accepted": stats.accepted.load(Ordering::Relaxed),
                "handshakes": stats.handshakes.load(Ordering::Relaxed),
                "failures": stats.failures.load(Ordering::Relaxed),
                "errors": stats.errors.list(),
            })
        );
        Ok(())
    })
}

/// The tunnel server's handshake path, then `ok` and a clean close instead of HTTP/2.
async fn serve_one(acceptor: &TlsAcceptor, tcp: TcpStream) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("TLS handshake did not finish in time")?
        .map_err(|e| match certs::PeerRejection::from_io_error(&e) {
            Some(r) => anyhow::anyhow!("peer refused ({}): {e}", r.code()),
            None => anyhow::anyhow!("handshake: {e}"),
        })?;
    if certs::peer_spiffe_id(tls.get_ref().1).is_none() {
        bail!("handshake finished without a peer SPIFFE ID");
    }
    tls.write_all(b"ok").await.context("writing the reply")?;
    tls.shutdown().await.context("closing")?;
    Ok(())
}

/// What one successful connection negotiated (reported once, from the first success).
#[derive(Debug, Clone)]
struct Negotiated {
    protocol: String,
    cipher_suite: String,
    key_exchange: String,
    alpn: String,
    peer_id: String,
}

#[derive(Debug, Default)]
struct LoadStats {
    handshakes: AtomicU64,
    failures: AtomicU64,
    errors: Errors,
    /// Filled by the first success only (formatting it costs client CPU, which the load generator is short of).
    negotiated: std::sync::OnceLock<Negotiated>,
    /// TLS 1.3 NewSessionTickets received, summed over connections (both servers are set up to send none).
    tickets: AtomicU64,
}

/// The client half of an HTTP/2 connection with one `GET /` (stream 1, END_STREAM): the preface, an empty SETTINGS
/// frame, and a HEADERS frame whose HPACK block uses static-table entries only (`:method GET`, `:scheme https`,
/// `:path /`) plus a literal `:authority bench`.
const H2_REQUEST: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
\x00\x00\x00\x04\x00\x00\x00\x00\x00\
\x00\x00\x0a\x01\x05\x00\x00\x00\x01\x82\x87\x84\x41\x05bench";

const H2_FRAME_HEADERS: u8 = 0x1;
const H2_FRAME_RST_STREAM: u8 = 0x3;
const H2_FRAME_GOAWAY: u8 = 0x7;
const H2_FLAG_PADDED: u8 = 0x8;
const H2_FLAG_PRIORITY: u8 = 0x20;
/// HPACK static-table index 8 (`:status 200`) as an indexed header field.
const HPACK_STATUS_200: u8 = 0x88;

async fn load_one(
    connector: &TlsConnector,
    addr: SocketAddr,
    openssl_compatible: bool,
    plain_h2c: bool,
    stats: &LoadStats,
) -> Result<()> {
    let mut tcp = TcpStream::connect(addr).await.context("TCP connect")?;
    let _ = tcp.set_nodelay(true);
    if plain_h2c {
        tcp.write_all(H2_REQUEST)
            .await
            .context("writing the h2c request")?;
        return read_h2_status_200(&mut tcp).await;
    }
    let mut tls = connector
        .connect(certs::server_name(), tcp)
        .await
        .map_err(|e| match certs::PeerRejection::from_io_error(&e) {
            Some(r) => anyhow::anyhow!("server refused by our verifier ({}): {e}", r.code()),
            None => anyhow::anyhow!("handshake: {e}"),
        })?;
    if stats.negotiated.get().is_none() {
        let conn = tls.get_ref().1;
        let _ = stats.negotiated.set(Negotiated {
            protocol: format!("{:?}", conn.protocol_version()),
            cipher_suite: format!("{:?}", conn.negotiated_cipher_suite().map(|s| s.suite())),
            key_exchange: format!(
                "{:?}",
                conn.negotiated_key_exchange_group().map(|g| g.name())
            ),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            peer_id: certs::peer_spiffe_id(conn)
                .map(|id| id.to_string())
                .unwrap_or_default(),
        });
    }
    if openssl_compatible {
        tls.write_all(H2_REQUEST)
            .await
            .context("writing the h2 request")?;
        read_h2_status_200(&mut tls).await?;
    } else {
        let mut reply = Vec::with_capacity(8);
        tls.read_to_end(&mut reply)
            .await
            .context("reading the reply")?;
        if reply != b"ok" {
            bail!(
                "expected the reply \"ok\", got {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
    }
    // Tickets come before any application data, so every one sent has been read by now.
    let tickets = tls.get_ref().1.tls13_tickets_received();
    if tickets > 0 {
        stats
            .tickets
            .fetch_add(u64::from(tickets), Ordering::Relaxed);
    }
    Ok(())
}

/// Reads HTTP/2 frames until the HEADERS frame of stream 1; fails unless it starts with `:status 200`.
async fn read_h2_status_200<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        // Every complete frame in the buffer.
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = &buf[9..9 + len];
            match kind {
                H2_FRAME_HEADERS if stream == 1 => {
                    let mut block = payload;
                    if flags & H2_FLAG_PADDED != 0 {
                        block = block.get(1..).unwrap_or_default();
                    }
                    if flags & H2_FLAG_PRIORITY != 0 {
                        block = block.get(5..).unwrap_or_default();
                    }
                    if block.first() == Some(&HPACK_STATUS_200) {
                        return Ok(());
                    }
                    bail!("the response HEADERS do not start with :status 200: {block:02x?}");
                }
                H2_FRAME_RST_STREAM if stream == 1 => bail!("the server reset the request stream"),
                H2_FRAME_GOAWAY => bail!("the server sent GOAWAY: {payload:02x?}"),
                _ => {}
            }
            buf.drain(..9 + len);
        }
        let n = s
            .read(&mut chunk)
            .await
            .context("reading the h2 response")?;
        if n == 0 {
            bail!("the connection closed before the response HEADERS");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn load(args: &Args) -> Result<()> {
    let addr: SocketAddr = args.parsed("connect")?;
    let svid_dir = args.get("svid-dir")?.to_owned();
    let connections: usize = args.parsed("connections")?;
    let duration = Duration::from_secs_f64(args.parsed("duration-secs")?);
    let plain_h2c = args.flag("plain-h2c");
    let openssl_compatible = args.flag("openssl-compatible") || plain_h2c;
    if connections == 0 {
        bail!("--connections must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (store, _source) = load_store(&svid_dir)?;
        let config = certs::client_config(&store, AllowedIds::AnyTrusted)?;
        let connector = TlsConnector::from(Arc::new(config));
        let stats = Arc::new(LoadStats::default());
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let connector = connector.clone();
            let stats = stats.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let one = tokio::time::timeout(
                        CONNECTION_TIMEOUT,
                        load_one(&connector, addr, openssl_compatible, plain_h2c, &stats),
                    )
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("connection timed out")));
                    match one {
                        Ok(()) => {
                            stats.handshakes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.failures.fetch_add(1, Ordering::Relaxed);
                            stats.errors.note(format!("{e:#}"));
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let handshakes = stats.handshakes.load(Ordering::Relaxed);
        let negotiated = stats.negotiated.get().cloned();
        println!(
            "{}",
            serde_json::json!({
                "handshakes": handshakes,
                "failures": stats.failures.load(Ordering::Relaxed),
                "secs": secs,
                "per_sec": handshakes as f64 / secs,
                "errors": stats.errors.list(),
                "tickets_received": stats.tickets.load(Ordering::Relaxed),
                "negotiated": negotiated.map(|n| serde_json::json!({
                    "protocol": n.protocol,
                    "cipher_suite": n.cipher_suite,
                    "key_exchange": n.key_exchange,
                    "alpn": n.alpn,
                    "peer_id": n.peer_id,
                })),
            })
        );
        Ok(())
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.first().map(String::as_str) {
        Some("serve") => Args::parse(&argv[1..], &[]).and_then(|a| serve(&a)),
        Some("load") => {
            Args::parse(&argv[1..], &["openssl-compatible", "plain-h2c"]).and_then(|a| load(&a))
        }
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-tls-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
