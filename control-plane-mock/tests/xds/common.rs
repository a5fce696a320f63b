//! Helpers shared by the integration tests: snapshot builders and small xDS clients.

use std::{net::SocketAddr, time::Duration};

use control_plane_mock::{resource, Snapshot};
use sentinel_proto::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        },
    },
    google::rpc,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Streaming};

pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait to be fairly sure that no response is coming.
pub const QUIET: Duration = Duration::from_millis(300);
pub const NODE: &str = "test-node";

pub fn listener(name: &str, port: u16, route: &str) -> String {
    format!(
        r#"
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
              stat_prefix: {name}
              rds: {{ route_config_name: {route}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
              http_filters: [ {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }} ]
"#
    )
}

pub fn route(name: &str, cluster: &str) -> String {
    format!(
        r#"
  - "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
    name: {name}
    virtual_hosts: [ {{ name: vh, domains: ["*"], routes: [ {{ match: {{ prefix: "/" }}, route: {{ cluster: {cluster} }} }} ] }} ]
"#
    )
}

pub fn cluster(name: &str) -> String {
    format!(
        r#"
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: {name}
    type: EDS
    connect_timeout: 1s
    eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
"#
    )
}

pub fn endpoints(cluster: &str, port: u16) -> String {
    format!(
        r#"
  - "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
    cluster_name: {cluster}
    endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ] }} ]
"#
    )
}

/// A snapshot from a version and resource fragments built by the functions above.
pub fn snapshot(version: &str, parts: &[String]) -> Snapshot {
    let text = format!("version: \"{version}\"\nresources:\n{}", parts.concat());
    Snapshot::from_text(&text).expect("test snapshot parses")
}

/// Listeners l1, l2 (routes r1, r2), clusters c1, c2 and their endpoints.
pub fn full_snapshot(version: &str) -> Snapshot {
    snapshot(
        version,
        &[
            listener("l1", 10001, "r1"),
            listener("l2", 10002, "r2"),
            route("r1", "c1"),
            route("r2", "c2"),
            cluster("c1"),
            cluster("c2"),
            endpoints("c1", 8001),
            endpoints("c2", 8002),
        ],
    )
}

pub fn node() -> Option<Node> {
    Some(Node {
        id: NODE.into(),
        cluster: "test".into(),
        ..Default::default()
    })
}

pub fn names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names.into_iter().map(str::to_string).collect()
}

pub async fn ads_client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the mock")
}

/// One SotW stream: a request sender and the response stream.
pub struct SotwClient {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

impl SotwClient {
    pub async fn ads(addr: SocketAddr) -> Self {
        let (tx, requests) = mpsc::channel(16);
        let rx = ads_client(addr)
            .await
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .expect("open ADS stream")
            .into_inner();
        SotwClient { tx, rx }
    }

    pub async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.expect("stream open");
    }

    /// First request of a type (carries the node).
    pub async fn subscribe(&self, type_url: &str, resource_names: &[&str]) {
        self.send(DiscoveryRequest {
            node: node(),
            type_url: type_url.into(),
            resource_names: names(resource_names.iter().copied()),
            ..Default::default()
        })
        .await
    }

    pub async fn ack(&self, response: &DiscoveryResponse, resource_names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: names(resource_names.iter().copied()),
            ..Default::default()
        })
        .await
    }

    pub async fn nack(&self, response: &DiscoveryResponse, last_good: &str, message: &str) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: last_good.into(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(rpc::Status {
                code: 3,
                message: message.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(TIMEOUT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream not ended")
    }

    /// Asserts that nothing arrives for a while.
    pub async fn expect_quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

/// One delta stream.
pub struct DeltaClient {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    pub async fn ads(addr: SocketAddr) -> Self {
        let (tx, requests) = mpsc::channel(16);
        let rx = ads_client(addr)
            .await
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .expect("open delta ADS stream")
            .into_inner();
        DeltaClient { tx, rx }
    }

    pub async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.expect("stream open");
    }

    pub async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(TIMEOUT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream not ended")
    }

    pub async fn expect_quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

/// The resource names in a SotW response, in order.
pub fn response_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| resource::resource_name(any).unwrap_or_default())
        .collect()
}

/// The resource names in a delta response, in order.
pub fn delta_names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}
