//! What tollgate's two servers of the Hubble Observer API, the node's (`observer`) and the relay's (`relay`), share:
//! the standard `grpc.health.v1.Health` service that `hubble status` checks first, the version string they report,
//! serving a gRPC router on a listener plain or over mTLS, and the mTLS itself (`tls`). Depends on neither server.

pub mod tls;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::hubble::health::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

/// `tollgate <version>`, as `ServerStatus` and `GetNodes` report it.
pub fn version() -> String {
    format!("tollgate {}", env!("CARGO_PKG_VERSION"))
}

/// The gRPC service names `hubble status` and generic health probes ask about ("" is the whole server).
const HEALTH_SERVICES: [&str; 3] = ["", "hubble.server.Observer", "observer.Observer"];

/// `grpc.health.v1.Health`: the server answers SERVING while it runs.
#[derive(Debug, Clone, Copy)]
pub struct HealthService;

type HealthStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn health_of(service: &str) -> Result<HealthCheckResponse, Status> {
    if HEALTH_SERVICES.contains(&service) {
        Ok(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        })
    } else {
        Err(Status::not_found(format!(
            "unknown service {service:?}; this server reports health for \"\", hubble.server.Observer and observer.Observer"
        )))
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    type WatchStream = HealthStream;

    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        health_of(&request.into_inner().service).map(Response::new)
    }

    /// The status never changes while the server runs: one answer, then the stream stays open.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let first = health_of(&request.into_inner().service).unwrap_or(HealthCheckResponse {
            status: ServingStatus::ServiceUnknown as i32,
        });
        let stream =
            futures::stream::once(async move { Ok(first) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The health service for a server's router.
pub fn health() -> HealthServer<HealthService> {
    HealthServer::new(HealthService)
}

/// Serves `router` on `listener` until `stop`: over mTLS when `acceptor` is set (refused handshakes logged as
/// `what`'s), else plain.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    acceptor: Option<TlsAcceptor>,
    what: &'static str,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    match acceptor {
        Some(acceptor) => {
            let incoming = tls::incoming(listener, acceptor, what, stop.clone());
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
    }
}
