//! X.509-SVID shape checks (every refusal), PEM round trips, half-life, and the development CA's files.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certs::{AllowedIds, DevCa, DevCaError, PeerRejection, SpiffeVerifier, Svid, SvidError};
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};

/// A throwaway rcgen CA to sign malformed leaves with.
fn raw_ca() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Issuer::new(p, key)
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    edit: impl FnOnce(&mut CertificateParams),
) -> (CertificateDer<'static>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://example.org/ns/a/sa/b".try_into().unwrap(),
    )];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    edit(&mut p);
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.der().clone(), key.serialize_der())
}

fn svid_of(edit: impl FnOnce(&mut CertificateParams)) -> Result<Svid, SvidError> {
    let (cert, key) = leaf(&raw_ca(), edit);
    Svid::from_der(vec![cert], key)
}

#[test]
fn well_formed_leaf_is_an_svid() {
    let svid = svid_of(|_| {}).unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/ns/a/sa/b"
    );
}

#[test]
fn leaf_without_uri_san_is_refused() {
    let e = svid_of(|p| {
        p.subject_alt_names = vec![SanType::DnsName("web.example.org".try_into().unwrap())]
    })
    .unwrap_err();
    assert!(matches!(e, SvidError::UriSanCount(0)), "{e:?}");
}

#[test]
fn leaf_with_two_uri_sans_is_refused() {
    let e = svid_of(|p| {
        p.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/ns/c/sa/d".try_into().unwrap(),
        ))
    })
    .unwrap_err();
    assert!(matches!(e, SvidError::UriSanCount(2)), "{e:?}");
}

#[test]
fn non_spiffe_uri_is_refused() {
    let e = svid_of(|p| {
        p.subject_alt_names = vec![SanType::URI("https://example.org/x".try_into().unwrap())]
    })
    .unwrap_err();
    assert!(matches!(e, SvidError::BadSpiffeId { .. }), "{e:?}");
}

#[test]
fn trust_domain_id_as_leaf_is_refused() {
    let e = svid_of(|p| {
        p.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())]
    })
    .unwrap_err();
    assert!(matches!(e, SvidError::TrustDomainIdAsLeaf(_)), "{e:?}");
}

#[test]
fn ca_leaf_is_refused() {
    let e = svid_of(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)).unwrap_err();
    assert!(matches!(e, SvidError::LeafIsCa), "{e:?}");
}

#[test]
fn certificate_signing_key_usage_is_refused() {
    let e = svid_of(|p| {
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ]
    })
    .unwrap_err();
    assert!(matches!(e, SvidError::LeafKeyUsage(_)), "{e:?}");
    let e = svid_of(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]).unwrap_err();
    assert!(matches!(e, SvidError::LeafKeyUsage(_)), "{e:?}");
}

#[test]
fn key_of_another_certificate_is_refused() {
    let ca = raw_ca();
    let (cert, _) = leaf(&ca, |_| {});
    let (_, other_key) = leaf(&ca, |_| {});
    let e = Svid::from_der(vec![cert], other_key).unwrap_err();
    assert!(matches!(e, SvidError::KeyMismatch), "{e:?}");
    assert!(matches!(
        Svid::from_der(vec![], vec![1, 2]),
        Err(SvidError::EmptyChain)
    ));
    let (cert, _) = leaf(&ca, |_| {});
    assert!(matches!(
        Svid::from_der(vec![cert], vec![0x30, 0x00]),
        Err(SvidError::Key(_))
    ));
}

#[test]
fn pem_round_trip_and_non_pkcs8_key_is_refused_with_the_fix() {
    let ca = ca("example.org");
    let svid = ca
        .issue_for(&id("spiffe://example.org/ns/a/sa/b"), HOUR)
        .unwrap();
    let back = Svid::from_pem(svid.chain_pem().as_bytes(), svid.key_pem().as_bytes()).unwrap();
    assert_eq!(back.chain(), svid.chain());
    assert_eq!(back.spiffe_id(), svid.spiffe_id());
    let sec1 = svid.key_pem().replace("PRIVATE KEY", "EC PRIVATE KEY");
    let e = Svid::from_pem(svid.chain_pem().as_bytes(), sec1.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("PKCS#8"), "{e}");
}

#[test]
fn refresh_is_due_at_half_life() {
    let ca = ca("example.org");
    let nb = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let svid = ca
        .issue(
            &id("spiffe://example.org/ns/a/sa/b"),
            nb,
            nb + Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(svid.not_before(), nb);
    assert_eq!(svid.not_after(), nb + Duration::from_secs(3600));
    assert_eq!(svid.refresh_at(), nb + Duration::from_secs(1800));
}

#[test]
fn non_svid_peer_certificate_is_refused_as_not_svid() {
    let ca = raw_ca();
    let (cert, _) = leaf(&ca, |p| {
        p.subject_alt_names = vec![SanType::DnsName("web".try_into().unwrap())]
    });
    let v = SpiffeVerifier::new(
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(certs::TrustBundleSet::new())),
        AllowedIds::AnyTrusted,
    );
    let r = v
        .verify(&cert, &[], UnixTime::now(), webpki::KeyUsage::client_auth())
        .unwrap_err();
    assert!(matches!(r, PeerRejection::NotSvid(_)), "{r:?}");
}

#[test]
fn dev_ca_saves_loads_and_keeps_issuing_for_the_same_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let created = DevCa::create(&td("example.org"), 24 * HOUR).unwrap();
    created.save(dir.path()).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let loaded = DevCa::load(dir.path()).unwrap();
    assert_eq!(loaded.trust_domain(), &td("example.org"));
    assert_eq!(loaded.certificate(), created.certificate());
    // An SVID from the loaded CA verifies against the bundle of the created one.
    let svid = loaded
        .issue_for(&id("spiffe://example.org/ns/a/sa/b"), HOUR)
        .unwrap();
    let v = SpiffeVerifier::new(
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(bundles(&[&created]))),
        AllowedIds::AnyTrusted,
    );
    let got = v
        .verify(
            &svid.chain()[0],
            &svid.chain()[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap();
    assert_eq!(got, *svid.spiffe_id());
}

#[test]
fn dev_ca_refuses_foreign_ids_empty_windows_and_missing_dirs() {
    let ca = ca("example.org");
    let e = ca
        .issue_for(&id("spiffe://other.org/ns/a/sa/b"), HOUR)
        .unwrap_err();
    assert!(matches!(e, DevCaError::ForeignId { .. }), "{e:?}");
    let now = SystemTime::now();
    assert!(matches!(
        ca.issue(&id("spiffe://example.org/ns/a/sa/b"), now, now),
        Err(DevCaError::EmptyValidity)
    ));
    let dir = tempfile::tempdir().unwrap();
    let e = DevCa::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("tollgate certs ca"), "{e}");
}
