//! What an idle connection costs: a global allocator counting live heap bytes, the proxy in-process
//! (`support/inproc.rs`), N connections that wait. HTTP/1 keep-alive connections carry one request each and park;
//! Kafka connections (client and broker sockets both held) wait for their first request. Issue 19's goal is at most
//! 4 KiB of memory per idle keep-alive connection; the heap is the part the proxy controls (the rest of RSS is the
//! allocator's and the kernel's). Its own binary, and its tests one at a time (`ONE_AT_A_TIME`): nothing else
//! allocates meanwhile.

#[allow(dead_code)]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use support::inproc::*;

static LIVE: AtomicI64 = AtomicI64::new(0);
/// Live allocations by size (16-byte classes up to 64 KiB, then one class for the rest): what a failing run holds.
static BY_SIZE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
const CLASSES: usize = 4097;

fn class(size: usize) -> usize {
    (size / 16).min(CLASSES - 1)
}

fn count(size: usize, delta: i64) {
    LIVE.fetch_add(size as i64 * delta, Ordering::Relaxed);
    BY_SIZE[class(size)].fetch_add(delta, Ordering::Relaxed);
}

fn by_size() -> Vec<i64> {
    BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// The size classes whose live count grew by at least one per two of `per` connections, largest share first.
fn held_since(before: &[i64], per: i64) -> String {
    let mut grown: Vec<(usize, i64)> = by_size()
        .iter()
        .zip(before)
        .enumerate()
        .map(|(c, (now, then))| (c, now - then))
        .filter(|(_, n)| *n * 2 >= per)
        .collect();
    grown.sort_by_key(|(c, n)| -(*n * (*c as i64 * 16 + 8)));
    grown
        .iter()
        .map(|(c, n)| {
            format!(
                "{}-{} B x {:.2}",
                c * 16,
                c * 16 + 15,
                *n as f64 / per as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The system allocator, counting the bytes allocated and not yet freed.
struct LiveBytes;

unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// The tests count one process-wide heap: they run one after the other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const CONNECTIONS: usize = 300;
const GOAL_BYTES: i64 = 4096;
/// The harness's flow ring capacity.
const RING: usize = 1024;

async fn one_request(h: &Harness, n: usize) -> TcpStream {
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    let req = format!("GET /ok/{n} HTTP/1.1\r\nHost: server\r\nUser-Agent: idle-test\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s).await;
    assert!(status.contains(" 200 "), "{status}");
    s
}

/// Waits until `n` connections are parked (at most 10 s).
async fn parked(h: &Harness, n: u64) {
    for _ in 0..200 {
        if h.proxy.parked.get() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} of {n} connections parked", h.proxy.parked.get());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keepalive_connection_holds_at_most_4_kib_of_heap() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let h = start().await;
    // Warm-up: the upstream pool, the flow ring's first records, the policy snapshot's lazy parts.
    let mut conns = vec![one_request(&h, 0).await];
    // The flow ring (1,024 records here) full first: records are bounded by its size, not by connections.
    for n in 0..RING {
        let s = &mut conns[0];
        let req =
            format!("GET /ok/warm{n} HTTP/1.1\r\nHost: server\r\nUser-Agent: idle-test\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        read_response(s).await;
    }
    parked(&h, 1).await;
    let before = LIVE.load(Ordering::Relaxed);
    let before_by_size = by_size();
    for n in 1..=CONNECTIONS {
        conns.push(one_request(&h, n).await);
    }
    let busy = LIVE.load(Ordering::Relaxed);
    parked(&h, CONNECTIONS as u64 + 1).await;
    let after = LIVE.load(Ordering::Relaxed);
    let per_conn = |bytes: i64| (bytes - before) / CONNECTIONS as i64;
    let held = held_since(&before_by_size, CONNECTIONS as i64);
    eprintln!(
        "heap per connection: {} B just after its request, {} B parked (client sockets included; goal {GOAL_BYTES}); \
         allocations held per connection: {held}",
        per_conn(busy),
        per_conn(after)
    );
    assert!(
        per_conn(after) <= GOAL_BYTES,
        "a parked connection holds {} B of heap: {held}",
        per_conn(after)
    );
    // Parked connections still answer.
    let s = conns.last_mut().unwrap();
    s.write_all(b"GET /ok/again HTTP/1.1\r\nHost: server\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(s).await.0.contains(" 200 "));
}

/// The live heap once it stops changing (two reads 200 ms apart agree; at most 10 s).
async fn settled_heap() -> i64 {
    let mut last = LIVE.load(Ordering::Relaxed);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = LIVE.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the heap never settled (last {last} B)");
}

fn kafka_policy(port: u16) -> String {
    policy_with_rules(
        port,
        "            kafka:\n              - {role: produce, topic: orders}\n",
    )
}

/// Opens `n` connections to `addr`; once the broker has accepted `accepted` sockets in all (so every connection
/// reached it, through the proxy or not), returns them with the heap they added per connection, settled.
async fn connect_many(
    addr: std::net::SocketAddr,
    n: usize,
    broker_accepted: &AtomicUsize,
    accepted: usize,
) -> (Vec<TcpStream>, i64) {
    let before = settled_heap().await;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..400 {
        if broker_accepted.load(Ordering::SeqCst) >= accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        broker_accepted.load(Ordering::SeqCst),
        accepted,
        "connections that reached the broker"
    );
    (conns, (settled_heap().await - before) / n as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kafka_connection_holds_at_most_4_kib_of_heap() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // The broker: accepts, counts and holds its sockets (in room reserved up front).
    let broker = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let broker_addr = broker.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::with_capacity(4 * CONNECTIONS);
        while let Ok((s, _)) = broker.accept().await {
            held.push(s);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let h = start_proxy(tollgate::limits::Limits::default(), broker_addr).await;
    std::fs::write(&h.policy_path, kafka_policy(h.backend_port)).unwrap();
    h.policy_files.reload().unwrap();
    // Warm-up: the first connections' lazily built parts (socket registrations, the runtime's timer wheel).
    let _warm = connect_many(broker_addr, 1, &accepted, 1).await;
    let _warm_proxied = connect_many(h.proxy_addr, 1, &accepted, 2).await;
    // What the test's own two ends of a connection cost (its client socket, the broker's accepted one): the same
    // pair stands at both ends of a proxied connection, and is not the proxy's.
    let (_direct, ends) = connect_many(broker_addr, CONNECTIONS, &accepted, 2 + CONNECTIONS).await;
    let before_by_size = by_size();
    let (_proxied, per_conn) =
        connect_many(h.proxy_addr, CONNECTIONS, &accepted, 2 + 2 * CONNECTIONS).await;
    let in_use = h.proxy.limits.max_connections - h.proxy.connections.available_permits();
    assert_eq!(in_use, CONNECTIONS + 1, "every connection is being served");
    let held = held_since(&before_by_size, CONNECTIONS as i64);
    let proxy_own = per_conn - ends;
    eprintln!(
        "heap per idle Kafka connection: {proxy_own} B the proxy's (goal {GOAL_BYTES}), {per_conn} B with the \
         test's client and broker sockets ({ends} B); allocations held per connection: {held}"
    );
    assert!(
        proxy_own <= GOAL_BYTES,
        "an idle Kafka connection holds {proxy_own} B of the proxy's heap: {held}"
    );
}
