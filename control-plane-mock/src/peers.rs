//! Trivial filter peers for benchmarks: an ext_proc server that lets every message through
//! unchanged, and a rate limit service that allows every request. They answer at once, so a
//! proxy's added latency with the filter on is its own cost of the round trip.

use futures::StreamExt;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request,
    processing_response::Response,
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use sentinel_proto::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::Code,
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
    RateLimitRequest, RateLimitResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

/// Accepted connections with TCP_NODELAY: tonic sets it only on listeners it binds itself,
/// and without it a reply written as headers then data waits for the proxy's delayed ACK
/// (measured: 12-25 ms added to every ext_proc round trip).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        })
    })
}

struct PassThrough;

/// The "continue unchanged" answer to one processing request.
fn pass(req: ProcessingRequest) -> Option<ProcessingResponse> {
    let response = match req.request? {
        Request::RequestHeaders(_) => Response::RequestHeaders(HeadersResponse::default()),
        Request::ResponseHeaders(_) => Response::ResponseHeaders(HeadersResponse::default()),
        Request::RequestBody(_) => Response::RequestBody(BodyResponse::default()),
        Request::ResponseBody(_) => Response::ResponseBody(BodyResponse::default()),
        Request::RequestTrailers(_) => Response::RequestTrailers(TrailersResponse::default()),
        Request::ResponseTrailers(_) => Response::ResponseTrailers(TrailersResponse::default()),
    };
    Some(ProcessingResponse {
        response: Some(response),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl ExternalProcessor for PassThrough {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let Some(resp) = pass(req) else { continue };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

struct AllowAll;

#[tonic::async_trait]
impl RateLimitService for AllowAll {
    async fn should_rate_limit(
        &self,
        _request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        }))
    }
}

/// Serves the pass-through ext_proc server on `listener` until the process ends.
pub async fn serve_ext_proc(listener: TcpListener) {
    let served = tonic::transport::Server::builder()
        .add_service(ExternalProcessorServer::new(PassThrough))
        .serve_with_incoming(incoming(listener))
        .await;
    if let Err(e) = served {
        tracing::error!("ext_proc server stopped: {e}");
    }
}

/// Serves the allow-all rate limit service on `listener` until the process ends.
pub async fn serve_rls(listener: TcpListener) {
    let served = tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(AllowAll))
        .serve_with_incoming(incoming(listener))
        .await;
    if let Err(e) = served {
        tracing::error!("rate limit service stopped: {e}");
    }
}
