//! SVID sources: tasks that keep an [`SvidStore`] current.
//!
//! - [`FileSource`]: PEM files on disk (cert chain, PKCS#8 key, bundles), re-read whenever their metadata changes
//!   (polled; a bad or half-written pair is refused and the previous SVID kept until a good one appears).
//! - [`DevCaSource`]: the development CA, re-issuing the SVID when half its validity has passed.
//! - [`crate::workload_api::WorkloadApiSource`]: the SPIFFE Workload API stream.
//!
//! Every `start` returns the store and a [`SourceHandle`]; dropping the handle stops the task.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::bundle::{BundleError, TrustBundle, TrustBundleSet};
use crate::devca::{DevCa, DevCaError, SvidFiles};
use crate::source_handle::{SourceHandle, record};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::store::SvidStore;
use crate::svid::{Svid, SvidError};
use crate::workload_api::WorkloadApiError;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    DevCa(#[from] DevCaError),
    #[error(transparent)]
    WorkloadApi(#[from] WorkloadApiError),
}

/// SVID and bundles from PEM files.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PKCS#8 PEM key.
    pub key: PathBuf,
    /// PEM roots of the SVID's own trust domain.
    pub bundle: PathBuf,
    /// Roots of other (federated) trust domains.
    pub federated: Vec<(TrustDomain, PathBuf)>,
    /// How often file metadata is checked for changes.
    pub poll_interval: Duration,
}

impl FileSource {
    pub fn new(files: &SvidFiles) -> Self {
        Self {
            cert: files.cert.clone(),
            key: files.key.clone(),
            bundle: files.bundle.clone(),
            federated: Vec::new(),
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Reads every file once.
    pub fn load(&self) -> Result<(Svid, TrustBundleSet), SourceError> {
        let svid = Svid::from_pem_files(&self.cert, &self.key)?;
        let mut bundles = TrustBundleSet::new();
        bundles.insert(TrustBundle::from_pem_file(
            svid.spiffe_id().trust_domain().clone(),
            &self.bundle,
        )?);
        for (td, path) in &self.federated {
            bundles.insert(TrustBundle::from_pem_file(td.clone(), path)?);
        }
        Ok((svid, bundles))
    }

    fn fingerprint(&self) -> Vec<Option<(SystemTime, u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        std::iter::once(&self.cert)
            .chain([&self.key, &self.bundle])
            .chain(self.federated.iter().map(|(_, p)| p))
            .map(|p| {
                std::fs::metadata(p).ok().map(|m| {
                    (
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        m.len(),
                        m.ino(),
                    )
                })
            })
            .collect()
    }

    /// Loads the files (failing if they are unusable now) and starts re-reading them on change. Needs a tokio
    /// runtime.
    pub fn start(self) -> Result<(Arc<SvidStore>, SourceHandle), SourceError> {
        let mut seen = self.fingerprint();
        let (svid, bundles) = self.load()?;
        let store = SvidStore::new(svid, bundles);
        let last_error = Arc::new(Mutex::new(None));
        let (task_store, task_err) = (store.clone(), last_error.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = self.fingerprint();
                if now == seen {
                    continue;
                }
                seen = now;
                let result = self.load().map(|(svid, bundles)| {
                    tracing::info!(id = %svid.spiffe_id(), "SVID files changed; new handshakes use the new SVID");
                    task_store.set(svid, bundles);
                });
                record(&task_err, result.map_err(|e| e.to_string()));
            }
        });
        Ok((store, SourceHandle::new(task, last_error)))
    }
}

/// SVIDs issued by a development CA, re-issued at half-life.
#[derive(Debug)]
pub struct DevCaSource {
    pub ca: Arc<DevCa>,
    pub id: SpiffeId,
    pub ttl: Duration,
    /// Bundles of other trust domains to trust besides the CA's own.
    pub federated: TrustBundleSet,
}

impl DevCaSource {
    pub fn new(ca: Arc<DevCa>, id: SpiffeId, ttl: Duration) -> Self {
        Self {
            ca,
            id,
            ttl,
            federated: TrustBundleSet::new(),
        }
    }

    fn bundles(&self) -> TrustBundleSet {
        let mut set = self.federated.clone();
        set.insert(self.ca.bundle());
        set
    }

    /// Issues the first SVID and starts re-issuing at every half-life. Needs a tokio runtime.
    pub fn start(self) -> Result<(Arc<SvidStore>, SourceHandle), SourceError> {
        let svid = self.ca.issue_for(&self.id, self.ttl)?;
        let store = SvidStore::new(svid, self.bundles());
        let last_error = Arc::new(Mutex::new(None));
        let (task_store, task_err) = (store.clone(), last_error.clone());
        let task = tokio::spawn(async move {
            loop {
                let due = task_store.svid().refresh_at();
                let wait = due
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                match self.ca.issue_for(&self.id, self.ttl) {
                    Ok(svid) => {
                        tracing::debug!(id = %self.id, "development CA re-issued the SVID at half-life");
                        task_store.set_svid(svid);
                        record(&task_err, Ok(()));
                    }
                    Err(e) => {
                        record(&task_err, Err(e.to_string()));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok((store, SourceHandle::new(task, last_error)))
    }
}
