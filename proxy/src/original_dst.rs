//! Where a transparently redirected connection was really going.
//!
//! One trait, [`OriginalDst`], with one implementation per redirect mechanism:
//! - [`Tproxy`]: iptables/nft TPROXY or `bpf_sk_assign` deliver the connection to an `IP_TRANSPARENT` listener
//!   without rewriting it, so the accepted socket's *local* address is the original destination.
//! - [`SoOriginalDst`]: iptables `REDIRECT`/DNAT (conntrack) or the redirect crate's `cgroup/getsockopt` program
//!   answer the `SO_ORIGINAL_DST` socket option.
//! - [`MapLookup`]: an injected `(peer, local) -> destination` table, used by the in-process tests (no root, no
//!   kernel redirect).
//!
//! The eBPF redirect layer's own source, reading its maps by socket cookie or 4-tuple, is
//! `crate::datapath::EbpfOriginalDst`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum OriginalDstError {
    #[error("reading the accepted socket's addresses: {0}")]
    Socket(#[source] std::io::Error),
    #[error(
        "getsockopt(SO_ORIGINAL_DST) failed: {0}; the connection was not redirected by iptables REDIRECT/DNAT or the \
         eBPF getsockopt hook (use --redirect tproxy for TPROXY)"
    )]
    GetSockOpt(#[source] std::io::Error),
    #[error(
        "no original destination recorded for {peer} -> {local} in the redirect map; is the redirect layer loaded?"
    )]
    NotInMap { peer: SocketAddr, local: SocketAddr },
    #[error(
        "original destination {0} is the proxy's own listener: the connection was not redirected (a client connected \
         to the proxy port directly, or a redirect loop); refusing it"
    )]
    SelfConnection(SocketAddr),
}

/// Recovers the original destination of an accepted, redirected connection.
pub trait OriginalDst: Send + Sync + fmt::Debug {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OriginalDstError>;
}

/// TPROXY: the local address of a socket accepted on an `IP_TRANSPARENT` listener.
#[derive(Debug, Clone)]
pub struct Tproxy {
    /// The proxy's own listening address; a connection addressed to it directly was not redirected.
    pub listen: SocketAddr,
}

impl OriginalDst for Tproxy {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OriginalDstError> {
        let local = stream.local_addr().map_err(OriginalDstError::Socket)?;
        if local.port() == self.listen.port()
            && (self.listen.ip().is_unspecified() || self.listen.ip() == local.ip())
        {
            return Err(OriginalDstError::SelfConnection(local));
        }
        Ok(local)
    }
}

/// `SO_ORIGINAL_DST` (IPv4, `SOL_IP`) / `IP6T_SO_ORIGINAL_DST` (IPv6, `SOL_IPV6`).
#[derive(Debug, Clone, Default)]
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OriginalDstError> {
        let local = stream.local_addr().map_err(OriginalDstError::Socket)?;
        let fd = stream.as_raw_fd();
        let addr = if local.is_ipv4() {
            so_original_dst_v4(fd)
        } else {
            so_original_dst_v6(fd)
        }
        .map_err(OriginalDstError::GetSockOpt)?;
        if addr == local {
            return Err(OriginalDstError::SelfConnection(addr));
        }
        Ok(addr)
    }
}

const SO_ORIGINAL_DST: libc::c_int = 80;

/// `getsockopt(fd, level, SO_ORIGINAL_DST)` into a `T`.
///
/// # Safety
/// `T` must be the plain-old-data C address struct the kernel writes for `level` (`sockaddr_in` for `SOL_IP`,
/// `sockaddr_in6` for `SOL_IPV6`), for which all zeroes is a valid value.
unsafe fn so_original_dst_raw<T>(fd: libc::c_int, level: libc::c_int) -> std::io::Result<T> {
    // SAFETY: the caller guarantees `T` is plain old data; getsockopt writes at most `len` bytes into it.
    let mut sa: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: fd is a live socket owned by the caller's TcpStream; pointer and length describe `sa`.
    let rc =
        unsafe { libc::getsockopt(fd, level, SO_ORIGINAL_DST, (&raw mut sa).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sa)
}

fn so_original_dst_v4(fd: libc::c_int) -> std::io::Result<SocketAddr> {
    // SAFETY: SOL_IP's SO_ORIGINAL_DST is a sockaddr_in.
    let sa: libc::sockaddr_in = unsafe { so_original_dst_raw(fd, libc::SOL_IP) }?;
    Ok(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )))
}

fn so_original_dst_v6(fd: libc::c_int) -> std::io::Result<SocketAddr> {
    // SAFETY: SOL_IPV6's SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST) is a sockaddr_in6.
    let sa: libc::sockaddr_in6 = unsafe { so_original_dst_raw(fd, libc::SOL_IPV6) }?;
    Ok(SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from(sa.sin6_addr.s6_addr),
        u16::from_be(sa.sin6_port),
        0,
        sa.sin6_scope_id,
    )))
}

/// An injected lookup: `(peer, local)` of the accepted socket to the original destination.
pub type MapLookupFn = dyn Fn(SocketAddr, SocketAddr) -> Option<SocketAddr> + Send + Sync;

/// Asks an injected lookup by the accepted socket's 4-tuple.
#[derive(Clone)]
pub struct MapLookup {
    pub lookup: Arc<MapLookupFn>,
}

impl fmt::Debug for MapLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MapLookup")
    }
}

impl OriginalDst for MapLookup {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OriginalDstError> {
        let peer = stream.peer_addr().map_err(OriginalDstError::Socket)?;
        let local = stream.local_addr().map_err(OriginalDstError::Socket)?;
        (self.lookup)(peer, local).ok_or(OriginalDstError::NotInMap { peer, local })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tproxy_reports_local_address_and_refuses_direct_connections() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Not redirected: local address is the listener itself.
        let t = Tproxy { listen: addr };
        assert!(matches!(
            t.original_dst(&s),
            Err(OriginalDstError::SelfConnection(_))
        ));
        // Pretend the listener is elsewhere: the local address is then the original destination.
        let t = Tproxy {
            listen: "0.0.0.0:1".parse().unwrap(),
        };
        assert_eq!(t.original_dst(&s).unwrap(), addr);
    }

    #[tokio::test]
    async fn so_original_dst_without_redirect_says_how_to_fix() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let err = SoOriginalDst.original_dst(&s).unwrap_err();
        assert!(err.to_string().contains("SO_ORIGINAL_DST"), "{err}");
    }

    #[tokio::test]
    async fn map_lookup_uses_the_four_tuple() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let client = c.local_addr().unwrap();
        let want: SocketAddr = "10.0.1.20:8080".parse().unwrap();
        let m = MapLookup {
            lookup: Arc::new(move |peer, _local| (peer == client).then_some(want)),
        };
        assert_eq!(m.original_dst(&s).unwrap(), want);
        let m = MapLookup {
            lookup: Arc::new(|_, _| None),
        };
        assert!(matches!(
            m.original_dst(&s),
            Err(OriginalDstError::NotInMap { .. })
        ));
    }
}
