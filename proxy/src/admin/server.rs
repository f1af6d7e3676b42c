//! The admin socket server: a Unix stream socket, mode 0600 from the moment it has its name, one request line and
//! one response line per connection. Bounded: request size, a deadline per client for the whole exchange, and a
//! cap on concurrent clients (the one over it is answered "busy" and closed).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::handlers::{DaemonView, handle};
use super::protocol::{MAX_REQUEST_BYTES, Request, Response};

/// Limits of the admin socket.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub max_request_bytes: usize,
    /// For reading the request, answering it and writing the answer.
    pub client_timeout: Duration,
    pub max_clients: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_request_bytes: MAX_REQUEST_BYTES,
            client_timeout: Duration::from_secs(10),
            max_clients: 16,
        }
    }
}

/// Binds `path` with mode 0600: bound under a temporary name, chmod-ed, then renamed into place, so the socket is
/// never reachable by its name with looser permissions. A stale socket (or a predecessor's, during a planned
/// restart) at `path` is replaced: the newest daemon answers.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "admin.sock".into()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Accepts until `shutdown`; then removes the socket file if it is still ours.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    daemon: Arc<dyn DaemonView>,
    limits: AdminLimits,
    shutdown: CancellationToken,
) {
    let ours = inode(&path);
    let clients = Arc::new(Semaphore::new(limits.max_clients));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let permit = clients.clone().try_acquire_owned();
                    let daemon = daemon.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = permit else {
                            let answer = Response::err(
                                "the daemon is serving too many admin clients; retry in a moment");
                            let busy = reply(stream, &answer, limits);
                            let _ = tokio::time::timeout(limits.client_timeout, busy).await;
                            return;
                        };
                        let _ = tokio::time::timeout(limits.client_timeout, client(stream, daemon, limits)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!("admin socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    // A successor may already own the name: only remove our own socket.
    if ours.is_some() && inode(&path) == ours {
        let _ = std::fs::remove_file(&path);
    }
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

async fn client(stream: UnixStream, daemon: Arc<dyn DaemonView>, limits: AdminLimits) {
    let (read, write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(limits.max_request_bytes as u64 + 1));
    let response = match reader.read_until(b'\n', &mut line).await {
        Err(e) => Response::err(format!("reading the request: {e}")),
        Ok(_) if line.len() > limits.max_request_bytes => Response::err(format!(
            "request longer than {} bytes",
            limits.max_request_bytes
        )),
        Ok(_) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Response::err(format!(
                "not an admin request ({e}); this socket speaks one JSON line, e.g. {{\"request\":\"status\"}}"
            )),
            // Reading the pinned maps is blocking work: keep it off the async workers.
            Ok(req) => tokio::task::spawn_blocking(move || handle(daemon.as_ref(), req))
                .await
                .unwrap_or_else(|e| Response::err(format!("the handler failed: {e}"))),
        },
    };
    let _ = reply_half(write, &response).await;
    // Unix sockets reset a connection closed with unread input, which would lose the answer just written: drain
    // what the client still sends (bounded, and within the client's deadline) before closing.
    let mut rest = reader
        .into_inner()
        .into_inner()
        .take(limits.max_request_bytes as u64);
    let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
}

/// Answers without reading the request (busy), then drains the request so the answer is not lost to a reset.
async fn reply(stream: UnixStream, r: &Response, limits: AdminLimits) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    reply_half(write, r).await?;
    let mut rest = read.take(limits.max_request_bytes as u64);
    tokio::io::copy(&mut rest, &mut tokio::io::sink())
        .await
        .map(drop)
}

async fn reply_half(mut w: tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(r).unwrap_or_default();
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::client::{ClientError, call};

    fn start(dir: &Path, limits: AdminLimits) -> (PathBuf, CancellationToken) {
        let path = dir.join("admin.sock");
        let listener = bind(&path).unwrap();
        let stop = CancellationToken::new();
        let daemon: Arc<dyn DaemonView> = Arc::new(crate::admin::handlers::tests::Fake::new());
        tokio::spawn(serve(listener, path.clone(), daemon, limits, stop.clone()));
        (path, stop)
    }

    fn tempdir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tg-admin-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_0600_answers_and_bounds_requests() {
        let dir = tempdir();
        let (path, stop) = start(&dir, AdminLimits::default());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let p = path.clone();
        let v =
            tokio::task::spawn_blocking(move || call(&p, &Request::Status, Duration::from_secs(5)))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(v["policy"]["generation"], 1);
        // An oversized request line is refused with the limit, not read without bound.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let w = s.write_all(&big).await;
        let mut answer = String::new();
        let r = s.read_to_string(&mut answer).await;
        assert!(w.is_ok() && r.is_ok(), "{w:?} {r:?}");
        assert!(answer.contains("request longer than"), "{answer}");
        // Garbage gets the protocol's hint.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"hello\n").await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("request\\\":\\\"status"), "{answer}");
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !path.exists(),
            "the daemon removes its own socket on shutdown"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_is_cut_at_the_deadline_and_extra_clients_hear_busy() {
        let dir = tempdir();
        let limits = AdminLimits {
            client_timeout: Duration::from_millis(300),
            max_clients: 1,
            ..Default::default()
        };
        let (path, stop) = start(&dir, limits);
        let mut silent = UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let p = path.clone();
        let busy =
            tokio::task::spawn_blocking(move || call(&p, &Request::Status, Duration::from_secs(5)))
                .await
                .unwrap();
        assert!(
            matches!(&busy, Err(ClientError::Daemon { message, .. }) if message.contains("too many")),
            "{busy:?}"
        );
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        let n = silent.read_to_end(&mut buf).await.unwrap();
        assert_eq!(n, 0, "closed without an answer");
        assert!(started.elapsed() < Duration::from_secs(2));
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn client_errors_name_the_socket_and_the_fix() {
        let missing = Path::new("/nonexistent/tollgate/admin.sock");
        let e = call(missing, &Request::Status, Duration::from_secs(1)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("/nonexistent/tollgate/admin.sock")
                && text.contains("start `tollgate run`"),
            "{text}"
        );
        // A socket file nobody listens on.
        let dir = tempdir();
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let e = call(&stale, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::Refused(_)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
