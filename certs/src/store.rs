//! The current SVID and bundles of this proxy, shared by every TLS config built from them.
//!
//! Sources ([`crate::source`]) write here; rustls reads here at every handshake (the cert resolver loads the current
//! SVID, the verifiers load the current bundles). Swapping never touches established connections: a TLS session
//! keeps the keys it negotiated, only new handshakes see the new SVID.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::bundle::TrustBundleSet;
use crate::svid::Svid;

pub struct SvidStore {
    svid: ArcSwap<Svid>,
    bundles: Arc<ArcSwap<TrustBundleSet>>,
    generation: watch::Sender<u64>,
}

impl fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidStore")
            .field("svid", &*self.svid.load())
            .field(
                "trust_domains",
                &self.bundles.load().describe_trust_domains(),
            )
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

impl SvidStore {
    pub fn new(svid: Svid, bundles: TrustBundleSet) -> Arc<Self> {
        Arc::new(Self {
            svid: ArcSwap::from_pointee(svid),
            bundles: Arc::new(ArcSwap::from_pointee(bundles)),
            generation: watch::Sender::new(0),
        })
    }

    /// The SVID new handshakes present.
    pub fn svid(&self) -> Arc<Svid> {
        self.svid.load_full()
    }

    /// The bundles new handshakes verify peers against.
    pub fn bundles(&self) -> Arc<TrustBundleSet> {
        self.bundles.load_full()
    }

    /// The shared bundle cell (what verifiers hold).
    pub fn bundle_cell(&self) -> Arc<ArcSwap<TrustBundleSet>> {
        self.bundles.clone()
    }

    pub fn set_svid(&self, svid: Svid) {
        self.svid.store(Arc::new(svid));
        self.bump();
    }

    pub fn set_bundles(&self, bundles: TrustBundleSet) {
        self.bundles.store(Arc::new(bundles));
        self.bump();
    }

    /// Replaces both; the bundles go first so a new SVID from a new CA is never presented to peers whose bundle
    /// we would not yet accept back.
    pub fn set(&self, svid: Svid, bundles: TrustBundleSet) {
        self.bundles.store(Arc::new(bundles));
        self.svid.store(Arc::new(svid));
        self.bump();
    }

    /// A counter bumped on every change (for observers and tests that wait for a rotation).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}
