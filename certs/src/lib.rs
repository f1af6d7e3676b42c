//! Workload identity for Tollgate's node-to-node mTLS.
//!
//! Owns: SPIFFE IDs ([`SpiffeId`], [`TrustDomain`]); X.509-SVIDs ([`Svid`]: chain + PKCS#8 key + the ID from the
//! leaf's single URI SAN); trust bundles per trust domain ([`TrustBundleSet`]); rustls verifiers that check a peer
//! against the bundle of ITS trust domain, expiry and an [`AllowedIds`] rule, refusing with a named
//! [`PeerRejection`]; TLS 1.3 / ALPN h2 / mutual-auth [`server_config`] and [`client_config`] that read the current
//! SVID from an [`SvidStore`] at every handshake; SVID sources that keep the store current (files re-read on change,
//! a development CA re-issuing at half-life, the SPIFFE Workload API over a Unix socket); the development CA used by
//! `tollgate certs`. It does not own the tunnel or policy: the proxy uses this crate for both.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod devca;
pub mod source;
pub mod source_handle;
pub mod spiffe_id;
pub mod store;
pub mod svid;
pub mod tls;
pub mod verify;
pub mod workload_api;

/// The rustls, pki-types and webpki versions this crate's API is built on, for callers that need their types.
pub use {rustls, rustls_pki_types as pki_types, webpki};

pub use bundle::{BundleError, TrustBundle, TrustBundleSet};
pub use devca::{DevCa, DevCaError, SvidFiles, write_svid_files};
pub use source::{DevCaSource, FileSource, SourceError};
pub use source_handle::SourceHandle;
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use store::SvidStore;
pub use svid::{LeafInfo, Svid, SvidError, parse_leaf};
pub use tls::{ALPN_H2, SvidResolver, client_config, server_config, server_name};
pub use verify::{
    AllowedIds, PeerRejection, SpiffeClientCertVerifier, SpiffeServerCertVerifier, SpiffeVerifier,
    peer_spiffe_id,
};
pub use workload_api::{
    WorkloadApiClient, WorkloadApiError, WorkloadApiSource, X509Update, X509UpdateStream,
};
