//! One gRPC xDS stream with reconnects: ADS or a single type, SotW or delta.
//!
//! The task connects, hands the actor a fresh request channel (`Connected`), forwards every
//! response, and on failure reports `Disconnected` and retries after a jittered exponential
//! back-off. Requests are only ever written by the actor, so protocol state lives in one place.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use sentinel_proto::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sentinel_proto::pb::envoy::service::{
    cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient,
    endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient,
    listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient,
    route::v3::route_discovery_service_client::RouteDiscoveryServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::types;

/// Which RPC a stream uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// The gRPC cluster it talks to.
    pub cluster: String,
    /// None for ADS, else the single type it carries.
    pub type_url: Option<&'static str>,
    pub delta: bool,
}

pub enum Outbound {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

pub enum Inbound {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

/// Where a stream reports to (the client's actor).
pub trait Sink: Send + 'static {
    /// False when nobody listens any more.
    fn send(&self, e: StreamEvent) -> bool;
}

pub enum StreamEvent {
    Connected(StreamKey, mpsc::UnboundedSender<Outbound>),
    Response(StreamKey, Inbound),
    Disconnected(StreamKey, String),
}

/// Largest xDS message accepted: a hostile control plane cannot make us allocate more.
const MAX_MESSAGE: usize = 64 << 20;

type Responses =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Inbound, tonic::Status>> + Send>>;

async fn open(
    key: &StreamKey,
    channel: Channel,
    rx: mpsc::UnboundedReceiver<Outbound>,
) -> Result<Responses, tonic::Status> {
    let rx = UnboundedReceiverStream::new(rx);
    macro_rules! call {
        ($client:ident, $sotw:ident, $delta:ident) => {{
            let mut c = $client::new(channel).max_decoding_message_size(MAX_MESSAGE);
            if key.delta {
                let reqs = rx.filter_map(|o| async move {
                    if let Outbound::Delta(r) = o {
                        Some(r)
                    } else {
                        None
                    }
                });
                let s = c.$delta(reqs).await?.into_inner();
                Box::pin(s.map(|r| r.map(Inbound::Delta))) as Responses
            } else {
                let reqs = rx.filter_map(|o| async move {
                    if let Outbound::Sotw(r) = o {
                        Some(r)
                    } else {
                        None
                    }
                });
                let s = c.$sotw(reqs).await?.into_inner();
                Box::pin(s.map(|r| r.map(Inbound::Sotw))) as Responses
            }
        }};
    }
    Ok(match key.type_url {
        None => call!(
            AggregatedDiscoveryServiceClient,
            stream_aggregated_resources,
            delta_aggregated_resources
        ),
        Some(types::LISTENER) => call!(
            ListenerDiscoveryServiceClient,
            stream_listeners,
            delta_listeners
        ),
        Some(types::ROUTE) => call!(RouteDiscoveryServiceClient, stream_routes, delta_routes),
        Some(types::CLUSTER) => call!(
            ClusterDiscoveryServiceClient,
            stream_clusters,
            delta_clusters
        ),
        Some(types::ENDPOINT) => call!(
            EndpointDiscoveryServiceClient,
            stream_endpoints,
            delta_endpoints
        ),
        Some(other) => {
            return Err(tonic::Status::unimplemented(format!(
                "no xDS service for {other}"
            )))
        }
    })
}

/// Runs the stream until the actor goes away. `target` resolves the cluster's address anew
/// on every attempt, so a control plane that moves is followed.
pub async fn run(
    key: StreamKey,
    target: impl Fn() -> Option<(String, u16)> + Send + 'static,
    events: impl Sink,
) {
    let mut backoff = Duration::from_millis(250);
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    loop {
        let result = attempt(&key, &target, &events).await;
        let reason = match result {
            Ok(true) => {
                // The stream delivered responses: start the back-off over.
                backoff = Duration::from_millis(250);
                "stream closed".to_string()
            }
            Ok(false) => "stream closed before any response".to_string(),
            Err(e) => e,
        };
        if !events.send(StreamEvent::Disconnected(key.clone(), reason.clone())) {
            return;
        }
        let jitter = rand::random_range(0.5..1.0);
        let wait = backoff.mul_f64(jitter);
        tracing::warn!(cluster = %key.cluster, "xDS stream failed ({reason}); retrying in {wait:?}");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn attempt(
    key: &StreamKey,
    target: &impl Fn() -> Option<(String, u16)>,
    events: &impl Sink,
) -> Result<bool, String> {
    let (host, port) =
        target().ok_or_else(|| format!("cluster '{}' has no endpoint", key.cluster))?;
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to nothing"))?;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    if !events.send(StreamEvent::Connected(key.clone(), tx)) {
        return Err("client stopped".to_string());
    }
    let mut responses = open(key, channel, rx)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    let mut got_any = false;
    while let Some(item) = responses.next().await {
        match item {
            Ok(msg) => {
                got_any = true;
                if !events.send(StreamEvent::Response(key.clone(), msg)) {
                    return Ok(got_any);
                }
            }
            Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
        }
    }
    Ok(got_any)
}
