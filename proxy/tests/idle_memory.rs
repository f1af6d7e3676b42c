//! What an idle HTTP/1 keep-alive connection costs once parked: a global allocator counting live heap bytes, the
//! proxy in-process (`support/inproc.rs`), N connections that each carried one request and then wait. Issue 19's
//! goal is at most 4 KiB of memory per idle keep-alive connection; the heap is the part the proxy controls (the
//! rest of RSS is the allocator's and the kernel's). Its own binary: no other test allocates meanwhile.

#[allow(dead_code)]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
