//! The Workload API client against a small in-test agent: a tonic server on a Unix socket that streams an SVID,
//! then a rotated one, and enforces the `workload.spiffe.io: true` header like SPIRE's agent.

mod common;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use certs::workload_api::pb::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use certs::workload_api::pb::{X509svid, X509svidRequest, X509svidResponse};
use certs::workload_api::{WorkloadApiSource, parse_response};
use certs::{DevCa, Svid, WorkloadApiError};
use common::*;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

const WEB: &str = "spiffe://example.org/ns/default/sa/web";

fn response(svid: &Svid, ca: &DevCa, federated: &[&DevCa]) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: svid.spiffe_id().to_string(),
            x509_svid: svid.chain().iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: svid.key_pkcs8_der().to_vec(),
            bundle: ca.certificate().to_vec(),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: federated
            .iter()
            .map(|f| {
                (
                    format!("spiffe://{}", f.trust_domain()),
                    f.certificate().to_vec(),
                )
            })
            .collect(),
    }
}

struct Agent {
    current: watch::Receiver<X509svidResponse>,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Agent {
    type FetchX509SVIDStream = Pin<Box<dyn Stream<Item = Result<X509svidResponse, Status>> + Send>>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        if req
            .metadata()
            .get("workload.spiffe.io")
            .and_then(|v| v.to_str().ok())
            != Some("true")
        {
            return Err(Status::invalid_argument(
                "security header missing from request",
            ));
        }
        let mut current = self.current.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let msg = current.borrow_and_update().clone();
                if tx.send(Ok(msg)).await.is_err() || current.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the agent on `socket` until the returned sender fires (graceful: open streams end first, which happens
/// when the test drops the agent's watch sender).
fn serve(
    socket: &Path,
    current: watch::Receiver<X509svidResponse>,
) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(Agent { current }))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (task, stop)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("agent.sock")
}

#[tokio::test]
async fn streams_the_svid_then_a_rotation_and_survives_an_agent_restart() {
    let partner = common::ca("partner.net");
    let ca = ca("example.org");
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let first = ca.issue_for(&id(WEB), HOUR).unwrap();
    let (tx, rx) = watch::channel(response(&first, &ca, &[&partner]));
    let (server, stop) = serve(&socket, rx);

    let mut source = WorkloadApiSource::new(&socket);
    source.max_backoff = Duration::from_millis(200);
    let (store, handle) = source.start().await.unwrap();
    assert_eq!(store.svid().chain(), first.chain());
    assert_eq!(store.svid().spiffe_id(), &id(WEB));
    let tds: Vec<String> = store
        .bundles()
        .trust_domains()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(tds, ["example.org", "partner.net"]);

    // Rotation on the open stream.
    let second = ca.issue_for(&id(WEB), HOUR).unwrap();
    tx.send(response(&second, &ca, &[])).unwrap();
    wait_for("the rotated SVID", || {
        store.svid().chain() == second.chain()
    })
    .await;
    assert!(
        store.bundles().get(&td("partner.net")).is_none(),
        "federated bundle removed by the update"
    );

    // The agent restarts with a new SVID: its stream ends, it goes away, a new one binds the same socket; the
    // source reconnects and picks the new SVID up.
    drop(tx);
    stop.send(()).unwrap();
    server.await.unwrap();
    let third = ca.issue_for(&id(WEB), HOUR).unwrap();
    let (_tx2, rx2) = watch::channel(response(&third, &ca, &[]));
    let _server2 = serve(&socket, rx2);
    wait_for("the SVID after reconnecting", || {
        store.svid().chain() == third.chain()
    })
    .await;
    wait_for("the error to clear", || handle.last_error().is_none()).await;
}

#[tokio::test]
async fn agent_refuses_requests_without_the_security_header() {
    // Proves the header check the previous test relies on: a raw client without the header is refused.
    let ca = ca("example.org");
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let svid = ca.issue_for(&id(WEB), HOUR).unwrap();
    let (_tx, rx) = watch::channel(response(&svid, &ca, &[]));
    let _server = serve(&socket, rx);
    let path = socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut raw =
        certs::workload_api::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let status = raw.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn connecting_to_a_missing_socket_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let err = WorkloadApiSource::new(socket_in(&dir))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, WorkloadApiError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("agent.sock"), "{err}");
}

#[test]
fn malformed_responses_are_refused_with_reasons() {
    let ca = ca("example.org");
    let svid = ca.issue_for(&id(WEB), HOUR).unwrap();
    let good = response(&svid, &ca, &[]);
    parse_response(good.clone()).unwrap();

    let empty = X509svidResponse {
        svids: vec![],
        ..good.clone()
    };
    assert!(matches!(
        parse_response(empty),
        Err(WorkloadApiError::NoSvids)
    ));

    let mut lying = good.clone();
    lying.svids[0].spiffe_id = "spiffe://example.org/ns/default/sa/other".into();
    assert!(matches!(
        parse_response(lying),
        Err(WorkloadApiError::IdMismatch { .. })
    ));

    let mut truncated = good.clone();
    truncated.svids[0].x509_svid.truncate(10);
    assert!(matches!(
        parse_response(truncated),
        Err(WorkloadApiError::BadSvid { .. })
    ));

    let mut no_bundle = good.clone();
    no_bundle.svids[0].bundle.clear();
    assert!(matches!(
        parse_response(no_bundle),
        Err(WorkloadApiError::BadBundle { .. })
    ));

    let mut bad_key = good;
    bad_key
        .federated_bundles
        .insert("partner.net".into(), ca.certificate().to_vec());
    let err = parse_response(bad_key).unwrap_err();
    assert!(err.to_string().contains("trust domain SPIFFE ID"), "{err}");
}
