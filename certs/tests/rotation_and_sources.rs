//! Rotation without dropping open connections, the development CA source at half-life during traffic, and the
//! file source re-reading changed files.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::{AllowedIds, DevCaSource, FileSource, SvidStore, write_svid_files};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "spiffe://example.org/ns/default/sa/web";
const API: &str = "spiffe://example.org/ns/default/sa/api";

async fn echo_round<
    S: AsyncReadExt + AsyncWriteExt + Unpin,
    C: AsyncReadExt + AsyncWriteExt + Unpin,
>(
    server: &mut S,
    client: &mut C,
    msg: &[u8],
) {
    client.write_all(msg).await.unwrap();
    client.flush().await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg);
    server.write_all(msg).await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg);
}

fn server_leaf(c: &ClientSide) -> Vec<u8> {
    c.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn rotation_swaps_the_cert_for_new_handshakes_while_open_connections_keep_flowing() {
    let ca = ca("example.org");
    let server_store = store(&ca, API, &[&ca]);
    let client_store = store(&ca, WEB, &[&ca]);
    let server_cfg = certs::server_config(&server_store, AllowedIds::AnyTrusted).unwrap();
    let client_cfg = certs::client_config(&client_store, AllowedIds::ids([id(API)])).unwrap();

    let (s1, c1) = handshake(server_cfg.clone(), client_cfg.clone()).await;
    let (mut s1, mut c1) = (s1.unwrap(), c1.unwrap());
    let old_leaf = server_leaf(&c1);
    assert_eq!(old_leaf, server_store.svid().chain()[0].to_vec());
    echo_round(&mut s1, &mut c1, b"before rotation").await;

    let generation = server_store.generation();
    server_store.set_svid(ca.issue_for(&id(API), HOUR).unwrap());
    assert_eq!(server_store.generation(), generation + 1);
    let new_leaf = server_store.svid().chain()[0].to_vec();
    assert_ne!(new_leaf, old_leaf);

    // The open connection is untouched and still carries data.
    echo_round(&mut s1, &mut c1, b"after rotation").await;
    assert_eq!(server_leaf(&c1), old_leaf);

    // A new handshake with the SAME configs presents the new certificate.
    let (s2, c2) = handshake(server_cfg, client_cfg).await;
    let (mut s2, mut c2) = (s2.unwrap(), c2.unwrap());
    assert_eq!(server_leaf(&c2), new_leaf);
    echo_round(&mut s2, &mut c2, b"new connection").await;
    echo_round(&mut s1, &mut c1, b"old connection still open").await;
}

#[tokio::test]
async fn dev_ca_source_rotates_at_half_life_during_traffic_with_zero_failures() {
    let ca = ca("example.org");
    let ttl = Duration::from_secs(2);
    let (server_store, _server_src) = DevCaSource::new(ca.clone(), id(API), ttl).start().unwrap();
    let (client_store, _client_src) = DevCaSource::new(ca.clone(), id(WEB), ttl).start().unwrap();
    let server_cfg = certs::server_config(&server_store, AllowedIds::ids([id(WEB)])).unwrap();
    let client_cfg = certs::client_config(&client_store, AllowedIds::ids([id(API)])).unwrap();

    let (s, c) = handshake(server_cfg.clone(), client_cfg.clone()).await;
    let (mut long_s, mut long_c) = (s.unwrap(), c.unwrap());

    let mut seen = BTreeSet::new();
    let (mut ok, mut failed) = (0u32, 0u32);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3200) {
        let (s, c) = handshake(server_cfg.clone(), client_cfg.clone()).await;
        match (s, c) {
            (Ok(mut s), Ok(mut c)) => {
                seen.insert(server_leaf(&c));
                echo_round(&mut s, &mut c, b"request").await;
                ok += 1;
            }
            (s, c) => {
                eprintln!("failed: server {:?} client {:?}", s.err(), c.err());
                failed += 1;
            }
        }
        echo_round(&mut long_s, &mut long_c, b"long-lived").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        failed, 0,
        "{failed} handshakes failed during rotation ({ok} succeeded)"
    );
    assert!(ok > 20, "only {ok} requests");
    // ttl 2 s rotates about every second: at least three distinct server certificates in 3.2 s.
    assert!(seen.len() >= 3, "saw {} server certificates", seen.len());
    assert!(
        server_store.generation() >= 2,
        "generation {}",
        server_store.generation()
    );
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn file_source_rereads_changed_files_and_keeps_the_last_good_svid() {
    let ca = ca("example.org");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue_for(&id(WEB), HOUR).unwrap();
    let files = write_svid_files(&first, &ca.bundle(), dir.path()).unwrap();
    let mut source = FileSource::new(&files);
    source.poll_interval = Duration::from_millis(20);
    let (store, handle): (Arc<SvidStore>, _) = source.start().unwrap();
    assert_eq!(store.svid().chain(), first.chain());
    assert!(store.bundles().get(&td("example.org")).is_some());

    let second = ca.issue_for(&id(API), HOUR).unwrap();
    write_svid_files(&second, &ca.bundle(), dir.path()).unwrap();
    wait_for("the new SVID", || {
        store.svid().spiffe_id() == second.spiffe_id()
    })
    .await;
    assert_eq!(store.svid().chain(), second.chain());

    // A broken certificate file is refused; the last good SVID stays in use.
    std::fs::write(
        &files.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    wait_for("the refresh error", || handle.last_error().is_some()).await;
    assert_eq!(store.svid().chain(), second.chain());

    // A good pair again clears the error.
    let third = ca.issue_for(&id(WEB), HOUR).unwrap();
    write_svid_files(&third, &ca.bundle(), dir.path()).unwrap();
    wait_for("the third SVID", || store.svid().chain() == third.chain()).await;
    wait_for("the error to clear", || handle.last_error().is_none()).await;
}

#[tokio::test]
async fn file_source_refuses_to_start_on_unusable_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = certs::SvidFiles::in_dir(dir.path());
    let err = FileSource::new(&files).start().unwrap_err();
    assert!(err.to_string().contains("svid.pem"), "{err}");
}
