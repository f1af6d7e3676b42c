//! Real TLS 1.3 handshakes over loopback TCP between `server_config` and `client_config`: success, and each named
//! refusal.

mod common;

use std::sync::Arc;

use certs::{AllowedIds, PeerRejection, peer_spiffe_id};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "spiffe://example.org/ns/default/sa/web";
const API: &str = "spiffe://example.org/ns/default/sa/api";

#[tokio::test]
async fn mutual_tls_succeeds_with_tls13_h2_and_both_peer_ids() {
    let ca = ca("example.org");
    let server = store(&ca, API, &[&ca]);
    let client = store(&ca, WEB, &[&ca]);
    let (s, c) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::ids([id(API)]),
    )
    .await;
    let (s, mut c) = (s.unwrap(), c.unwrap());
    let sconn = s.get_ref().1;
    assert_eq!(peer_spiffe_id(sconn), Some(id(WEB)));
    assert_eq!(sconn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        sconn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(peer_spiffe_id(c.get_ref().1), Some(id(API)));
    // Data flows both ways after the handshake.
    let mut s = s;
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn federated_trust_domain_with_its_own_bundle_is_accepted() {
    let ours = ca("example.org");
    let theirs = ca("partner.net");
    let server = store(&ours, API, &[&ours, &theirs]);
    let client = store(&theirs, "spiffe://partner.net/ns/x/sa/y", &[&ours]);
    let (s, c) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    assert_eq!(
        peer_spiffe_id(s.unwrap().get_ref().1),
        Some(id("spiffe://partner.net/ns/x/sa/y"))
    );
    c.unwrap();
}

#[tokio::test]
async fn client_from_untrusted_trust_domain_is_refused_as_wrong_trust_domain() {
    let ours = ca("example.org");
    let theirs = ca("other.org");
    let server = store(&ours, API, &[&ours]);
    let client = store(&theirs, "spiffe://other.org/ns/default/sa/web", &[&ours]);
    let (s, c) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    let err = s.unwrap_err();
    match rejection(&err) {
        PeerRejection::WrongTrustDomain {
            trust_domain,
            trusted,
            ..
        } => {
            assert_eq!(trust_domain, td("other.org"));
            assert_eq!(trusted, "example.org");
        }
        other => panic!("expected WrongTrustDomain, got {other:?}"),
    }
    assert!(c.is_err(), "the client must see the refusal too");
}

#[tokio::test]
async fn another_ca_of_the_same_trust_domain_is_an_unknown_ca() {
    let real = ca("example.org");
    let rogue = ca("example.org");
    let server = store(&real, API, &[&real]);
    let client = store(&rogue, WEB, &[&real]);
    let (s, _) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    let r = rejection(&s.unwrap_err());
    assert!(
        matches!(r, PeerRejection::UnknownCa { ref id, .. } if id.to_string() == WEB),
        "{r:?}"
    );
    assert_eq!(r.code(), "UNKNOWN_CA");
}

#[tokio::test]
async fn expired_client_certificate_is_refused_as_expired() {
    let ca = ca("example.org");
    let server = store(&ca, API, &[&ca]);
    let client = expired_store(&ca, WEB, &[&ca]);
    let (s, _) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    let r = rejection(&s.unwrap_err());
    match r {
        PeerRejection::Expired {
            not_after_unix,
            now_unix,
            ..
        } => assert!(not_after_unix < now_unix),
        other => panic!("expected Expired, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_server_certificate_is_refused_by_the_client() {
    let ca = ca("example.org");
    let server = expired_store(&ca, API, &[&ca]);
    let client = store(&ca, WEB, &[&ca]);
    let (_, c) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    assert!(matches!(
        rejection(&c.unwrap_err()),
        PeerRejection::Expired { .. }
    ));
}

#[tokio::test]
async fn client_id_outside_the_allowed_set_is_refused_as_id_not_allowed() {
    let ca = ca("example.org");
    let server = store(&ca, API, &[&ca]);
    let client = store(&ca, "spiffe://example.org/ns/default/sa/db", &[&ca]);
    let (s, _) = mtls(
        &server,
        AllowedIds::ids([id(WEB)]),
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    match rejection(&s.unwrap_err()) {
        PeerRejection::IdNotAllowed { id: got, allowed } => {
            assert_eq!(got.to_string(), "spiffe://example.org/ns/default/sa/db");
            assert!(allowed.contains(WEB), "{allowed}");
        }
        other => panic!("expected IdNotAllowed, got {other:?}"),
    }
}

#[tokio::test]
async fn predicate_and_trust_domain_rules_are_applied() {
    let a = ca("example.org");
    let b = ca("partner.net");
    let server = store(&a, API, &[&a, &b]);
    let client = store(&b, "spiffe://partner.net/ns/x/sa/y", &[&a]);
    // Trusted bundle, but the trust domain is not in the allowed list.
    let (s, _) = mtls(
        &server,
        AllowedIds::trust_domains([td("example.org")]),
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    assert!(matches!(
        rejection(&s.unwrap_err()),
        PeerRejection::IdNotAllowed { .. }
    ));
    let (s, _) = mtls(
        &server,
        AllowedIds::predicate("namespace x", |id| {
            id.namespace_and_service_account().map(|(ns, _)| ns) == Some("x")
        }),
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    s.unwrap();
}

#[tokio::test]
async fn server_with_unexpected_id_is_refused_by_the_client() {
    let ca = ca("example.org");
    let server = store(&ca, "spiffe://example.org/ns/evil/sa/impostor", &[&ca]);
    let client = store(&ca, WEB, &[&ca]);
    let (_, c) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::ids([id(API)]),
    )
    .await;
    assert!(matches!(
        rejection(&c.unwrap_err()),
        PeerRejection::IdNotAllowed { .. }
    ));
}

#[tokio::test]
async fn client_presenting_no_certificate_is_refused_as_no_certificate() {
    let ca = ca("example.org");
    let server = store(&ca, API, &[&ca]);
    let verifier = certs::SpiffeServerCertVerifier(certs::SpiffeVerifier::new(
        server.bundle_cell(),
        AllowedIds::AnyTrusted,
    ));
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let (s, c) = handshake(
        certs::server_config(&server, AllowedIds::AnyTrusted).unwrap(),
        client,
    )
    .await;
    let r = rejection(&s.unwrap_err());
    assert_eq!(r, PeerRejection::NoCertificate);
    assert_eq!(r.code(), "NO_CERTIFICATE");
    assert!(c.is_err());
}

#[tokio::test]
async fn tls12_only_client_cannot_connect() {
    let ca = ca("example.org");
    let server = store(&ca, API, &[&ca]);
    let client_store = store(&ca, WEB, &[&ca]);
    // The same verifier and SVID resolver as client_config, but offering TLS 1.2 only.
    let verifier = certs::SpiffeServerCertVerifier(certs::SpiffeVerifier::new(
        client_store.bundle_cell(),
        AllowedIds::AnyTrusted,
    ));
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_client_cert_resolver(Arc::new(certs::SvidResolver::new(client_store.clone())));
    let (s, c) = handshake(
        certs::server_config(&server, AllowedIds::AnyTrusted).unwrap(),
        tls12,
    )
    .await;
    let err = s.unwrap_err();
    let tls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    assert_eq!(
        tls_err,
        &rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOfferedOrEnabled)
    );
    assert_eq!(PeerRejection::from_io_error(&err), None);
    assert!(c.is_err());
}

#[tokio::test]
async fn a_federated_ca_cannot_vouch_for_ids_of_another_trust_domain() {
    // Both bundles are trusted, but partner.net's CA signs an example.org ID: the leaf is checked against
    // example.org's bundle only, so it is an unknown CA.
    let ours = ca("example.org");
    let partner = ca("partner.net");
    let forged = partner
        .issue_unchecked(
            &id(WEB),
            std::time::SystemTime::now(),
            std::time::SystemTime::now() + HOUR,
        )
        .unwrap();
    let server = store(&ours, API, &[&ours, &partner]);
    let client = certs::SvidStore::new(forged, bundles(&[&ours]));
    let (s, _) = mtls(
        &server,
        AllowedIds::AnyTrusted,
        &client,
        AllowedIds::AnyTrusted,
    )
    .await;
    let r = rejection(&s.unwrap_err());
    assert!(
        matches!(r, PeerRejection::UnknownCa { ref trust_domain, .. } if trust_domain.as_str() == "example.org"),
        "{r:?}"
    );
}
