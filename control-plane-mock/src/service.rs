//! The gRPC services: ADS (SotW and delta) and the per-type LDS, RDS, CDS and EDS services.
//! They all share one implementation; a per-type service is ADS with its type fixed, which is
//! what the protocol says it is.

use std::{collections::BTreeSet, sync::Arc};

use sentinel_proto::pb::envoy::service::{
    cluster::v3::cluster_discovery_service_server::{
        ClusterDiscoveryService, ClusterDiscoveryServiceServer,
    },
    discovery::v3::{
        aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        },
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    },
    endpoint::v3::endpoint_discovery_service_server::{
        EndpointDiscoveryService, EndpointDiscoveryServiceServer,
    },
    listener::v3::listener_discovery_service_server::{
        ListenerDiscoveryService, ListenerDiscoveryServiceServer,
    },
    route::v3::route_discovery_service_server::{
        RouteDiscoveryService, RouteDiscoveryServiceServer,
    },
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    delta::Delta,
    resource,
    sotw::{self, Sotw},
    stream::{self, ResponseStream, Shared, StreamCtx},
};

/// Largest request accepted; xDS requests are small, but a client may list many names.
const MAX_MESSAGE: usize = 64 << 20;

type SotwStream = ResponseStream<DiscoveryResponse>;
type DeltaStream = ResponseStream<DeltaDiscoveryResponse>;

/// The one implementation behind every service.
#[derive(Clone, Debug)]
pub(crate) struct XdsService {
    shared: Arc<Shared>,
}

impl XdsService {
    pub fn new(shared: Arc<Shared>) -> Self {
        XdsService { shared }
    }

    fn sotw(
        &self,
        service: &'static str,
        fixed_type: Option<&'static str>,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        let ctx = StreamCtx::new(self.shared.clone(), service, false, fixed_type);
        Ok(Response::new(stream::spawn(
            ctx,
            Sotw::default(),
            request.into_inner(),
        )))
    }

    fn delta(
        &self,
        service: &'static str,
        fixed_type: Option<&'static str>,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let ctx = StreamCtx::new(self.shared.clone(), service, true, fixed_type);
        Ok(Response::new(stream::spawn(
            ctx,
            Delta::default(),
            request.into_inner(),
        )))
    }

    /// The unary Fetch* RPCs: the current selection, with no subscription kept.
    fn fetch(
        &self,
        type_url: &'static str,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        let node_id = request.node.map(|n| n.id).unwrap_or_default();
        let snapshot = self
            .shared
            .snapshot_for(&node_id)
            .ok_or_else(|| Status::unavailable(format!("no snapshot for node {node_id:?}")))?;
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let wildcard = sotw::is_wildcard(type_url, &names);
        let resources = sotw::select(&snapshot, type_url, wildcard, &names)
            .into_iter()
            .map(|(_, any)| any.clone())
            .collect();
        Ok(Response::new(DiscoveryResponse {
            version_info: snapshot.version().to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce: self.shared.nonce(),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        self.sotw("ads", None, request)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        self.delta("ads", None, request)
    }
}

/// Implements one per-type service trait by fixing the type URL.
macro_rules! per_type_service {
    ($trait:ident, $service:literal, $type_url:expr,
     $sotw_stream:ident, $sotw_fn:ident, $delta_stream:ident, $delta_fn:ident, $fetch_fn:ident) => {
        #[tonic::async_trait]
        impl $trait for XdsService {
            type $sotw_stream = SotwStream;
            type $delta_stream = DeltaStream;

            async fn $sotw_fn(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStream>, Status> {
                self.sotw($service, Some($type_url), request)
            }

            async fn $delta_fn(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                self.delta($service, Some($type_url), request)
            }

            async fn $fetch_fn(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch($type_url, request)
            }
        }
    };
}

per_type_service!(
    ListenerDiscoveryService,
    "lds",
    resource::LISTENER,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    "rds",
    resource::ROUTE,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
per_type_service!(
    ClusterDiscoveryService,
    "cds",
    resource::CLUSTER,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
per_type_service!(
    EndpointDiscoveryService,
    "eds",
    resource::ENDPOINT,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);

/// The tonic router with every service mounted.
pub(crate) fn router(shared: Arc<Shared>) -> tonic::transport::server::Router {
    let svc = XdsService::new(shared);
    tonic::transport::Server::builder()
        .add_service(
            AggregatedDiscoveryServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ListenerDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RouteDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ClusterDiscoveryServiceServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            EndpointDiscoveryServiceServer::new(svc).max_decoding_message_size(MAX_MESSAGE),
        )
}
