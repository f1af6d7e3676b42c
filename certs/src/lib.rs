//! Workload identity for Tollgate.
//!
//! Owns the SPIFFE ID type (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`). X.509-SVIDs, trust
//! bundles, rustls verifiers and SVID sources are not built yet (see certs/README.md).

pub mod spiffe_id;

pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
