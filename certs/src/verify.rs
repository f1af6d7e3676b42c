//! Peer verification for rustls: the SPIFFE way, not the web PKI way.
//!
//! A peer is accepted when (1) its leaf is an X.509-SVID, (2) we hold a bundle for the leaf's trust domain, (3) the
//! chain verifies with webpki against THAT bundle's roots at the handshake time (which also checks expiry), and
//! (4) its SPIFFE ID is allowed by [`AllowedIds`]. The DNS name / SNI is never looked at. Every refusal is a
//! [`PeerRejection`] carried inside the rustls error, so the caller can read back the exact reason
//! ([`PeerRejection::from_io_error`]) for flow records.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundleSet;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::parse_leaf;

/// Which peer SPIFFE IDs are acceptable once the chain verifies.
#[derive(Clone)]
pub enum AllowedIds {
    /// Any ID of a trust domain we hold a bundle for.
    AnyTrusted,
    /// Any ID in one of these trust domains (each also needs a bundle).
    TrustDomains(BTreeSet<TrustDomain>),
    /// Exactly these IDs.
    Ids(BTreeSet<SpiffeId>),
    /// A caller's rule (for example "IDs the policy maps to an identity"), with a description for error messages.
    Predicate {
        describe: String,
        allow: Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>,
    },
}

impl AllowedIds {
    pub fn ids(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::Ids(ids.into_iter().collect())
    }

    pub fn trust_domains(tds: impl IntoIterator<Item = TrustDomain>) -> Self {
        Self::TrustDomains(tds.into_iter().collect())
    }

    pub fn predicate(
        describe: impl Into<String>,
        allow: impl Fn(&SpiffeId) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::Predicate {
            describe: describe.into(),
            allow: Arc::new(allow),
        }
    }

    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::AnyTrusted => true,
            Self::TrustDomains(tds) => tds.contains(id.trust_domain()),
            Self::Ids(ids) => ids.contains(id),
            Self::Predicate { allow, .. } => allow(id),
        }
    }
}

impl fmt::Display for AllowedIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyTrusted => f.write_str("any ID of a trusted trust domain"),
            Self::TrustDomains(tds) => {
                let v: Vec<_> = tds.iter().map(|t| t.as_str()).collect();
                write!(f, "IDs in trust domains [{}]", v.join(", "))
            }
            Self::Ids(ids) => {
                let v: Vec<_> = ids.iter().map(|i| i.to_string()).collect();
                write!(f, "[{}]", v.join(", "))
            }
            Self::Predicate { describe, .. } => f.write_str(describe),
        }
    }
}

impl fmt::Debug for AllowedIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AllowedIds({self})")
    }
}

/// Why a peer was refused. Stable codes ([`code`](Self::code)) are meant for flow records and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRejection {
    #[error(
        "the peer presented no certificate; mutual TLS is required, so the peer must present its X.509-SVID"
    )]
    NoCertificate,
    #[error("the peer's certificate is not an X.509-SVID: {0}")]
    NotSvid(String),
    #[error(
        "peer {id} belongs to trust domain {trust_domain}, for which no trust bundle is configured (trusted: {trusted}); add that domain's bundle to federate with it"
    )]
    WrongTrustDomain {
        id: SpiffeId,
        trust_domain: TrustDomain,
        trusted: String,
    },
    #[error(
        "peer {id}: its certificate chain does not lead to a root in the bundle of {trust_domain} (unknown CA); the peer's SVID was issued by a CA this bundle does not hold"
    )]
    UnknownCa {
        id: SpiffeId,
        trust_domain: TrustDomain,
    },
    #[error(
        "peer {id}: certificate expired at unix time {not_after_unix} (now {now_unix}); the peer must rotate its SVID"
    )]
    Expired {
        id: SpiffeId,
        not_after_unix: u64,
        now_unix: u64,
    },
    #[error(
        "peer {id}: certificate not valid before unix time {not_before_unix} (now {now_unix}); check the clocks"
    )]
    NotYetValid {
        id: SpiffeId,
        not_before_unix: u64,
        now_unix: u64,
    },
    #[error(
        "peer {id} is not allowed here (allowed: {allowed}); allow this SPIFFE ID or connect with an allowed identity"
    )]
    IdNotAllowed { id: SpiffeId, allowed: String },
    #[error("peer {id}: certificate chain rejected: {reason}")]
    InvalidChain { id: SpiffeId, reason: String },
}

impl PeerRejection {
    /// The SPIFFE ID the refused peer presented, when its certificate named one.
    pub fn peer_id(&self) -> Option<&SpiffeId> {
        match self {
            Self::NoCertificate | Self::NotSvid(_) => None,
            Self::WrongTrustDomain { id, .. }
            | Self::UnknownCa { id, .. }
            | Self::Expired { id, .. }
            | Self::NotYetValid { id, .. }
            | Self::IdNotAllowed { id, .. }
            | Self::InvalidChain { id, .. } => Some(id),
        }
    }

