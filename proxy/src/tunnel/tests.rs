//! Loopback tests: two "node proxies" in one process, a real TCP echo server as the original destination.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use certs::{AllowedIds, DevCa, PeerRejection, SpiffeId, SvidStore, TrustBundleSet, TrustDomain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const HOUR: Duration = Duration::from_secs(3600);
const NODE_B: &str = "spiffe://cluster.local/ns/tollgate/sa/node-b";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn ca() -> Arc<DevCa> {
    Arc::new(DevCa::create(&TrustDomain::new("cluster.local").unwrap(), 24 * HOUR).unwrap())
}

fn store(ca: &DevCa, spiffe_id: &str) -> Arc<SvidStore> {
    SvidStore::new(
        ca.issue_for(&id(spiffe_id), HOUR).unwrap(),
        TrustBundleSet::new().with(ca.bundle()),
    )
}

/// Forwards admitted tunnels to their original destination and records what it saw.
#[derive(Default)]
struct Forwarder {
    deny_dst: Option<SocketAddr>,
    served: Mutex<Vec<(SpiffeId, SocketAddr, SocketAddr)>>,
    refused: Mutex<Vec<Option<PeerRejection>>>,
}

impl InboundHandler for Forwarder {
    fn admit(
        &self,
        _peer: &SpiffeId,
        dst: SocketAddr,
        _reported: Option<SocketAddr>,
    ) -> Result<(), http::StatusCode> {
        if Some(dst) == self.deny_dst {
            return Err(http::StatusCode::FORBIDDEN);
        }
        Ok(())
    }

    fn serve(&self, mut tunnel: InboundTunnel) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.served.lock().unwrap().push((
            tunnel.peer_id.clone(),
            tunnel.peer_addr,
            tunnel.original_dst,
        ));
        Box::pin(async move {
            let mut upstream = TcpStream::connect(tunnel.original_dst).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut tunnel.stream, &mut upstream).await;
        })
    }

    fn refused(&self, _peer: SocketAddr, rejection: Option<PeerRejection>, _e: &std::io::Error) {
        self.refused.lock().unwrap().push(rejection);
    }
}

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn node(store: &Arc<SvidStore>, allowed: AllowedIds, handler: Arc<Forwarder>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TunnelServer::new(store, allowed, handler).unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

async fn roundtrip(tunnel: &mut OutboundTunnel, msg: &[u8]) {
    tunnel.stream.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), tunnel.stream.read_exact(&mut buf))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(buf, msg);
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn tunnel_carries_bytes_to_the_original_destination_with_verified_ids_on_both_ends() {
    let ca = ca();
    let echo = echo_server().await;
    let handler = Arc::new(Forwarder::default());
    let node_b = node(&store(&ca, NODE_B), AllowedIds::AnyTrusted, handler.clone()).await;
    let client = TunnelClient::default();
    let web = store(&ca, WEB);
    let mut t = client
        .open(&web, node_b, &AllowedIds::ids([id(NODE_B)]), echo, None)
        .await
        .unwrap();
    assert_eq!(t.peer_id, id(NODE_B));
    roundtrip(&mut t, b"hello through the tunnel").await;
    let served = handler.served.lock().unwrap().clone();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].0, id(WEB));
    assert_eq!(served[0].2, echo);
}

#[tokio::test]
async fn streams_share_one_connection_per_source_identity_and_node() {
    let ca = ca();
    let echo = echo_server().await;
    let handler = Arc::new(Forwarder::default());
    let node_b = node(&store(&ca, NODE_B), AllowedIds::AnyTrusted, handler.clone()).await;
    let client = TunnelClient::default();
    let web = store(&ca, WEB);
    let expect = AllowedIds::ids([id(NODE_B)]);
    let mut a = client
        .open(&web, node_b, &expect, echo, None)
        .await
        .unwrap();
    let mut b = client
        .open(&web, node_b, &expect, echo, None)
        .await
        .unwrap();
    roundtrip(&mut a, b"first").await;
    roundtrip(&mut b, b"second").await;
    roundtrip(&mut a, b"first again").await;
    assert_eq!(client.pooled_connections(), 1);
    let db = store(&ca, DB);
    let mut c = client.open(&db, node_b, &expect, echo, None).await.unwrap();
    roundtrip(&mut c, b"other identity").await;
    assert_eq!(client.pooled_connections(), 2);
    let served = handler.served.lock().unwrap().clone();
    assert_eq!(served.len(), 3);
    assert_eq!(
        served[0].1, served[1].1,
        "same TCP connection for the same source"
    );
    assert_ne!(
        served[0].1, served[2].1,
        "own connection for another source identity"
    );
    assert_eq!(served[2].0, id(DB));
}

#[tokio::test]
async fn node_refuses_a_source_id_it_does_not_allow_and_names_the_reason() {
    let ca = ca();
    let echo = echo_server().await;
    let handler = Arc::new(Forwarder::default());
    let node_b = node(
        &store(&ca, NODE_B),
        AllowedIds::ids([id(WEB)]),
        handler.clone(),
    )
    .await;
    let client = TunnelClient::default();
    let db = store(&ca, DB);
    let err = client
        .open(&db, node_b, &AllowedIds::AnyTrusted, echo, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TunnelError::Http { .. } | TunnelError::Tls { .. }),
        "{err:?}"
    );
    wait_for("the refusal", || {
        !handler.refused.lock().unwrap().is_empty()
    })
    .await;
    let refused = handler.refused.lock().unwrap().clone();
    assert!(
        matches!(refused[0], Some(PeerRejection::IdNotAllowed { ref id, .. }) if id.to_string() == DB),
        "{refused:?}"
    );
    assert!(handler.served.lock().unwrap().is_empty());
}

