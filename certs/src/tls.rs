//! rustls configurations for node-to-node mTLS: TLS 1.3 only, ALPN `h2`, client certificates required, SVIDs
//! resolved from the [`SvidStore`] at each handshake (rotation without touching open connections).
//!
//! Session resumption is disabled on both sides: a resumed TLS 1.3 session skips certificate verification and
//! presents the certificate of the original session, so a peer whose SVID expired, whose trust domain was removed
//! or whose ID is no longer allowed could resume, and a rotated SVID would not be presented. Node-to-node
//! connections are pooled, so full handshakes are rare.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::ServerName;

use crate::store::SvidStore;
use crate::verify::{
    AllowedIds, SpiffeClientCertVerifier, SpiffeServerCertVerifier, SpiffeVerifier,
};

/// The only ALPN protocol offered and accepted.
pub const ALPN_H2: &[u8] = b"h2";

/// Hands rustls the store's CURRENT SVID at every handshake.
#[derive(Debug, Clone)]
pub struct SvidResolver {
    store: Arc<SvidStore>,
}

impl SvidResolver {
    pub fn new(store: Arc<SvidStore>) -> Self {
        Self { store }
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.svid().certified_key())
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.store.svid().certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The accepting side: presents the store's SVID, requires a client SVID from a trusted trust domain whose ID
/// `allowed` accepts.
pub fn server_config(
    store: &Arc<SvidStore>,
    allowed: AllowedIds,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = SpiffeClientCertVerifier(SpiffeVerifier::new(store.bundle_cell(), allowed));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SvidResolver::new(store.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The connecting side: presents the store's SVID, accepts a server SVID whose ID `allowed` accepts (usually the
/// destination node proxy's exact ID). SNI is off; pass [`server_name`] to connect.
pub fn client_config(
    store: &Arc<SvidStore>,
    allowed: AllowedIds,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = SpiffeServerCertVerifier(SpiffeVerifier::new(store.bundle_cell(), allowed));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SvidResolver::new(store.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The name to pass to `connect`: ignored by the verifier (SPIFFE identities are not DNS names) and not sent (SNI
/// is disabled).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("spiffe.invalid").expect("static name is valid")
}
