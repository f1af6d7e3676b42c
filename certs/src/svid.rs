//! X.509-SVIDs: a certificate chain whose leaf carries exactly one `spiffe://` URI SAN, with its PKCS#8 key.
//!
//! The checks follow the public X.509-SVID specification: the leaf has exactly one URI SAN and it is a valid SPIFFE
//! ID with a workload path (not the bare trust domain ID), the leaf is not a CA (basicConstraints cA false), and if it
//! has a keyUsage extension, that grants digitalSignature and not keyCertSign / cRLSign. The private key must match
//! the leaf's public key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why a certificate chain and key are not a usable X.509-SVID. Each message names the part and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("the SVID certificate chain is empty; the leaf certificate must come first")]
    EmptyChain,
    #[error("{what} is not a valid X.509 DER certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error(
        "the leaf certificate has {0} URI SANs; an X.509-SVID has exactly one, the spiffe:// ID of the workload"
    )]
    UriSanCount(usize),
    #[error("the leaf certificate's URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    BadSpiffeId {
        uri: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error(
        "the leaf's SPIFFE ID {0} is a trust domain ID; a workload SVID needs a path (spiffe://<td>/ns/<ns>/sa/<sa>)"
    )]
    TrustDomainIdAsLeaf(SpiffeId),
    #[error(
        "the leaf certificate is a CA (basicConstraints cA=true); issue the SVID as an end-entity certificate"
    )]
    LeafIsCa,
    #[error(
        "the leaf certificate's keyUsage {0}; an SVID leaf needs digitalSignature and no certificate signing"
    )]
    LeafKeyUsage(&'static str),
    #[error(
        "the SVID private key is not a usable PKCS#8 key ({0}); supply an ECDSA P-256/P-384, Ed25519 or RSA key in PKCS#8 (openssl pkcs8 -topk8 -nocrypt)"
    )]
    Key(String),
    #[error(
        "the SVID private key does not belong to the leaf certificate; pair each certificate with its own key"
    )]
    KeyMismatch,
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an SVID leaf says about its holder, parsed without verifying anything cryptographically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Parses an SVID leaf and checks its X.509-SVID shape (one spiffe URI SAN with a path, not a CA, key usage).
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, SvidError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| SvidError::BadCertificate {
            what: "the leaf certificate".into(),
            reason: e.to_string(),
        })?;
    let bad = |reason: String| SvidError::BadCertificate {
        what: "the leaf certificate".into(),
        reason,
    };
    let uris: Vec<&str> = match cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
    {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    let id = SpiffeId::parse(uris[0]).map_err(|source| SvidError::BadSpiffeId {
        uri: uris[0].to_owned(),
        source,
    })?;
    if id.path().is_empty() {
        return Err(SvidError::TrustDomainIdAsLeaf(id));
    }
    if let Some(bc) = cert.basic_constraints().map_err(|e| bad(e.to_string()))?
        && bc.value.ca
    {
        return Err(SvidError::LeafIsCa);
    }
    if let Some(ku) = cert.key_usage().map_err(|e| bad(e.to_string()))? {
        if !ku.value.digital_signature() {
            return Err(SvidError::LeafKeyUsage("lacks digitalSignature"));
        }
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(SvidError::LeafKeyUsage("grants keyCertSign or cRLSign"));
        }
    }
    let validity = cert.validity();
    Ok(LeafInfo {
        id,
        not_before: unix_to_system(validity.not_before.timestamp()),
        not_after: unix_to_system(validity.not_after.timestamp()),
    })
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// An X.509-SVID ready for rustls: the chain (leaf first), its key, the holder's SPIFFE ID and validity window.
#[derive(Clone)]
pub struct Svid {
    leaf: LeafInfo,
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Arc<Vec<u8>>,
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints the key.
        f.debug_struct("Svid")
            .field("id", &self.leaf.id)
            .field("not_before", &self.leaf.not_before)
            .field("not_after", &self.leaf.not_after)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Builds an SVID from a DER chain (leaf first, intermediates after; roots belong in the bundle) and a PKCS#8
    /// DER key, checking the X.509-SVID shape and that the key matches the leaf.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Self, SvidError> {
        let leaf_der = chain.first().ok_or(SvidError::EmptyChain)?;
        let leaf = parse_leaf(leaf_der)?;
        for (i, c) in chain.iter().enumerate().skip(1) {
            x509_parser::parse_x509_certificate(c).map_err(|e| SvidError::BadCertificate {
                what: format!("chain certificate #{i} (an intermediate)"),
                reason: e.to_string(),
            })?;
        }
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.clone()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| SvidError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => SvidError::KeyMismatch,
            other => SvidError::Key(other.to_string()),
        })?;
        Ok(Self {
            leaf,
            chain,
            key_pkcs8: Arc::new(key_pkcs8),
            certified: Arc::new(certified),
        })
    }

    /// Builds an SVID from PEM text: `CERTIFICATE` blocks (leaf first) and one `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, SvidError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvidError::Pem {
                what: "SVID certificate PEM".into(),
                reason: e.to_string(),
            })?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem).map_err(|e| SvidError::Pem {
            what: "SVID key PEM".into(),
            reason: format!(
                "{e}; the key must be one PKCS#8 `BEGIN PRIVATE KEY` block (convert with openssl pkcs8 -topk8 -nocrypt)"
            ),
        })?;
        Self::from_der(chain, key.secret_pkcs8_der().to_vec())
    }

    /// Reads `cert_path` (PEM chain) and `key_path` (PKCS#8 PEM key).
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, SvidError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| SvidError::Io {
                path: p.to_owned(),
                source,
            })
        };
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.leaf.id
    }

    pub fn not_before(&self) -> SystemTime {
        self.leaf.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after
    }

    /// When a source should replace this SVID: half-way through its validity window.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .leaf
            .not_after
            .duration_since(self.leaf.not_before)
            .unwrap_or_default();
        self.leaf.not_before + life / 2
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The PKCS#8 DER private key.
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// The chain as PEM `CERTIFICATE` blocks, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| der_to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The key as a PKCS#8 `PRIVATE KEY` PEM block.
    pub fn key_pem(&self) -> String {
        der_to_pem("PRIVATE KEY", &self.key_pkcs8)
    }

    /// The rustls certificate + signing key for handshakes.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

