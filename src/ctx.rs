//! The per-request context: what one request learned on its way through the filters and the
//! router (its snapshot of the route table, the route and cluster picked, attempts, processor
//! conversations), read by every hook that follows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora_http::RequestHeader;
use sentinel_xds::config::route::{
    Action, ClusterSpecifier, HeaderMutations, RouteAction, RouteConfig,
};

use crate::headers;
use crate::local_reply::LocalReply;
use crate::upstream::Host;

#[derive(Default)]
pub struct Ctx {
    /// An upgrade other than WebSocket that the route allows: Pingora must forward its
    /// `Upgrade`/`Connection` as they are (it normalizes only WebSocket's).
    pub(crate) custom_upgrade: bool,
    pub(crate) route_config: Option<Arc<RouteConfig>>,
    /// Indexes of the matched virtual host and route.
    pub(crate) matched: Option<(usize, usize)>,
    pub(crate) action: Option<Arc<RouteAction>>,
    pub(crate) weighted: Option<usize>,
    pub(crate) cluster: Option<Arc<crate::upstream::ClusterRuntime>>,
    pub(crate) host: Option<Arc<Host>>,
    pub(crate) reply: Option<LocalReply>,
    pub(crate) upstream_start: Option<Instant>,
    pub(crate) request_id: Option<http::HeaderValue>,
    pub(crate) downstream: Option<SocketAddr>,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) protocol: &'static str,
    /// Upstream attempts made so far (retries are attempts after the first).
    pub(crate) attempts: u32,
    /// The route's timeout for this request (`request::route_timeout`).
    pub(crate) route_timeout: Option<std::time::Duration>,
    /// When the route timeout (across all attempts) expires.
    pub(crate) deadline: Option<Instant>,
    /// When the request started, for the connection manager's `request_timeout`.
    pub(crate) started: Option<Instant>,
    /// The request was counted in `downstream_rq_total` (and is active).
    pub(crate) counted: bool,
    /// The grpc-status of a filter's own gRPC answer, when it is not the mapped one.
    pub(crate) grpc_status: Option<u32>,
    /// External processor conversations that wait for the response headers.
    pub(crate) ext_proc: Vec<crate::ext_proc::Conversation>,
    /// The request has no body: its headers end the stream.
    pub(crate) request_end_of_stream: bool,
    /// The request body as the ext_proc processors made it, kept for retries.
    pub(crate) ext_proc_replay: crate::ext_proc_body::Replay,
    /// The response as the ext_proc processors keep it back while they read its body.
    pub(crate) response_hold: crate::ext_proc_response_body::Hold,
    /// A processor asked to route again (`clear_route_cache`).
    pub(crate) clear_route_cache: bool,
    /// A body that replaces the upstream's (a processor's immediate response).
    pub(crate) replace_body: Option<Bytes>,
    /// The cluster the matched route forwards to, picked before the filters run.
    pub(crate) cluster_name: Option<String>,
    /// Response headers that filters asked for (x-ratelimit-*).
    pub(crate) filter_response_headers: Vec<(http::HeaderName, String)>,
    /// Bodies of shadow requests still being fed; None once mirrors were started.
    pub(crate) mirrors: Option<Vec<tokio::sync::mpsc::Sender<Bytes>>>,
}

impl Ctx {
    /// What `%VAR%`s in header values see.
    pub(crate) fn vars<'a>(&self, request: Option<&'a RequestHeader>) -> headers::Vars<'a> {
        headers::Vars {
            downstream: self.downstream,
            local: self.local,
            protocol: self.protocol,
            upstream: self.host.as_ref().map(|h| h.addr),
            request,
        }
    }

    /// The matched virtual host.
    pub(crate) fn vhost(&self) -> Option<&sentinel_xds::config::route::VirtualHost> {
        let (rc, (v, _)) = (self.route_config.as_ref()?, self.matched?);
        rc.virtual_hosts.get(v)
    }

    /// Header mutations from the most to the least specific level (levels that do not apply
    /// are empty); an array, not a Vec, because this runs twice per request.
    pub(crate) fn levels(&self) -> [&HeaderMutations; 4] {
        static NONE: HeaderMutations = HeaderMutations {
            request_add: Vec::new(),
            request_remove: Vec::new(),
            response_add: Vec::new(),
            response_remove: Vec::new(),
        };
        let mut out = [&NONE; 4];
        let (Some(rc), Some((v, r))) = (&self.route_config, self.matched) else {
            return out;
        };
        let vh = &rc.virtual_hosts[v];
        if let (Some(i), Action::Forward(a)) = (self.weighted, &vh.routes[r].action) {
            if let ClusterSpecifier::Weighted { clusters, .. } = &a.cluster {
                out[0] = &clusters[i].headers;
            }
        }
        out[1] = &vh.routes[r].headers;
        out[2] = &vh.headers;
        out[3] = &rc.headers;
        out
    }
}
