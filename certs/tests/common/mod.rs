//! Helpers shared by the integration tests: CAs, stores and real TLS handshakes over loopback TCP.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::{AllowedIds, DevCa, PeerRejection, SpiffeId, SvidStore, TrustBundleSet, TrustDomain};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub const HOUR: Duration = Duration::from_secs(3600);

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

pub fn ca(name: &str) -> Arc<DevCa> {
    Arc::new(DevCa::create(&td(name), 24 * HOUR).unwrap())
}

/// A store holding a fresh one-hour SVID for `spiffe_id` from `ca`, trusting `trusted`'s bundles.
pub fn store(ca: &DevCa, spiffe_id: &str, trusted: &[&DevCa]) -> Arc<SvidStore> {
    let svid = ca.issue_for(&id(spiffe_id), HOUR).unwrap();
    SvidStore::new(svid, bundles(trusted))
}

pub fn bundles(trusted: &[&DevCa]) -> TrustBundleSet {
    trusted
        .iter()
        .fold(TrustBundleSet::new(), |set, ca| set.with(ca.bundle()))
}

pub fn expired_store(ca: &DevCa, spiffe_id: &str, trusted: &[&DevCa]) -> Arc<SvidStore> {
    let now = SystemTime::now();
    let svid = ca
        .issue(&id(spiffe_id), now - 2 * HOUR, now - HOUR)
        .unwrap();
    SvidStore::new(svid, bundles(trusted))
}

pub type ServerSide = tokio_rustls::server::TlsStream<TcpStream>;
pub type ClientSide = tokio_rustls::client::TlsStream<TcpStream>;

/// Runs one handshake; after it, each side writes one byte and reads the other's, so a refusal sent as an alert
/// after the client's Finished (TLS 1.3 client auth) shows up on the client too.
pub async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
) -> (std::io::Result<ServerSide>, std::io::Result<ClientSide>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await?;
        tls.write_all(b"s").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        assert_eq!(&b, b"c");
        Ok(tls)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(certs::server_name(), tcp).await?;
        tls.write_all(b"c").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        assert_eq!(&b, b"s");
        Ok(tls)
    }
    .await;
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server side finished")
        .unwrap();
    (server_result, client_result)
}

/// Handshake between `server_store` (allowing `server_allows`) and `client_store` (allowing `client_allows`).
pub async fn mtls(
    server_store: &Arc<SvidStore>,
    server_allows: AllowedIds,
    client_store: &Arc<SvidStore>,
    client_allows: AllowedIds,
) -> (std::io::Result<ServerSide>, std::io::Result<ClientSide>) {
    handshake(
        certs::server_config(server_store, server_allows).unwrap(),
        certs::client_config(client_store, client_allows).unwrap(),
    )
    .await
}

pub fn rejection(err: &std::io::Error) -> PeerRejection {
    PeerRejection::from_io_error(err).unwrap_or_else(|| panic!("no PeerRejection in {err:?}"))
}
