//! The CLI side of the admin socket: one request, one answer, and errors that name the socket and the fix.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::protocol::{MAX_RESPONSE_BYTES, Request, Response};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "no tollgate daemon at {0}: the socket does not exist; start `tollgate run`, or point --admin-socket \
         (TOLLGATE_ADMIN_SOCKET) at the daemon's socket (default: admin.sock beside its --handoff-socket)"
    )]
    NoSocket(PathBuf),
    #[error(
        "nothing answers on {0} (connection refused: a stopped daemon left it behind?); start `tollgate run` or \
         point --admin-socket at the running daemon's socket"
    )]
    Refused(PathBuf),
    #[error(
        "permission denied on {0}: the admin socket is mode 0600, owned by the user the daemon runs as; run this \
         command as that user (e.g. with sudo)"
    )]
    Permission(PathBuf),
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the daemon at {path} sent an answer this CLI cannot read ({reason}); are the CLI and daemon the same version?"
    )]
    BadAnswer { path: PathBuf, reason: String },
    #[error("the daemon at {path} says: {message}")]
    Daemon { path: PathBuf, message: String },
}

/// Sends `req` to the daemon at `path` and returns its result.
pub fn call(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let io = |source: std::io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ClientError::NoSocket(path.to_path_buf()),
        std::io::ErrorKind::ConnectionRefused => ClientError::Refused(path.to_path_buf()),
        std::io::ErrorKind::PermissionDenied => ClientError::Permission(path.to_path_buf()),
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = Vec::new();
    BufReader::new(stream.take(MAX_RESPONSE_BYTES as u64))
        .read_until(b'\n', &mut answer)
        .map_err(io)?;
    let resp: Response = serde_json::from_slice(&answer).map_err(|e| ClientError::BadAnswer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    match (resp.ok, resp.result, resp.error) {
        (true, Some(v), _) => Ok(v),
        (_, _, Some(message)) => Err(ClientError::Daemon {
            path: path.to_path_buf(),
            message,
        }),
        _ => Err(ClientError::BadAnswer {
            path: path.to_path_buf(),
            reason: "neither a result nor an error".into(),
        }),
    }
}
