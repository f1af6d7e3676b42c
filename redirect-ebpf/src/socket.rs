//! Socket options the proxy uses to find a redirected flow's record: SO_COOKIE, SO_NETNS_COOKIE, and
//! SO_ORIGINAL_DST (answered by the `cgroup/getsockopt` program on the proxy's cgroup).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

const SO_ORIGINAL_DST: libc::c_int = 80;
// From <asm-generic/socket.h> (x86_64 and arm64 share them).
const SO_COOKIE: libc::c_int = 57;
const SO_NETNS_COOKIE: libc::c_int = 71;

fn getsockopt_u64(fd: impl AsFd, level: libc::c_int, name: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: value/len point to a u64 and its size, as the option expects.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The kernel's socket cookie (the key of the by-cookie original-destination map).
pub fn socket_cookie(fd: impl AsFd) -> io::Result<u64> {
    getsockopt_u64(fd, libc::SOL_SOCKET, SO_COOKIE)
}

/// The cookie of the socket's network namespace (part of the 4-tuple key for loopback flows).
pub fn netns_cookie(fd: impl AsFd) -> io::Result<u64> {
    getsockopt_u64(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE)
}

/// Converts a filled `sockaddr_storage` to a std address.
pub(crate) fn storage_to_addr(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected address family {family}"),
        )),
    }
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (IPv4 sockets) or `(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` (IPv6 sockets):
/// the destination the client asked for before it was redirected.
pub fn so_original_dst(fd: impl AsFd) -> io::Result<SocketAddr> {
    let fd = fd.as_fd();
    let local = local_addr(fd)?;
    let (level, want) = match local {
        SocketAddr::V4(_) => (libc::SOL_IP, size_of::<libc::sockaddr_in>()),
        SocketAddr::V6(_) => (libc::SOL_IPV6, size_of::<libc::sockaddr_in6>()),
    };
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = want as libc::socklen_t;
    // SAFETY: storage is large enough for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            (&raw mut storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    storage_to_addr(&storage)
}

fn name_of(
    fd: impl AsFd,
    f: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> io::Result<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a buffer large enough for any socket address.
    let rc = unsafe { f(fd.as_fd().as_raw_fd(), (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    storage_to_addr(&storage)
}

/// getsockname(2) for any socket fd.
pub fn local_addr(fd: impl AsFd) -> io::Result<SocketAddr> {
    name_of(fd, libc::getsockname)
}

/// getpeername(2) for any socket fd (what the `cgroup/getpeername*` programs rewrite).
pub fn peer_addr(fd: impl AsFd) -> io::Result<SocketAddr> {
    name_of(fd, libc::getpeername)
}
