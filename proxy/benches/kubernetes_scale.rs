//! Kubernetes mode at cluster scale (issue 21): what the reconciler does on this node for a cluster of 20,000 pods
//! (1,000 apps in 100 namespaces on 100 nodes) and 1,000 CiliumNetworkPolicies, from the same synthetic API objects
//! the scale test streams through the test API server (`tests/support/scale.rs`).
//!
//! - `startup_build`: every object reduced into the `ClusterState`, then the first endpoint table + engine.
//! - `pod_event`: one pod's labels change (it moves to a new identity, or back), then the rebuild the reconciler runs.
//! - `pod_event_existing_identity`: a pod of an existing identity is created or deleted, then the rebuild.
//! - `policy_event`: one policy's HTTP rule changes, then the rebuild.
//!
//! Memory: what the daemon holds with that state built, i.e. the `ClusterState` and one compiled engine + endpoint
//! table, after the parsed API objects are dropped (the reconciler applies each watched object and drops it). The
//! bench runs on the daemon's allocator (mimalloc, as `src/main.rs`), counting live heap bytes. It prints the live
//! heap of the API objects and of the state, and the process RSS with only the state held (written, in MiB, to the
//! file `TOLLGATE_SCALE_RSS_OUT` names, for `tollgate-load`'s report). `TOLLGATE_SCALE_SECS` sets the measurement
//! time per measurement (default 10). Goals: <= 1 s, <= 10 ms, <= 100 ms, <= 150 MB.

#[path = "../tests/support/scale.rs"]
#[allow(dead_code)]
mod scale;

use std::alloc::{GlobalAlloc, Layout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::DynamicObject;
use tollgate::kubernetes::cluster::{ClusterState, PodInfo, PolicyKind, PolicyObject};

const PODS: usize = 20_000;
const APPS: usize = 1_000;

/// Bytes currently allocated through the global allocator (requested sizes, without the allocator's overhead).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The daemon's allocator, counting live bytes: what the state holds, independent of how the allocator's pages are
/// resident.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

fn no_cgroup(_: &PodInfo) -> Option<PathBuf> {
    None
}

struct Objects {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<DynamicObject>,
}

fn objects() -> Objects {
    Objects {
        namespaces: (0..scale::NAMESPACES)
            .map(|i| serde_json::from_value(scale::namespace(i)).unwrap())
            .collect(),
        pods: (0..PODS)
            .map(|i| serde_json::from_value(scale::pod(i, APPS)).unwrap())
            .collect(),
        policies: (0..APPS)
            .map(|a| serde_json::from_value(scale::policy(a, APPS, "/v1/.*", 1)).unwrap())
            .collect(),
    }
}

fn load(objects: &Objects) -> ClusterState {
    let mut state = ClusterState::default();
    for n in &objects.namespaces {
        state.apply_namespace(n);
    }
    for p in &objects.pods {
        state.apply_pod(p);
    }
    for o in &objects.policies {
        state.apply_policy(PolicyObject::from_cilium(PolicyKind::CiliumNetworkPolicy, o).unwrap());
    }
    state
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Builds the state as the daemon does at start-up and measures what it then holds: the state and one compiled
/// engine + endpoint table, the API objects dropped. Returns the state for the event measurements.
fn daemon_memory() -> ClusterState {
    let start = live_mib();
    let objects = objects();
    let objects_mib = live_mib() - start;
    let mut state = load(&objects);
    let compiled = state.rebuild("node-0", &no_cgroup).unwrap();
    assert!(
        compiled
            .outcomes
            .values()
            .all(|o| *o == tollgate::kubernetes::cluster::PolicyOutcome::Accepted)
    );
    drop(objects);
    let state_mib = live_mib() - start;
    let rss_before = rss_mib();
    // What the daemon does after a full list (`kubernetes/watch.rs`): freed pages returned now, not after
    // mimalloc's purge delay. (A collection never frees a live allocation.)
    tollgate::allocator::collect_now();
    let rss = rss_mib();
    eprintln!(
        "kubernetes_scale: heap of the parsed API objects ({PODS} pods, {APPS} policies), dropped before the \
         readings below: {objects_mib:.1} MiB"
    );
    eprintln!(
        "kubernetes_scale: heap held with the state built (ClusterState + one compiled engine and endpoint table): \
         {state_mib:.1} MiB"
    );
    eprintln!(
        "kubernetes_scale: RSS with {PODS} pods + {APPS} policies built (state + one compiled engine; API objects \
         dropped, freed pages returned as the daemon does after a list): {rss:.0} MiB ({rss_before:.0} MiB before that)"
    );
    if let Ok(path) = std::env::var("TOLLGATE_SCALE_RSS_OUT") {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, format!("{rss:.1}\n")).unwrap();
    }
    drop(compiled);
    state
}

fn bench(c: &mut Criterion) {
    // The daemon's memory settings (no transparent huge pages, the purger thread), as `src/main.rs` sets them.
    tollgate::allocator::tune_for_daemon().expect("transparent huge pages off");
    // First, while nothing else has run in the process: the RSS then shows the state, not a measurement's garbage.
    let mut state = daemon_memory();
    let objects = objects();
    let mut group = c.benchmark_group("kubernetes_scale");
    group.sample_size(10);
    let secs = std::env::var("TOLLGATE_SCALE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    group.measurement_time(Duration::from_secs(secs));

    group.bench_function("startup_build_20000_pods_1000_policies", |b| {
        b.iter(|| {
            let mut state = load(&objects);
            state.rebuild("node-0", &no_cgroup).unwrap()
        })
    });
    drop(objects);

    let mut flip = false;
    group.bench_function("pod_event", |b| {
        b.iter_batched(
            || {
                flip = !flip;
                let mut v = scale::pod(7, APPS);
                v["metadata"]["labels"]["tier"] = if flip { "canary" } else { "backend" }.into();
                serde_json::from_value::<Pod>(v).unwrap()
            },
            |pod| {
                assert!(state.apply_pod(&pod));
                state.rebuild("node-0", &no_cgroup).unwrap()
            },
            BatchSize::PerIteration,
        )
    });

    let present = std::cell::Cell::new(false);
    group.bench_function("pod_event_existing_identity", |b| {
        b.iter_batched(
            || {
                present.set(!present.get());
                // Pod number PODS + 7 is one more pod of app 7: its identity exists.
                serde_json::from_value::<Pod>(scale::pod(PODS + 7, APPS)).unwrap()
            },
            |pod| {
                if present.get() {
                    assert!(state.apply_pod(&pod));
                } else {
                    assert!(state.delete_pod(&pod));
                }
                state.rebuild("node-0", &no_cgroup).unwrap()
            },
            BatchSize::PerIteration,
        )
    });

    let mut generation = 1;
    group.bench_function("policy_event", |b| {
        b.iter_batched(
            || {
                generation += 1;
                let path = format!("/v{generation}/.*");
                let v = scale::policy(3, APPS, &path, generation);
                serde_json::from_value::<DynamicObject>(v).unwrap()
            },
            |obj| {
                let obj = PolicyObject::from_cilium(PolicyKind::CiliumNetworkPolicy, &obj).unwrap();
                assert!(state.apply_policy(obj));
                state.rebuild("node-0", &no_cgroup).unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
