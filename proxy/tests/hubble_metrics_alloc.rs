//! Feeding Hubble metric series that already exist allocates nothing: a counting global allocator counts this
//! thread's allocations around `HubbleMetrics::observe_at` (per-record cost on every proxied request).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tollgate::flow::{
    DnsInfo, DropReason, FlowEndpoint, FlowRecord, HttpInfo, KafkaInfo, L7Info, TrafficDirection,
    Verdict,
};
use tollgate::hubble_metrics::{HubbleConfig, HubbleMetrics};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations and reallocations per thread.
struct CountingAllocator;

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations this thread made while running `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn pod(identity: u32, ns: &str, name: &str, app: &str) -> FlowEndpoint {
    let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
    FlowEndpoint::new("10.0.0.2:8080".parse().unwrap(), identity).with_pod(ns, name, &labels)
}

/// An HTTP, a DNS and a Kafka record, each forwarded and denied, all from pod `src`.
fn records(src: &str) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    for (verdict, drop) in [
        (Verdict::Forwarded, None),
        (Verdict::Dropped, Some(DropReason::PolicyDenied)),
    ] {
        let base = || {
            let mut r = FlowRecord::new(
                verdict,
                pod(300, "shop", src, "portal"),
                pod(301, "bank", "ledger-7d4b9c8f6d-x2x9q", "ledger"),
                "HTTP",
            );
            r.drop_reason = drop;
            r.traffic_direction = Some(TrafficDirection::Egress);
            r.latency_ns = 4_000_000;
            r
        };
        let mut http = base();
        let http_info = HttpInfo {
            method: "GET".into(),
            protocol: "HTTP/1.1".into(),
            code: if drop.is_some() { 403 } else { 200 },
            ..Default::default()
        };
        http.l7 = Some(L7Info {
            http: Some(http_info),
            ..Default::default()
        });
        let mut dns = base();
        dns.l7 = Some(L7Info::default());
        dns.dns = Some(DnsInfo {
            qtypes: vec!["A".into(), "AAAA".into()],
            ips: vec!["10.1.0.1".into()],
            ..Default::default()
        });
        let mut kafka = base();
        kafka.l7 = Some(L7Info {
            kafka: Some(KafkaInfo {
                api_key: "Produce".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        out.extend([http, dns, kafka]);
    }
    out
}

fn assert_existing_series_allocate_nothing(spec: &str, max_series: usize) {
    let config = HubbleConfig::parse(spec, max_series, Duration::from_secs(600)).unwrap();
    let mut metrics = HubbleMetrics::new(config);
    let now = Instant::now();
    let warm = records("portal-5f7c8d9b4-x7k2p");
    let new_pod = records("portal-5f7c8d9b4-q8w4z");
    let first = allocations(|| warm.iter().for_each(|r| metrics.observe_at(r, now)));
    assert!(
        first > 0,
        "{spec}: adding series must allocate (is the counter counting?)"
    );
    let steady = allocations(|| {
        for _ in 0..1000 {
            warm.iter().for_each(|r| metrics.observe_at(r, now));
        }
    });
    eprintln!(
        "{spec} (cap {max_series}): {first} allocations adding series, {steady} feeding 6000 records of them"
    );
    assert_eq!(
        steady, 0,
        "{spec}: 6000 records of existing series allocated"
    );
    let more = allocations(|| new_pod.iter().for_each(|r| metrics.observe_at(r, now)));
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(text.contains("hubble_flows_processed_total{"), "{text}");
    if text.contains("portal-5f7c8d9b4-q8w4z") {
        assert!(
            more > 0,
            "{spec}: a new pod's series were added without allocating?"
        );
    }
}

#[test]
fn observing_records_of_existing_series_allocates_nothing() {
    let contexts = "flow:sourceContext=namespace drop:destinationContext=pod \
                    httpV2:sourceContext=workload-name|identity;labelsContext=source_pod,traffic_direction \
                    dns:destinationContext=identity policy:sourceContext=pod;destinationContext=namespace";
    assert_existing_series_allocate_nothing("flow drop httpV2 dns policy", 1000);
    assert_existing_series_allocate_nothing(contexts, 1000);
    // Beyond the cap, records feed the overflow series: allocation-free too once it exists.
    assert_existing_series_allocate_nothing(contexts, 1);
}
