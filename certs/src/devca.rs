//! The development CA: a self-signed root for one trust domain that issues X.509-SVIDs with rcgen. Used by the
//! demo, the tests and `tollgate certs`. Not for production: the CA key sits in a file next to its certificate.
//!
//! Files: a CA directory holds `ca.pem` (the root, also the trust bundle) and `ca.key` (PKCS#8, mode 0600). An
//! SVID directory holds `svid.pem` (chain, leaf first), `svid.key` (PKCS#8, 0600) and `bundle.pem` (the CA root),
//! the same layout the file source reads.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

use crate::bundle::{BundleError, TrustBundle};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{Svid, SvidError};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SVID_CERT_FILE: &str = "svid.pem";
pub const SVID_KEY_FILE: &str = "svid.key";
pub const BUNDLE_FILE: &str = "bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(
        "the CA of trust domain {ca} cannot issue {id}: an SVID must be in its CA's trust domain; use a CA created with --trust-domain {wanted}"
    )]
    ForeignId {
        ca: TrustDomain,
        id: SpiffeId,
        wanted: TrustDomain,
    },
    #[error("the validity window is empty (not_after must be later than not_before)")]
    EmptyValidity,
    #[error("{path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// A development CA for one trust domain.
pub struct DevCa {
    trust_domain: TrustDomain,
    cert: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl DevCa {
    /// Creates a new self-signed CA (ECDSA P-256) for `trust_domain`, valid from now for `validity`. Its certificate
    /// carries the trust domain's SPIFFE ID `spiffe://<td>` as URI SAN.
    pub fn create(trust_domain: &TrustDomain, validity: Duration) -> Result<Self, DevCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(60));
        params.not_after = to_offset(now + validity);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tollgate development CA");
        dn.push(DnType::CommonName, trust_domain.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            trust_domain: trust_domain.clone(),
            cert: cert.der().clone(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.pem` + `ca.key` from `dir`; the trust domain comes from the CA certificate's `spiffe://<td>` SAN.
    pub fn load(dir: &Path) -> Result<Self, DevCaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let file_err = |path: &Path, reason: String| DevCaError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let cert_pem = std::fs::read(&cert_path).map_err(|e| {
            file_err(
                &cert_path,
                format!(
                    "{e}; create a CA first with `tollgate certs ca --trust-domain TD --out DIR`"
                ),
            )
        })?;
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e.to_string()))?;
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| file_err(&cert_path, format!("not a PEM certificate: {e}")))?;
        let trust_domain = ca_trust_domain(&cert).map_err(|r| file_err(&cert_path, r))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| file_err(&key_path, format!("not a PKCS#8 PEM key: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| file_err(&cert_path, format!("not a usable CA certificate: {e}")))?;
        Ok(Self {
            trust_domain,
            cert,
            key_pem,
            issuer,
        })
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), DevCaError> {
        create_dir(dir)?;
        write_file(
            &dir.join(CA_CERT_FILE),
            self.bundle().to_pem().as_bytes(),
            false,
        )?;
        write_file(&dir.join(CA_KEY_FILE), self.key_pem.as_bytes(), true)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The trust bundle of this CA's trust domain (its root).
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.trust_domain.clone(), vec![self.cert.clone()])
            .expect("a CA this crate created or loaded is a valid trust anchor")
    }

    /// Issues an SVID for `id` (which must be in this CA's trust domain) valid from `not_before` to `not_after`.
    /// Windows in the past are allowed on purpose: tests use them for expired certificates.
    pub fn issue(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Svid, DevCaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(DevCaError::ForeignId {
                ca: self.trust_domain.clone(),
                id: id.clone(),
                wanted: id.trust_domain().clone(),
            });
        }
        self.issue_unchecked(id, not_before, not_after)
    }

    /// Issues an SVID valid from now for `ttl`.
    pub fn issue_for(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, DevCaError> {
        let now = SystemTime::now();
        // Whole seconds: X.509 times have no fraction, so the half-life is computed on what the certificate says.
        let now = UNIX_EPOCH
            + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
        self.issue(id, now, now + ttl)
    }

    /// Like [`issue`](Self::issue) without the trust-domain check: only for tests that need an SVID signed by the
    /// wrong CA.
    #[doc(hidden)]
    pub fn issue_unchecked(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Svid, DevCaError> {
        if not_after <= not_before {
            return Err(DevCaError::EmptyValidity);
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tollgate workload");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Svid::from_der(
            vec![cert.der().clone()],
            key.serialize_der(),
        )?)
    }
}

fn ca_trust_domain(cert: &CertificateDer<'_>) -> Result<TrustDomain, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("the CA certificate has no spiffe://<trust-domain> URI SAN; it was not created by `tollgate certs ca`")?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Ok(id) = SpiffeId::parse(uri)
            && id.path().is_empty()
        {
            return Ok(id.trust_domain().clone());
        }
    }
    Err("the CA certificate has no spiffe://<trust-domain> URI SAN; it was not created by `tollgate certs ca`".into())
}

/// Where [`write_svid_files`] put an SVID.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl SvidFiles {
    /// The standard names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(SVID_CERT_FILE),
            key: dir.join(SVID_KEY_FILE),
            bundle: dir.join(BUNDLE_FILE),
        }
    }
}

/// Writes `svid.pem`, `svid.key` (0600) and `bundle.pem` into `dir`. Each file is written to a temporary name and
/// renamed, so a reader never sees a half-written file (the key and certificate may still be read from two
/// different generations; the file source retries until they match).
pub fn write_svid_files(
    svid: &Svid,
    bundle: &TrustBundle,
    dir: &Path,
) -> Result<SvidFiles, DevCaError> {
    create_dir(dir)?;
    let files = SvidFiles::in_dir(dir);
    write_file(&files.bundle, bundle.to_pem().as_bytes(), false)?;
    write_file(&files.key, svid.key_pem().as_bytes(), true)?;
    write_file(&files.cert, svid.chain_pem().as_bytes(), false)?;
    Ok(files)
}

fn create_dir(dir: &Path) -> Result<(), DevCaError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCaError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), DevCaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DevCaError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
