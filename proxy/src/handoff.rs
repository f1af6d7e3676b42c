//! Listener handoff between an old and a new tollgate process on the same node (restart or upgrade without a gap).
//!
//! The running process serves a Unix socket (`--handoff-socket`). A starting process connects to it before binding;
//! if an old process answers, it sends its listening socket's file descriptor (`SCM_RIGHTS`). Both processes then
//! hold THE SAME kernel socket, so no connection waiting in its accept queue is lost, unlike two `SO_REUSEPORT`
//! sockets, where closing the old one resets what was queued on it. When the new process confirms (`taken`), the old
//! one stops accepting and drains its open connections as on SIGTERM.
//!
//! Protocol (one connection): new -> old `take\n`; old -> new one byte with the fd attached; new -> old `taken\n`,
//! or `refused\n` when the socket is not one the new process would have bound (other address or network namespace).

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use redirect_ebpf::socket::netns_cookie;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum HandoffError {
    #[error("listener handoff over {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "listener handoff over {path}: the old process answered {answer:?} instead of a socket"
    )]
    Protocol { path: PathBuf, answer: String },
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> HandoffError + use<> {
    let path = path.to_path_buf();
    move |source| HandoffError::Io { path, what, source }
}

/// The handoff path of a further socket (`<main>.<which>`), beside the main listener's.
pub fn companion_path(main: &Path, which: &str) -> std::path::PathBuf {
    let mut s = main.as_os_str().to_owned();
    s.push(format!(".{which}"));
    std::path::PathBuf::from(s)
}

/// Asks a running tollgate for its listening socket. `Ok(None)`: nobody serves `path` (first start, or the old
/// process is gone), or what it offers is not a socket this process would have bound itself (another address, or
/// another network namespace: two daemons sharing a handoff path must never serve each other's traffic): bind a
/// fresh listener.
pub fn take(path: &Path, expected: SocketAddr) -> Result<Option<OwnedFd>, HandoffError> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io_err(path, "connecting")(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err(path, "setting a timeout"))?;
    stream
        .write_all(b"take\n")
        .map_err(io_err(path, "asking for the listener"))?;
    let fd = recv_fd(stream.as_raw_fd()).map_err(io_err(path, "receiving the listener"))?;
    let Some(fd) = fd else {
        return Err(HandoffError::Protocol {
            path: path.to_path_buf(),
            answer: "no file descriptor".into(),
        });
    };
    if let Err(why) = same_listener(&fd, expected) {
        tracing::warn!(path = %path.display(), "not taking the offered listener: {why}; binding a fresh one");
        let _ = stream.write_all(b"refused\n");
        return Ok(None);
    }
    stream
        .write_all(b"taken\n")
        .map_err(io_err(path, "confirming the takeover"))?;
    Ok(Some(fd))
}

/// The offered socket must listen on `expected` in this process's network namespace.
fn same_listener(fd: &OwnedFd, expected: SocketAddr) -> Result<(), String> {
    let offered = socket2::SockRef::from(fd);
    let local = offered
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("it has no IP address")?;
    if local != expected {
        return Err(format!("it listens on {local}, not {expected}"));
    }
    let ours = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let (theirs, mine) = (netns_cookie(fd), netns_cookie(&ours));
    match (theirs, mine) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (Ok(_), Ok(_)) => Err("it belongs to another network namespace".into()),
        (Err(e), _) | (_, Err(e)) => Err(format!("cannot read its network namespace: {e}")),
    }
}

/// Serves the handoff socket for `listener` until one successor has taken it; then cancels `shutdown` so this
/// process stops accepting and drains. Runs on a blocking thread.
pub fn serve(
    path: PathBuf,
    listener: RawFd,
    shutdown: CancellationToken,
) -> Result<(), HandoffError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(&path, "creating its directory"))?;
    }
    // A stale file from a crashed process (or the predecessor's, which we just took over from) is replaced.
    let _ = std::fs::remove_file(&path);
    let server = UnixListener::bind(&path).map_err(io_err(&path, "binding"))?;
    std::thread::Builder::new()
        .name("tollgate-handoff".into())
        .spawn(move || {
            for conn in server.incoming() {
                let Ok(mut conn) = conn else { continue };
                match hand_over(&mut conn, listener) {
                    Ok(()) => {
                        tracing::info!("listener handed over to a new tollgate process; draining");
                        shutdown.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!("listener handoff attempt failed, still serving: {e}"),
                }
            }
        })
        .map_err(io_err(Path::new("tollgate-handoff"), "spawning its thread"))?;
    Ok(())
}

fn hand_over(conn: &mut UnixStream, listener: RawFd) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "take" {
        return Err(io::Error::other(format!("unexpected request {line:?}")));
    }
    send_fd(conn.as_raw_fd(), listener)?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != "taken" {
        return Err(io::Error::other(format!(
            "successor did not confirm: {line:?}"
        )));
    }
    Ok(())
}

/// Room for one `SCM_RIGHTS` control message carrying one fd.
fn fd_cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize }
}

/// A msghdr over one iovec and a control buffer; both must outlive the sendmsg/recvmsg call.
fn msghdr(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    msg
}

fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let byte = [b'L'];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut _,
        iov_len: 1,
    };
    let mut control = vec![0u8; fd_cmsg_space()];
    let msg = msghdr(&mut iov, &mut control);
    // SAFETY: the control buffer holds CMSG_SPACE(sizeof fd) bytes, so the first header and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: sock is a connected Unix stream socket; msg is fully initialised above.
    let n = unsafe { libc::sendmsg(sock, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = vec![0u8; fd_cmsg_space()];
    let mut msg = msghdr(&mut iov, &mut control);
    // SAFETY: sock is a connected Unix socket; msg describes buffers we own. MSG_CMSG_CLOEXEC keeps the fd private.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(None);
    }
    // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR returns null when there is no header.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn nobody_serving_means_bind_fresh() {
        let dir = std::env::temp_dir().join(format!("tg-handoff-none-{}", std::process::id()));
        let any = "127.0.0.1:1".parse().unwrap();
        assert!(take(&dir.join("handoff.sock"), any).unwrap().is_none());
    }

    #[test]
    fn the_successor_gets_the_same_socket_and_the_old_one_is_told_to_drain() {
        let dir = std::env::temp_dir().join(format!("tg-handoff-{}", std::process::id()));
        let path = dir.join("handoff.sock");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A connection queued on the old listener before the handoff must be accepted by the successor.
        let _queued = TcpStream::connect(addr).unwrap();
        let shutdown = CancellationToken::new();
        serve(path.clone(), listener.as_raw_fd(), shutdown.clone()).unwrap();
        // A successor expecting another address refuses the offer; the old process keeps serving.
        let elsewhere = "127.0.0.1:1".parse().unwrap();
        assert!(take(&path, elsewhere).unwrap().is_none());
        assert!(
            !shutdown.is_cancelled(),
            "a refused handoff must not stop the old process"
        );
        let fd = take(&path, addr).unwrap().expect("the old process answers");
        let taken = TcpListener::from(fd);
        assert_eq!(
            taken.local_addr().unwrap(),
            addr,
            "same socket, same address"
        );
        let (_s, peer) = taken.accept().unwrap();
        assert_eq!(
            peer,
            _queued.local_addr().unwrap(),
            "the queued connection survives the handoff"
        );
        for _ in 0..100 {
            if shutdown.is_cancelled() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(shutdown.is_cancelled(), "the old process is told to drain");
        let _ = std::fs::remove_dir_all(dir);
    }
}
