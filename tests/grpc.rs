//! gRPC through the proxy: h2c downstream, HTTP/2 upstream, trailers end to end.

use std::net::SocketAddr;

use sentinel_proto::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
};
use sentinel_proto::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::Code,
    rate_limit_service_client::RateLimitServiceClient,
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
    RateLimitRequest, RateLimitResponse,
};
use test_support::*;

/// A unary gRPC service: OK for domain "ok", NOT_FOUND (a trailers-only answer) otherwise.
struct Rls;

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        req: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let domain = req.into_inner().domain;
        if domain != "ok" {
            return Err(tonic::Status::not_found(format!("no domain {domain}")));
        }
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        }))
    }
}

async fn grpc_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(Rls))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_grpc_with_trailers() {
    let up = grpc_upstream().await;
    let routes = "[ { match: { prefix: /, grpc: {} }, route: { cluster: g } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", h2_cluster("g", up))).await;
    let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let ok = client
        .should_rate_limit(RateLimitRequest {
            domain: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().overall_code, Code::Ok as i32);
    // The error travels in trailers (grpc-status, grpc-message).
    let err = client
        .should_rate_limit(RateLimitRequest {
            domain: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "no domain x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_streaming_grpc() {
    // The mock control plane is a streaming gRPC upstream.
    let up = upstream("one").await;
    let cp = control_plane().await;
    cp.set_snapshot("via-proxy", snapshot("v1", "route_a", "cluster_a", up));
    let routes = "[ { match: { prefix: / }, route: { cluster: xds, timeout: 0s } } ]";
    let (_p, addr) =
        static_proxy(routes, &format!("[ {} ]", h2_cluster("xds", cp.xds_addr()))).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let node = sentinel_proto::pb::envoy::config::core::v3::Node {
        id: "via-proxy".into(),
        ..Default::default()
    };
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: control_plane_mock::resource::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().expect("a CDS response");
    assert_eq!(first.version_info, "v1");
    assert_eq!(first.resources.len(), 1);
    // A second message on the same stream: the ACK, then a new version is pushed back.
    tx.send(DiscoveryRequest {
        type_url: control_plane_mock::resource::CLUSTER.into(),
        version_info: "v1".into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    cp.wait_for_ack(
        control_plane_mock::resource::CLUSTER,
        "v1",
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("ACK through the proxy");
    cp.set_snapshot("via-proxy", snapshot("v2", "route_a", "cluster_b", up));
    let second = responses
        .message()
        .await
        .unwrap()
        .expect("a pushed CDS response");
    assert_eq!(second.version_info, "v2");
}