#[tokio::test]
async fn node_refuses_an_expired_source_certificate() {
    let ca = ca();
    let echo = echo_server().await;
    let handler = Arc::new(Forwarder::default());
    let node_b = node(&store(&ca, NODE_B), AllowedIds::AnyTrusted, handler.clone()).await;
    let now = SystemTime::now();
    let expired = SvidStore::new(
        ca.issue(&id(WEB), now - 2 * HOUR, now - HOUR).unwrap(),
        TrustBundleSet::new().with(ca.bundle()),
    );
    assert!(
        TunnelClient::default()
            .open(&expired, node_b, &AllowedIds::AnyTrusted, echo, None)
            .await
            .is_err()
    );
    wait_for("the refusal", || {
        !handler.refused.lock().unwrap().is_empty()
    })
    .await;
    let refused = handler.refused.lock().unwrap().clone();
    assert!(
        matches!(refused[0], Some(PeerRejection::Expired { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn source_refuses_a_node_with_an_unexpected_identity() {
    let ca = ca();
    let echo = echo_server().await;
    let handler = Arc::new(Forwarder::default());
    let impostor = node(&store(&ca, DB), AllowedIds::AnyTrusted, handler.clone()).await;
    let err = TunnelClient::default()
        .open(
            &store(&ca, WEB),
            impostor,
            &AllowedIds::ids([id(NODE_B)]),
            echo,
            None,
        )
        .await
        .unwrap_err();
    match err {
        TunnelError::Tls {
            rejection: Some(PeerRejection::IdNotAllowed { id: got, .. }),
            ..
        } => assert_eq!(got, id(DB)),
        other => panic!("expected IdNotAllowed, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_connect_returns_the_status_and_keeps_the_connection_usable() {
    let ca = ca();
    let echo = echo_server().await;
    let denied = echo_server().await;
    let handler = Arc::new(Forwarder {
        deny_dst: Some(denied),
        ..Default::default()
    });
    let node_b = node(&store(&ca, NODE_B), AllowedIds::AnyTrusted, handler.clone()).await;
    let client = TunnelClient::default();
    let web = store(&ca, WEB);
    let err = client
        .open(&web, node_b, &AllowedIds::AnyTrusted, denied, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TunnelError::Refused { status, .. } if status == http::StatusCode::FORBIDDEN),
        "{err:?}"
    );
    let mut ok = client
        .open(&web, node_b, &AllowedIds::AnyTrusted, echo, None)
        .await
        .unwrap();
    roundtrip(&mut ok, b"still fine").await;
    assert_eq!(client.pooled_connections(), 1);
}

#[tokio::test]
async fn plain_tcp_to_the_tunnel_port_is_refused_without_reaching_the_handler() {
    let ca = ca();
    let handler = Arc::new(Forwarder::default());
    let node_b = node(&store(&ca, NODE_B), AllowedIds::AnyTrusted, handler.clone()).await;
    let mut plain = TcpStream::connect(node_b).await.unwrap();
    plain
        .write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    wait_for("the refusal", || {
        !handler.refused.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(handler.refused.lock().unwrap()[0], None);
    assert!(handler.served.lock().unwrap().is_empty());
}

#[tokio::test]
async fn source_rotation_moves_new_streams_to_a_new_connection_without_breaking_open_ones() {
    let ca = ca();
    let echo = echo_server().await;
    let handler = Arc::new(Forwarder::default());
    let node_b = node(&store(&ca, NODE_B), AllowedIds::AnyTrusted, handler.clone()).await;
    let client = TunnelClient::default();
    let web = store(&ca, WEB);
    let expect = AllowedIds::ids([id(NODE_B)]);
    let mut before = client
        .open(&web, node_b, &expect, echo, None)
        .await
        .unwrap();
    roundtrip(&mut before, b"before rotation").await;

    web.set_svid(ca.issue_for(&id(WEB), HOUR).unwrap());
    let mut after = client
        .open(&web, node_b, &expect, echo, None)
        .await
        .unwrap();
    roundtrip(&mut after, b"after rotation").await;
    // The stream opened before the rotation still carries data.
    roundtrip(&mut before, b"old stream still open").await;

    let served = handler.served.lock().unwrap().clone();
    assert_eq!(served.len(), 2);
    assert_eq!(served[0].0, served[1].0, "same source identity");
    assert_ne!(
        served[0].1, served[1].1,
        "a new connection after the rotation"
    );
    assert_eq!(
        client.pooled_connections(),
        1,
        "the pool keeps only the new connection"
    );
}

#[tokio::test]
async fn bulk_bytes_beyond_the_flow_control_windows_arrive_whole_and_a_shutdown_ends_the_stream() {
    let ca = ca();
    let echo = echo_server().await;
    let handler = Arc::new(Forwarder::default());
    let node_b = node(&store(&ca, NODE_B), AllowedIds::AnyTrusted, handler).await;
    let client = TunnelClient::default();
    let web = store(&ca, WEB);
    let t = client
        .open(&web, node_b, &AllowedIds::ids([id(NODE_B)]), echo, None)
        .await
        .unwrap();
    // More than the stream (2 MiB) and connection (5 MiB) windows, so writes wait for WINDOW_UPDATEs.
    let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(t.stream);
    let expected = sent.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got))
        .await
        .expect("echoed and closed within 20 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes changed on the way");
}
