//! Trust bundles: the root CA certificates of each trust domain this proxy trusts (its own and federated ones).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::spiffe_id::TrustDomain;
use crate::svid::der_to_pem;

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the trust bundle for {0} has no root certificates; add the trust domain's CA certificate(s)"
    )]
    Empty(TrustDomain),
    #[error(
        "root certificate #{index} of the bundle for {trust_domain} is not usable as a trust anchor: {reason}"
    )]
    BadRoot {
        trust_domain: TrustDomain,
        index: usize,
        reason: String,
    },
    #[error("the bundle PEM for {trust_domain} is invalid: {reason}")]
    Pem {
        trust_domain: TrustDomain,
        reason: String,
    },
    #[error("cannot read bundle file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The root certificates of one trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl TrustBundle {
    /// A bundle of DER root certificates; at least one, each must parse as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty(trust_domain));
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, r)| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadRoot {
                        trust_domain: trust_domain.clone(),
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    /// A bundle from PEM `CERTIFICATE` blocks.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem {
                trust_domain: trust_domain.clone(),
                reason: e.to_string(),
            })?;
        Self::new(trust_domain, roots)
    }

    /// Reads a PEM bundle file.
    pub fn from_pem_file(trust_domain: TrustDomain, path: &Path) -> Result<Self, BundleError> {
        let pem = std::fs::read(path).map_err(|source| BundleError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(trust_domain, &pem)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn trust_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The roots as PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| der_to_pem("CERTIFICATE", r))
            .collect()
    }
}

/// The bundles of every trusted trust domain, one per trust domain. A peer is verified only against the bundle of
/// its own trust domain, never against another domain's roots.
#[derive(Clone, Debug, Default)]
pub struct TrustBundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustBundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the bundle of `bundle`'s trust domain.
    pub fn insert(&mut self, bundle: TrustBundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, bundle: TrustBundle) -> Self {
        self.insert(bundle);
        self
    }

    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// "a, b" for error messages; "none" when empty.
    pub fn describe_trust_domains(&self) -> String {
        if self.bundles.is_empty() {
            return "none".into();
        }
        self.bundles
            .keys()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
