//! SPIFFE Workload API client (the X.509 part), as a SPIRE agent serves it on a Unix socket.
//!
//! `FetchX509SVID` is a server stream: the first message carries the current SVIDs and bundles, each later one a
//! rotation. Every request carries the metadata `workload.spiffe.io: true` (agents refuse requests without it).
//! The first SVID of a response is used (the specification's default SVID).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::bundle::{BundleError, TrustBundle, TrustBundleSet};
use crate::source_handle::{SourceHandle, record};
use crate::spiffe_id::SpiffeId;
use crate::store::SvidStore;
use crate::svid::{Svid, SvidError, split_der_certificates};

/// Generated from proto/workload.proto (no proto package, so the method path is `/SpiffeWorkloadAPI/...`).
#[allow(clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("_");
}

use pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The metadata key every Workload API request must carry (value `true`).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error(
        "cannot connect to the SPIFFE Workload API at {socket}: {source}; check the agent runs and the socket path (--workload-api-socket)"
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the Workload API refused FetchX509SVID: {0}")]
    Status(#[from] tonic::Status),
    #[error("the Workload API stream ended; reconnecting")]
    StreamEnded,
    #[error(
        "the Workload API returned no X.509-SVID for this workload; register a SPIRE entry whose selectors match the proxy"
    )]
    NoSvids,
    #[error("the Workload API's SVID for {id:?} is unusable: {reason}")]
    BadSvid { id: String, reason: String },
    #[error(
        "the Workload API said the SVID is {field} but its certificate says {leaf}; the agent's response is inconsistent"
    )]
    IdMismatch { field: String, leaf: SpiffeId },
    #[error("the Workload API's bundle for {key:?} is unusable: {reason}")]
    BadBundle { key: String, reason: String },
}

/// One Workload API update: the default SVID and every bundle (own trust domain + federated).
#[derive(Debug, Clone)]
pub struct X509Update {
    pub svid: Svid,
    pub bundles: TrustBundleSet,
}

/// Converts one `X509SVIDResponse` into an SVID and bundles, validating everything.
pub fn parse_response(resp: pb::X509svidResponse) -> Result<X509Update, WorkloadApiError> {
    let first = resp
        .svids
        .into_iter()
        .next()
        .ok_or(WorkloadApiError::NoSvids)?;
    let bad = |reason: String| WorkloadApiError::BadSvid {
        id: first.spiffe_id.clone(),
        reason,
    };
    let chain = split_der_certificates(&first.x509_svid).map_err(bad)?;
    let svid = Svid::from_der(chain, first.x509_svid_key.clone())
        .map_err(|e: SvidError| bad(e.to_string()))?;
    if svid.spiffe_id().to_string() != first.spiffe_id {
        return Err(WorkloadApiError::IdMismatch {
            field: first.spiffe_id,
            leaf: svid.spiffe_id().clone(),
        });
    }
    let mut bundles = TrustBundleSet::new();
    let own_td = svid.spiffe_id().trust_domain().clone();
    let bundle_err = |key: &str, reason: String| WorkloadApiError::BadBundle {
        key: key.to_owned(),
        reason,
    };
    let roots =
        split_der_certificates(&first.bundle).map_err(|r| bundle_err(own_td.as_str(), r))?;
    bundles.insert(
        TrustBundle::new(own_td.clone(), roots)
            .map_err(|e: BundleError| bundle_err(own_td.as_str(), e.to_string()))?,
    );
    for (key, der) in resp.federated_bundles {
        let td = SpiffeId::parse(&key)
            .map_err(|e| {
                bundle_err(
                    &key,
                    format!("the key is not a trust domain SPIFFE ID: {e}"),
                )
            })?
            .trust_domain()
            .clone();
        let roots = split_der_certificates(&der).map_err(|r| bundle_err(&key, r))?;
        bundles.insert(TrustBundle::new(td, roots).map_err(|e| bundle_err(&key, e.to_string()))?);
    }
    Ok(X509Update { svid, bundles })
}

/// A connected Workload API client.
#[derive(Debug, Clone)]
pub struct WorkloadApiClient {
    inner: SpiffeWorkloadApiClient<Channel>,
}

/// The open `FetchX509SVID` stream.
#[derive(Debug)]
pub struct X509UpdateStream {
    inner: tonic::Streaming<pb::X509svidResponse>,
}

impl X509UpdateStream {
    /// The next update; `Err(StreamEnded)` when the server closed the stream.
    pub async fn next(&mut self) -> Result<X509Update, WorkloadApiError> {
        match self.inner.message().await? {
            Some(resp) => parse_response(resp),
            None => Err(WorkloadApiError::StreamEnded),
        }
    }
}

impl WorkloadApiClient {
    /// Connects to the agent's Unix socket.
    pub async fn connect(socket: &Path) -> Result<Self, WorkloadApiError> {
        let path = socket.to_owned();
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| WorkloadApiError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        Ok(Self {
            inner: SpiffeWorkloadApiClient::new(channel),
        })
    }

    /// Opens the `FetchX509SVID` stream.
    pub async fn fetch_x509(&mut self) -> Result<X509UpdateStream, WorkloadApiError> {
        let mut req = tonic::Request::new(pb::X509svidRequest {});
        req.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let inner = self.inner.fetch_x509svid(req).await?.into_inner();
        Ok(X509UpdateStream { inner })
    }
}

/// Keeps a store current from the Workload API, reconnecting with backoff when the stream breaks.
#[derive(Debug, Clone)]
pub struct WorkloadApiSource {
    pub socket: PathBuf,
    /// Upper bound of the reconnect backoff (starts at 100 ms, doubles).
    pub max_backoff: Duration,
}

impl WorkloadApiSource {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Waits for the first update (so the proxy never starts without an identity), then follows the stream.
    pub async fn start(self) -> Result<(Arc<SvidStore>, SourceHandle), WorkloadApiError> {
        let mut client = WorkloadApiClient::connect(&self.socket).await?;
        let mut stream = client.fetch_x509().await?;
        let first = stream.next().await?;
        let store = SvidStore::new(first.svid, first.bundles);
        let last_error = Arc::new(Mutex::new(None));
        let (task_store, task_err) = (store.clone(), last_error.clone());
        let task = tokio::spawn(async move {
            let mut stream = Some(stream);
            let mut backoff = Duration::from_millis(100);
            loop {
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.max_backoff);
                        let opened = async {
                            let mut c = WorkloadApiClient::connect(&self.socket).await?;
                            c.fetch_x509().await
                        }
                        .await;
                        match opened {
                            Ok(s) => stream.insert(s),
                            Err(e) => {
                                record(&task_err, Err(e.to_string()));
                                continue;
                            }
                        }
                    }
                };
                match s.next().await {
                    Ok(update) => {
                        backoff = Duration::from_millis(100);
                        tracing::info!(id = %update.svid.spiffe_id(), "Workload API rotated the SVID");
                        task_store.set(update.svid, update.bundles);
                        record(&task_err, Ok(()));
                    }
                    Err(e) => {
                        record(&task_err, Err(e.to_string()));
                        stream = None;
                    }
                }
            }
        });
        Ok((store, SourceHandle::new(task, last_error)))
    }
}
