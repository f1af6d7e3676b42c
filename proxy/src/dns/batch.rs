//! Batched receive on the DNS UDP listener: one `recvmmsg(2)` takes every query queued on the socket (up to
//! [`BATCH`]) where `recv_from` took one per system call. Under load queries queue while the proxy works, so the
//! per-call cost (entry, socket lock, readiness bookkeeping) is paid once per batch.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams taken per `recvmmsg` at most.
pub const BATCH: usize = 32;

/// Receive buffers and source addresses for one batch. Each slot holds a whole datagram (64 KiB: a query of any
/// legal size arrives whole, as with `recv_from`); the pages of a slot are only touched as far as datagrams fill it.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    lens: Vec<usize>,
    filled: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("filled", &self.filled)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    pub fn new(slot: usize) -> Self {
        RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; slot]).collect(),
            // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH],
            addr_lens: vec![0; BATCH],
            lens: vec![0; BATCH],
            filled: 0,
        }
    }

    /// Waits until the socket is readable, then takes every datagram queued (up to [`BATCH`]).
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // A short batch means the queue was empty, but readiness is left to the next call's `WouldBlock`: clearing
        // it here could swallow the wake-up of a datagram that arrived in between.
        socket
            .async_io(Interest::READABLE, || self.recv_now(socket))
            .await
    }

    /// One non-blocking `recvmmsg`: `WouldBlock` when nothing is queued.
    fn recv_now(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.bufs[i].as_mut_ptr().cast(),
            iov_len: self.bufs[i].len(),
        });
        // SAFETY: all-zero mmsghdrs are valid; the pointers set below stay valid for the call (self and iovecs
        // outlive it) and the lengths are those of the buffers they point to.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `headers` describes BATCH writable buffers and address slots owned by this batch.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in headers.iter().enumerate().take(n) {
            self.lens[i] = h.msg_len as usize;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        self.filled = n;
        Ok(n)
    }

    /// Datagram `i` of the last batch and its sender (`None` for a sender that is not IPv4/IPv6).
    pub fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.filled {
            return None;
        }
        let addr = socket_addr(&self.addrs[i], self.addr_lens[i])?;
        Some((&self.bufs[i][..self.lens[i]], addr))
    }
}

/// The IPv4/IPv6 address the kernel wrote into `storage` (`len` bytes of it).
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: an AF_INET address of that length is a sockaddr_in; storage is aligned for any sockaddr.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams queued before the wait arrive in one batch, in order, whole, with their senders.
    #[tokio::test]
    async fn queued_datagrams_arrive_in_one_batch_with_their_senders() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap();
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        );
        let big = vec![7u8; 60_000];
        a.send_to(b"one", to).await.unwrap();
        b.send_to(&big, to).await.unwrap();
        a.send_to(b"three", to).await.unwrap();
        let mut batch = RecvBatch::new(65_535);
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = batch.recv(&server).await.unwrap();
            for i in 0..n {
                let (d, from) = batch.datagram(i).unwrap();
                got.push((d.to_vec(), from));
            }
        }
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_eq!(got[0], (b"one".to_vec(), aa));
        assert_eq!(got[1], (big, ba));
        assert_eq!(got[2], (b"three".to_vec(), aa));
        assert!(batch.datagram(3).is_none());
        // With the queue drained, a new datagram still wakes the receiver.
        b.send_to(b"four", to).await.unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), batch.recv(&server))
            .await
            .expect("woken by the new datagram")
            .unwrap();
        assert_eq!((n, batch.datagram(0).unwrap().0), (1, &b"four"[..]));
    }
}