    /// A stable upper-case code: `NO_CERTIFICATE`, `NOT_SVID`, `WRONG_TRUST_DOMAIN`, `UNKNOWN_CA`, `EXPIRED`,
    /// `NOT_YET_VALID`, `ID_NOT_ALLOWED`, `INVALID_CHAIN`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoCertificate => "NO_CERTIFICATE",
            Self::NotSvid(_) => "NOT_SVID",
            Self::WrongTrustDomain { .. } => "WRONG_TRUST_DOMAIN",
            Self::UnknownCa { .. } => "UNKNOWN_CA",
            Self::Expired { .. } => "EXPIRED",
            Self::NotYetValid { .. } => "NOT_YET_VALID",
            Self::IdNotAllowed { .. } => "ID_NOT_ALLOWED",
            Self::InvalidChain { .. } => "INVALID_CHAIN",
        }
    }

    /// The refusal carried in a rustls error produced by this crate's verifiers, or `NoCertificate` for rustls's own
    /// "peer sent no certificates". `None` for any other TLS failure.
    pub fn from_tls_error(err: &rustls::Error) -> Option<Self> {
        match err {
            rustls::Error::NoCertificatesPresented => Some(Self::NoCertificate),
            rustls::Error::InvalidCertificate(CertificateError::Other(o))
            | rustls::Error::Other(o) => (*o.0).downcast_ref::<Self>().cloned(),
            _ => None,
        }
    }

    /// Same as [`from_tls_error`](Self::from_tls_error) for the `io::Error` tokio-rustls returns from a handshake.
    pub fn from_io_error(err: &std::io::Error) -> Option<Self> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(Self::from_tls_error)
    }

    fn into_tls_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

fn unix_secs(t: UnixTime) -> u64 {
    t.as_secs()
}

/// The verification shared by the client and server sides. Bundles are read at each handshake from a shared
/// `ArcSwap`, so a bundle update applies to the next handshake.
#[derive(Clone)]
pub struct SpiffeVerifier {
    bundles: Arc<ArcSwap<TrustBundleSet>>,
    allowed: AllowedIds,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeVerifier")
            .field(
                "trust_domains",
                &self.bundles.load().describe_trust_domains(),
            )
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl SpiffeVerifier {
    pub fn new(bundles: Arc<ArcSwap<TrustBundleSet>>, allowed: AllowedIds) -> Self {
        Self {
            bundles,
            allowed,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// Verifies a peer chain for `usage` (client or server auth) at `now`, returning its SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, PeerRejection> {
        let leaf = parse_leaf(end_entity).map_err(|e| PeerRejection::NotSvid(e.to_string()))?;
        let id = leaf.id;
        let bundles = self.bundles.load();
        let Some(bundle) = bundles.get(id.trust_domain()) else {
            return Err(PeerRejection::WrongTrustDomain {
                trust_domain: id.trust_domain().clone(),
                trusted: bundles.describe_trust_domains(),
                id,
            });
        };
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| PeerRejection::NotSvid(e.to_string()))?;
        if let Err(e) = ee.verify_for_usage(
            self.algorithms.all,
            bundle.trust_anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        ) {
            return Err(match e {
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                    PeerRejection::UnknownCa {
                        trust_domain: id.trust_domain().clone(),
                        id,
                    }
                }
                webpki::Error::CertExpired { time, not_after } => PeerRejection::Expired {
                    id,
                    not_after_unix: unix_secs(not_after),
                    now_unix: unix_secs(time),
                },
                webpki::Error::CertNotValidYet { time, not_before } => PeerRejection::NotYetValid {
                    id,
                    not_before_unix: unix_secs(not_before),
                    now_unix: unix_secs(time),
                },
                other => PeerRejection::InvalidChain {
                    id,
                    reason: other.to_string(),
                },
            });
        }
        if !self.allowed.allows(&id) {
            return Err(PeerRejection::IdNotAllowed {
                allowed: self.allowed.to_string(),
                id,
            });
        }
        Ok(id)
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Used by a client (the connecting proxy) to verify the server's SVID.
#[derive(Debug, Clone)]
pub struct SpiffeServerCertVerifier(pub SpiffeVerifier);

impl ServerCertVerifier for SpiffeServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
            )
            .map(|_| ServerCertVerified::assertion())
            .map_err(PeerRejection::into_tls_error)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Used by a server (the accepting proxy) to verify the client's SVID; a client certificate is mandatory.
#[derive(Debug, Clone)]
pub struct SpiffeClientCertVerifier(pub SpiffeVerifier);

impl ClientCertVerifier for SpiffeClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
            )
            .map(|_| ClientCertVerified::assertion())
            .map_err(PeerRejection::into_tls_error)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// The SPIFFE ID of a connected peer (from its leaf certificate; the handshake already verified it).
pub fn peer_spiffe_id(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    parse_leaf(leaf).ok().map(|l| l.id)
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General(
        "TLS 1.2 is not offered: Tollgate's node-to-node mTLS is TLS 1.3 only".into(),
    )
}
