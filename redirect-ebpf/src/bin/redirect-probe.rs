//! `redirect-probe`: tiny socket client/server used by the kernel tests (and handy when debugging a node by hand).
//! Prints `key=value` lines on stdout; exits 2 on a socket error after printing `error=<kind>` and `errno=<n>` lines.
//!
//! ```text
//!   redirect-probe tcp-connect ADDR [--mark N]   connect, print local/peer (getpeername), read one line
//!   redirect-probe udp ADDR TEXT                 send TEXT unconnected, print the reply and its source
//!   redirect-probe udp-connected ADDR TEXT       connect(2) first (as glibc's resolver does), then send/recv
//!   redirect-probe serve-tcp ADDR [TAG]          accept forever, answer each connection with "<TAG>"
//!   redirect-probe accept ADDR N [--transparent] [--pin-root DIR]
//!                                                accept N connections, print what the proxy would see (with
//!                                                --pin-root also the record read from the pinned maps)
//!   redirect-probe udp-serve ADDR TAG            answer every datagram with "<TAG>" (forever)
//!   redirect-probe load PIN_ROOT                 Redirect::load, print `loaded` or `load_error=<message>`,
//!                                                then purge PIN_ROOT (checks the preflight errors end to end)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use redirect_ebpf::socket;

fn fail(e: std::io::Error) -> ! {
    println!("error={:?}", e.kind());
    println!("errno={}", e.raw_os_error().unwrap_or(0));
    std::process::exit(2);
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        eprintln!("bad address {s}");
        std::process::exit(64)
    })
}

