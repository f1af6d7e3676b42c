//! A loopback TCP forwarder from the host into the node's network namespace: the proxy's UI and Observer API listen
//! on the node's 127.0.0.1, which a browser or `hubble` on the host cannot reach. Each accepted connection gets a
//! thread that enters the node namespace (`setns` is per thread) and connects there; sockets keep the namespace they
//! were created in.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

/// At most this many forwarded connections at once (a browser opens a handful; the rest are refused).
const MAX_CONNECTIONS: usize = 64;

/// Listens on the host's 127.0.0.1:`preferred` (any free port when that one is taken) and forwards every connection
/// to `target` inside network namespace `netns`; returns the host address.
pub fn start(netns: &str, preferred: u16, target: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .context("binding a loopback port for the demo's forwarder")?;
    let addr = listener.local_addr()?;
    let ns_path = format!("/run/netns/{netns}");
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (ns, open) = (ns_path.clone(), open.clone());
            std::thread::spawn(move || {
                let _ = relay(conn, &ns, target);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(addr)
}

fn relay(client: TcpStream, ns_path: &str, target: SocketAddr) -> io::Result<()> {
    let ns = File::open(ns_path)?;
    // SAFETY: setns on a valid namespace fd; it changes only this thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let upstream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    let (mut from_client, mut to_upstream) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_upstream);
        let _ = to_upstream.shutdown(Shutdown::Write);
    });
    let (mut from_upstream, mut to_client) = (upstream, client);
    let _ = io::copy(&mut from_upstream, &mut to_client);
    let _ = to_client.flush();
    let _ = to_client.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