/// Encodes DER bytes as one PEM block with 64-column base64 lines.
pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle` encoding) into single ones.
pub fn split_der_certificates(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes[0] != 0x30 {
            return Err(format!(
                "certificate #{} does not start with a DER SEQUENCE (0x30)",
                out.len()
            ));
        }
        let (len, header) = match bytes.get(1) {
            Some(&l) if l < 0x80 => (usize::from(l), 2),
            Some(&l) if (0x81..=0x84).contains(&l) => {
                let n = usize::from(l - 0x80);
                let len_bytes = bytes
                    .get(2..2 + n)
                    .ok_or_else(|| format!("certificate #{} has a truncated length", out.len()))?;
                let len = len_bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, 2 + n)
            }
            _ => {
                return Err(format!(
                    "certificate #{} has an invalid DER length",
                    out.len()
                ));
            }
        };
        let total = header + len;
        if bytes.len() < total {
            return Err(format!(
                "certificate #{} is truncated ({} of {total} bytes)",
                out.len(),
                bytes.len()
            ));
        }
        out.push(CertificateDer::from(bytes[..total].to_vec()));
        bytes = &bytes[total..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips_through_pki_types() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = der_to_pem("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), &der[..], "len {len}");
        }
    }

    #[test]
    fn split_der_rejects_garbage_and_truncation() {
        assert!(split_der_certificates(b"").unwrap().is_empty());
        assert!(split_der_certificates(&[0x31, 0x00]).is_err());
        assert!(split_der_certificates(&[0x30, 0x05, 1, 2]).is_err());
        let two = [0x30, 0x01, 0xaa, 0x30, 0x81, 0x02, 0xbb, 0xcc];
        let certs = split_der_certificates(&two).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].as_ref(), &[0x30, 0x81, 0x02, 0xbb, 0xcc]);
    }
}