fn setsockopt_u32(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> std::io::Result<()> {
    // SAFETY: value is a valid u32 for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            4,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn tcp_socket(target: &SocketAddr) -> std::io::Result<OwnedFd> {
    let domain = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Calls `f` with `addr` as a C socket address and its length (for connect(2) and bind(2) on raw sockets).
fn with_sockaddr(
    addr: SocketAddr,
    f: impl FnOnce(*const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> libc::c_int {
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            f(
                (&raw const sin).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            f(
                (&raw const sin6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

fn connect_raw(fd: &OwnedFd, target: SocketAddr) -> std::io::Result<()> {
    // SAFETY: `with_sockaddr` passes a valid sockaddr of the given length; fd is a live socket.
    let rc = with_sockaddr(target, |sa, len| unsafe {
        libc::connect(fd.as_raw_fd(), sa, len)
    });
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn tcp_connect(args: &[String]) {
    let target = addr(&args[0]);
    let fd = tcp_socket(&target).unwrap_or_else(|e| fail(e));
    if let Some(i) = args.iter().position(|a| a == "--mark") {
        let mark: u32 = args[i + 1].parse().expect("--mark takes a number");
        setsockopt_u32(&fd, libc::SOL_SOCKET, libc::SO_MARK, mark).unwrap_or_else(|e| fail(e));
    }
    connect_raw(&fd, target).unwrap_or_else(|e| fail(e));
    println!(
        "local={}",
        socket::local_addr(&fd).unwrap_or_else(|e| fail(e))
    );
    println!(
        "peer={}",
        socket::peer_addr(&fd).unwrap_or_else(|e| fail(e))
    );
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .unwrap_or_else(|e| fail(e));
    println!("reply={}", line.trim_end());
}

fn udp(args: &[String]) {
    let target = addr(&args[0]);
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let sock = UdpSocket::bind(bind).unwrap_or_else(|e| fail(e));
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    sock.send_to(args[1].as_bytes(), target)
        .unwrap_or_else(|e| fail(e));
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| fail(e));
    println!("local={}", sock.local_addr().unwrap_or_else(|e| fail(e)));
    println!("from={from}");
    println!("reply={}", String::from_utf8_lossy(&buf[..n]));
}

fn udp_connected(args: &[String]) {
    let target = addr(&args[0]);
    // No bind(2) before connect(2), like glibc: the source port does not exist yet when connect4 runs.
    let domain = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        fail(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    connect_raw(&fd, target).unwrap_or_else(|e| fail(e));
    let sock = UdpSocket::from(fd);
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    sock.send(args[1].as_bytes()).unwrap_or_else(|e| fail(e));
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| fail(e));
    println!("local={}", sock.local_addr().unwrap_or_else(|e| fail(e)));
    println!("peer={}", sock.peer_addr().unwrap_or_else(|e| fail(e)));
    println!("reply={}", String::from_utf8_lossy(&buf[..n]));
}

fn serve_tcp(args: &[String]) {
    let listener = TcpListener::bind(addr(&args[0])).unwrap_or_else(|e| fail(e));
    let tag = args.get(1).cloned().unwrap_or_else(|| "server".into());
    println!("listening={}", listener.local_addr().unwrap());
    std::io::stdout().flush().ok();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = writeln!(stream, "{tag}");
    }
}

fn accept(args: &[String]) {
    let bind = addr(&args[0]);
    let count: usize = args[1].parse().expect("accept ADDR N");
    let transparent = args.iter().any(|a| a == "--transparent");
    let reader = args.iter().position(|a| a == "--pin-root").map(|i| {
        redirect_ebpf::OriginalDstReader::open(std::path::Path::new(&args[i + 1])).unwrap_or_else(
            |e| {
                eprintln!("{e}");
                std::process::exit(1)
            },
        )
    });
    let fd = tcp_socket(&bind).unwrap_or_else(|e| fail(e));
    setsockopt_u32(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap_or_else(|e| fail(e));
    if transparent {
        let (level, name) = if bind.is_ipv4() {
            (libc::SOL_IP, libc::IP_TRANSPARENT)
        } else {
            (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
        };
        setsockopt_u32(&fd, level, name, 1).unwrap_or_else(|e| fail(e));
    }
    let listener = std::net::TcpListener::from(fd);
    // std has no bind-on-an-existing-socket (needed to set IP_TRANSPARENT first): bind(2) + listen(2) by hand.
    // SAFETY: `with_sockaddr` passes a valid sockaddr of the given length; the fd is a TCP socket of that family.
    let rc = with_sockaddr(bind, |sa, len| unsafe {
        libc::bind(listener.as_raw_fd(), sa, len)
    });
    if rc != 0 {
        fail(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our bound socket.
    if unsafe { libc::listen(listener.as_raw_fd(), 16) } != 0 {
        fail(std::io::Error::last_os_error());
    }
    println!("listening={}", listener.local_addr().unwrap());
    std::io::stdout().flush().ok();
    for i in 0..count {
        let (mut stream, _) = listener.accept().unwrap_or_else(|e| fail(e));
        println!("conn={i}");
        println!("peer={}", stream.peer_addr().unwrap());
        println!("local={}", stream.local_addr().unwrap());
        println!("cookie={}", socket::socket_cookie(&stream).unwrap_or(0));
        println!(
            "netns_cookie={}",
            socket::netns_cookie(&stream).unwrap_or(0)
        );
        match socket::so_original_dst(&stream) {
            Ok(a) => println!("original_dst={a}"),
            Err(e) => println!("original_dst_error={e}"),
        }
        if let Some(reader) = &reader {
            match reader.original_dst_of_socket(&stream) {
                Ok(Some(od)) => {
                    println!("map_original_dst={}", od.addr);
                    println!("map_source_identity={}", od.source_identity);
                }
                Ok(None) => println!("map_original_dst=none"),
                Err(e) => println!("map_original_dst_error={e}"),
            }
        }
        println!("end={i}");
        std::io::stdout().flush().ok();
        let _ = writeln!(stream, "proxy");
    }
}

fn udp_serve(args: &[String]) {
    let sock = UdpSocket::bind(addr(&args[0])).unwrap_or_else(|e| fail(e));
    println!("listening={}", sock.local_addr().unwrap());
    std::io::stdout().flush().ok();
    let mut buf = [0u8; 1500];
    loop {
        let Ok((_, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        println!("datagram_from={from}");
        std::io::stdout().flush().ok();
        let _ = sock.send_to(args[1].as_bytes(), from);
    }
}

fn load(args: &[String]) {
    let root = std::path::PathBuf::from(&args[0]);
    match redirect_ebpf::Redirect::load(redirect_ebpf::RedirectOptions {
        pin_root: root.clone(),
        proxy: Default::default(),
    }) {
        Ok(r) => {
            drop(r);
            println!("loaded");
            if let Err(e) = redirect_ebpf::Redirect::purge(&root) {
                println!("purge_error={e}");
            }
        }
        Err(e) => println!("load_error={e}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args.split_first().unwrap_or_else(|| {
        eprintln!("usage: redirect-probe tcp-connect|udp|serve-tcp|accept|udp-serve ...");
        std::process::exit(64)
    });
    match cmd.as_str() {
        "tcp-connect" => tcp_connect(rest),
        "udp" => udp(rest),
        "udp-connected" => udp_connected(rest),
        "serve-tcp" => serve_tcp(rest),
        "accept" => accept(rest),
        "udp-serve" => udp_serve(rest),
        "load" => load(rest),
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(64)
        }
    }
}
