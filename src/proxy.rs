//! The HTTP filter chain's terminal filter, the router, as a Pingora `ProxyHttp`.
//!
//! One `HttpHandler` exists per filter chain of a listener version; it holds that chain's
//! HTTP connection manager config. Each request loads one snapshot and keeps it in its
//! context, so it sees a single config version from start to end.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use sentinel_xds::config::cluster::UpstreamProtocol;
use sentinel_xds::config::hcm::{HttpConnectionManager, RouteSource};
use sentinel_xds::config::route::{Action, ClusterSpecifier, RouteAction, RouteConfig};
use sentinel_xds::{Snapshot, SnapshotHandle};

use crate::ctx::Ctx;
use crate::local_reply::{local_error, reply_for, LocalReply};
use crate::request::{host, normalize, uuid4};
use crate::retry::{self, Failure};
use crate::router::{self, RequestView};
use crate::upstream::ClusterManager;

#[derive(Clone)]
pub struct HttpHandler {
    pub hcm: Arc<HttpConnectionManager>,
    pub snapshots: SnapshotHandle,
    pub clusters: Arc<ClusterManager>,
    /// Set when this filter chain's listener version drains.
    pub drain: Arc<DrainState>,
    /// `http.<stat_prefix>.*`
    pub stats: Arc<crate::stats::HttpStats>,
    /// This proxy's own cluster (`--service-cluster`), for `source_cluster` descriptors.
    pub local_cluster: Arc<str>,
    /// The listener's `per_connection_buffer_limit_bytes`: the most a filter buffers.
    pub buffer_limit: u32,
    /// The filter chain's `name`, for ext_proc's `xds.filter_chain_name`.
    pub filter_chain: Arc<str>,
    /// Each ext_proc filter's stats, by filter name.
    pub ext_proc_stats: Arc<std::collections::HashMap<String, Arc<crate::stats::ExtProcStats>>>,
}

/// What a draining listener version keeps: Envoy keeps the route configuration a draining
/// listener had, even when RDS no longer has it, until its connections are gone.
#[derive(Default)]
pub struct DrainState {
    draining: std::sync::atomic::AtomicBool,
    pinned_routes: std::sync::OnceLock<Arc<RouteConfig>>,
}

impl DrainState {
    /// Starts draining, keeping the routes `hcm` had in `snap` from now on.
    pub fn start(&self, hcm: &HttpConnectionManager, snap: &Snapshot) {
        if let RouteSource::Rds { name, .. } = &hcm.routes {
            if let Some(rc) = snap.routes.get(name) {
                let _ = self.pinned_routes.set(rc.clone());
            }
        }
        self.draining.store(true, Ordering::Relaxed);
    }
}

impl HttpHandler {
    /// Whether the route's retry policy retries this failure of the current attempt.
    fn retry(&self, ctx: &Ctx, failure: Failure) -> bool {
        let retry = ctx
            .action
            .as_ref()
            .and_then(|a| a.retry.as_ref())
            .is_some_and(|p| retry::should_retry(p, ctx.attempts, failure));
        if let (true, Some(c)) = (retry, &ctx.cluster) {
            c.stats.upstream_rq_retry.inc();
        }
        retry
    }

    fn route_config(&self, snap: &Snapshot) -> Option<Arc<RouteConfig>> {
        match &self.hcm.routes {
            RouteSource::Inline(rc) => Some(rc.clone()),
            RouteSource::Rds { name, .. } => match self.drain.pinned_routes.get() {
                Some(rc) => Some(rc.clone()),
                None => snap.routes.get(name).cloned(),
            },
        }
    }
}

impl HttpHandler {
    /// Matches the request against the route configuration, and picks the cluster of a
    /// forwarding route.
    fn select_route(&self, rc: &RouteConfig, req: &RequestHeader, ctx: &mut Ctx) {
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
        ctx.matched = router::virtual_host(rc, host(req)).and_then(|v| {
            let view = RequestView {
                method: &req.method,
                path,
                query,
                headers: &req.headers,
                random: rand::random_range(0..1_000_000),
            };
            Some((v, router::route(&rc.virtual_hosts[v], &view)?))
        });
        ctx.cluster_name = None;
        ctx.weighted = None;
        if let Some((v, i)) = ctx.matched {
            if let Action::Forward(a) = &rc.virtual_hosts[v].routes[i].action {
                ctx.cluster_name = pick_cluster(a, req, ctx);
            }
        }
    }
}

/// The length of the URI as written (`Display`), without formatting it.
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1)
}

/// The cluster a forwarding route sends this request to (a weighted pick is remembered in
/// `ctx.weighted`, for that cluster's header mutations).
fn pick_cluster(a: &RouteAction, req: &RequestHeader, ctx: &mut Ctx) -> Option<String> {
    match &a.cluster {
        ClusterSpecifier::Cluster(c) => Some(c.clone()),
        ClusterSpecifier::Header(h) => req
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        ClusterSpecifier::Weighted { clusters, total } => {
            let mut pick = rand::random_range(0..*total);
            let idx = clusters
                .iter()
                .position(|c| {
                    if pick < c.weight as u64 {
                        true
                    } else {
                        pick -= c.weight as u64;
                        false
                    }
                })
                .unwrap_or(0);
            ctx.weighted = Some(idx);
            Some(clusters[idx].name.clone())
        }
    }
}

/// Lets the rest of the worker's event-loop turn run before a request goes upstream or a
/// response goes downstream: the writes of one turn then go out together, so a peer asleep
/// on another core is woken once for several of them rather than once each. On the bench rig
/// the two yields cut CPU per proxied request by ~15% and lowered p99 under load; one request
/// at a time is as fast as without (docs/benchmarks.md, section 8).
async fn end_of_turn() {
    tokio::task::yield_now().await;
}

#[async_trait]
impl ProxyHttp for HttpHandler {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// No modules: Pingora's default adds its (disabled) response compression module, which
    /// would still be built and called for every request.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.snapshots.load();
        self.stats.downstream_rq_total.inc();
        match session.req_header().version {
            http::Version::HTTP_2 => self.stats.downstream_rq_http2_total.inc(),
            _ => self.stats.downstream_rq_http1_total.inc(),
        }
        // Envoy answers `Expect: 100-continue` itself and does not forward it.
        if crate::request::expects_continue(session.req_header()) {
            session.write_continue_response().await?;
            session
                .req_header_mut()
                .remove_header(&http::header::EXPECT);
        }
        self.stats.downstream_rq_active.inc();
        ctx.counted = true;
        ctx.downstream = session.client_addr().and_then(|a| a.as_inet()).copied();
        ctx.local = session.server_addr().and_then(|a| a.as_inet()).copied();
        ctx.protocol = match session.req_header().version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        // Path normalization happens before routing, as in Envoy.
        if self.hcm.normalize_path || self.hcm.merge_slashes {
            let req = session.req_header();
            let pq = req
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let (path, query) = pq
                .split_once('?')
                .map_or((pq.as_str(), None), |(p, q)| (p, Some(q)));
            match normalize(path, self.hcm.normalize_path, self.hcm.merge_slashes) {
                Some(p) if p != path => {
                    let uri = match query {
                        Some(q) => format!("{p}?{q}"),
                        None => p,
                    };
                    if let Ok(uri) = uri.parse() {
                        session.req_header_mut().set_uri(uri);
                    }
                }
                Some(_) => {}
                None => {
                    self.send_local(session, 400, Bytes::new(), &[], ctx)
                        .await?;
                    return Ok(true);
                }
            }
        }
        // Header limits: Envoy answers 431 past max_request_headers_kb or max_headers_count.
        {
            let req = session.req_header();
            let size: usize = req
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>()
                + uri_len(&req.uri);
            if size > self.hcm.max_request_headers_kb as usize * 1024
                || req.headers.len() > self.hcm.max_headers_count as usize
            {
                self.send_local(session, 431, Bytes::new(), &[], ctx)
                    .await?;
                return Ok(true);
            }
        }
        // Downstream timeouts: idle keep-alive and stream idle (reads of the request body).
        // What follows a CONNECT's head is not HTTP: Envoy closes after answering it.
        if !self.drain.draining.load(Ordering::Relaxed)
            && session.req_header().method != http::Method::CONNECT
        {
            session.set_keepalive(self.hcm.idle_timeout.map(|d| d.as_secs().max(1)));
        } else {
            session.set_keepalive(None);
        }
        ctx.started = Some(Instant::now());
        session.set_read_timeout(
            match (self.hcm.stream_idle_timeout, self.hcm.request_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        );
        if self.hcm.drop_underscore_headers {
            let names: Vec<http::HeaderName> = session
                .req_header()
                .headers
                .keys()
                .filter(|k| k.as_str().contains('_'))
                .cloned()
                .collect();
            for n in names {
                session.req_header_mut().remove_header(&n);
            }
        }
        if self.hcm.reject_underscore_headers
            && session
                .req_header()
                .headers
                .keys()
                .any(|k| k.as_str().contains('_'))
        {
            self.send_local(session, 400, Bytes::new(), &[], ctx)
                .await?;
            return Ok(true);
        }
        // Request id and forwarding headers.
        {
            let downstream = ctx.downstream;
            let req = session.req_header_mut();
            if self.hcm.generate_request_id {
                let existing = req
                    .headers
                    .get("x-request-id")
                    .filter(|v| v.to_str().is_ok())
                    .cloned();
                let id = match existing {
                    Some(id)
                        if self.hcm.preserve_external_request_id
                            || !self.hcm.use_remote_address =>
                    {
                        id
                    }
                    _ => {
                        let id = uuid4();
                        let _ = req.insert_header("x-request-id", id.clone());
                        id
                    }
                };
                ctx.request_id = Some(id);
            }
            crate::request::forwarding_headers(&self.hcm, req, downstream);
        }
        let Some(rc) = self.route_config(&snap) else {
            self.stats.no_route.inc();
            self.send_local(session, 404, Bytes::new(), &[], ctx)
                .await?;
            return Ok(true);
        };
        for name in &rc.internal_only_headers {
            session.req_header_mut().remove_header(name);
        }
        ctx.route_config = Some(rc.clone());
        self.select_route(&rc, session.req_header(), ctx);
        if let Some(kind) = crate::request::upgrade_type(session.req_header_mut()) {
            let route = match ctx
                .matched
                .map(|(v, i)| &rc.virtual_hosts[v].routes[i].action)
            {
                Some(Action::Forward(a)) => a.upgrades.as_slice(),
                _ => &[],
            };
            if !crate::request::upgrade_allowed(&kind, route, &self.hcm.upgrades) {
                session.set_keepalive(None);
                self.send_local(session, 403, Bytes::new(), &[], ctx)
                    .await?;
                return Ok(true);
            }
            ctx.custom_upgrade = kind != "websocket";
        }
        // The filters before the router (they see the route, and may answer themselves).
        ctx.request_end_of_stream = session.as_mut().is_body_empty();
        let reply = self.decode_headers(ctx, session.req_header_mut()).await;
        if let Some(r) = reply {
            ctx.grpc_status = r.grpc_status;
            let extra: Vec<(&str, String)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            self.send_local(session, r.status, Bytes::from(r.body), &extra, ctx)
                .await?;
            return Ok(true);
        }
        if ctx.clear_route_cache {
            // A filter changed the request and asked to route it again.
            self.select_route(&rc, session.req_header(), ctx);
        }
        let Some((v, i)) = ctx.matched else {
            self.stats.no_route.inc();
            self.send_local(session, 404, Bytes::new(), &[], ctx)
                .await?;
            return Ok(true);
        };
        match &rc.virtual_hosts[v].routes[i].action {
            Action::Direct { status, body } => {
                self.stats.rq_direct_response.inc();
                let body = body.clone().unwrap_or_default();
                self.send_local(session, *status, body, &[], ctx).await?;
                Ok(true)
            }
            Action::Redirect(r) => {
                self.stats.rq_redirect.inc();
                use sentinel_xds::config::route::PathMatch;
                let matched_prefix = match &rc.virtual_hosts[v].routes[i].matcher.path {
                    PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) | PathMatch::Exact(p) => {
                        Some(p.as_str())
                    }
                    PathMatch::Regex(_) => None,
                };
                let location = self.redirect_location(r, session.req_header(), matched_prefix);
                self.send_local(
                    session,
                    r.status,
                    Bytes::new(),
                    &[("location", location)],
                    ctx,
                )
                .await?;
                Ok(true)
            }
            Action::Forward(a) => {
                let name = ctx.cluster_name.take();
                ctx.route_timeout = crate::request::route_timeout(a, session.req_header());
                ctx.action = Some(a.clone());
                if a.retry.is_some() {
                    session.enable_retry_buffering();
                }
                match name.and_then(|n| self.clusters.get(&n)) {
                    Some(c) => {
                        ctx.cluster = Some(c);
                        Ok(false)
                    }
                    None => {
                        self.stats.no_cluster.inc();
                        self.send_local(
                            session,
                            a.cluster_not_found_status,
                            Bytes::new(),
                            &[],
                            ctx,
                        )
                        .await?;
                        Ok(true)
                    }
                }
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let cluster = ctx.cluster.clone().ok_or_else(|| local_error(503))?;
        if ctx.attempts > 0 {
            if let Some(policy) = ctx.action.as_ref().and_then(|a| a.retry.as_ref()) {
                tokio::time::sleep(retry::backoff(policy, ctx.attempts)).await;
            }
        }
        ctx.attempts += 1;
        let Some(host) = cluster.pick() else {
            cluster.stats.upstream_cx_none_healthy.inc();
            ctx.reply = Some(LocalReply {
                status: 503,
                body: "no healthy upstream",
            });
            return Err(local_error(503));
        };
        host.active.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = ctx.host.replace(host.clone()) {
            old.active.fetch_sub(1, Ordering::Relaxed);
        } else {
            cluster.stats.upstream_rq_active.inc();
        }
        cluster.stats.upstream_rq_total.inc();
        let mut peer = HttpPeer::new(host.addr, false, String::new());
        let config = &cluster.config;
        peer.options.connection_timeout = Some(config.connect_timeout);
        if ctx.custom_upgrade {
            peer.options.http_upstream_request_policy.h1_upgrade =
                pingora_core::upstreams::peer::H1UpgradePolicy::Preserve;
        }
        peer.options.idle_timeout = config.idle_timeout;
        if config.protocol == UpstreamProtocol::Http2 {
            peer.options.alpn = ALPN::H2;
        }
        if let Some(a) = &ctx.action {
            // The route timeout spans every attempt; each attempt gets what remains of it.
            let now = Instant::now();
            if ctx.deadline.is_none() {
                ctx.deadline = ctx.route_timeout.map(|t| now + t);
            }
            let remaining = ctx.deadline.map(|d| d.saturating_duration_since(now));
            if remaining.is_some_and(|r| r.is_zero()) {
                cluster.stats.upstream_rq_timeout.inc();
                ctx.reply = Some(LocalReply {
                    status: 504,
                    body: "upstream request timeout",
                });
                return Err(local_error(504));
            }
            let t = match (a.retry.as_ref().and_then(|r| r.per_try_timeout), remaining) {
                (Some(p), Some(t)) => Some(p.min(t)),
                (p, t) => p.or(t),
            };
            // The route's idle timeout bounds every read too.
            let t = match (t, a.idle_timeout) {
                (Some(t), Some(i)) => Some(t.min(i)),
                (t, i) => t.or(i),
            };
            peer.options.read_timeout = t;
            peer.options.write_timeout = t;
        }
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        end_of_turn().await;
        self.prepare_upstream_request(session.req_header(), upstream, ctx)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(limit), Some(started)) = (self.hcm.request_timeout, ctx.started) {
            if !end && started.elapsed() > limit {
                ctx.reply = Some(LocalReply {
                    status: 408,
                    body: "request timeout",
                });
                return Err(
                    Error::explain(ErrorType::ReadTimedout, "request_timeout expired").into_down(),
                );
            }
        }
        if !ctx.ext_proc.is_empty() {
            self.ext_proc_request_body(session, body, end, ctx).await?;
        }
        if let Some(senders) = &mut ctx.mirrors {
            if let Some(chunk) = body {
                // A shadow that cannot keep up is abandoned rather than slowing the original.
                senders.retain(|tx| tx.try_send(chunk.clone()).is_ok());
            }
            if end {
                senders.clear();
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(c) = &ctx.cluster {
            c.stats.upstream_cx_connect_fail.inc();
        }
        e.set_retry(self.retry(ctx, Failure::Connect));
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            // A retriable upstream status: upstream_response_filter already decided.
            return e;
        }
        let failure = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
            _ => Failure::Reset,
        };
        if let (Failure::Timeout, Some(c)) = (failure, &ctx.cluster) {
            let per_try = ctx.deadline.is_none_or(|d| Instant::now() < d);
            if per_try {
                c.stats.upstream_rq_per_try_timeout.inc();
            } else {
                c.stats.upstream_rq_timeout.inc();
            }
        }
        let can = session.response_written().is_none()
            && !ctx.response_hold.started()
            && !session.as_ref().retry_buffer_truncated();
        e.set_retry(can && *e.esource() == ErrorSource::Upstream && self.retry(ctx, failure));
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if let Some(c) = &ctx.cluster {
            c.stats.upstream_rq_xx.count(status);
            c.stats.upstream_rq_completed.inc();
        }
        if status >= 400
            && !session.as_ref().retry_buffer_truncated()
            && self.retry(ctx, Failure::Status(status))
        {
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "retriable upstream status");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        end_of_turn().await;
        if let (Some(start), false) = (ctx.upstream_start, self.hcm.suppress_envoy_headers) {
            let ms = start.elapsed().as_millis() as u64;
            let _ = resp.insert_header("x-envoy-upstream-service-time", ms);
        }
        if ctx.vhost().is_some_and(|v| v.attempt_count_in_response) && ctx.attempts > 0 {
            let _ = resp.insert_header("x-envoy-attempt-count", ctx.attempts.to_string());
        }
        if !ctx.ext_proc.is_empty() {
            crate::ext_proc_response_body::framing_mode(ctx);
            self.ext_proc_response(session.req_header(), resp, ctx)
                .await;
        }
        self.finish_response_headers(resp, ctx, session.req_header());
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        // A processor's immediate response replaces the upstream's body: the first chunk
        // carries it, the rest is dropped.
        if let Some(replacement) = &mut ctx.replace_body {
            *body = (!replacement.is_empty()).then(|| std::mem::take(replacement));
        }
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        if ctx.replace_body.is_some() {
            // A local answer replaced the upstream's: it has no trailers.
            trailers.clear();
        }
        Ok(None)
    }

    /// Where ext_proc response bodies and trailers are processed: the headers may wait for a
    /// body answer, and the trailers go after the body.
    async fn response_tasks_filter(
        &self,
        session: &mut Session,
        tasks: Vec<HttpTask>,
        ctx: &mut Ctx,
    ) -> Result<Vec<HttpTask>> {
        let tasks = self.ext_proc_response_tasks(session, tasks, ctx).await?;
        self.ext_proc_trailer_tasks(session, tasks, ctx).await
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        // A response still streaming when the route timeout expires is cut, as in Envoy.
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Error::explain(ErrorType::ReadTimedout, "route timeout expired").into_up());
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(h) = ctx.host.take() {
            h.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(c) = &ctx.cluster {
                c.stats.upstream_rq_active.dec();
            }
        }
        if ctx.counted {
            self.stats.downstream_rq_active.dec();
            self.stats.downstream_rq_completed.inc();
            if let Some(resp) = session.response_written() {
                self.stats.downstream_rq_xx.count(resp.status.as_u16());
            }
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, body) = match ctx.reply.take() {
            Some(r) => (r.status, r.body.to_string()),
            None => match reply_for(e) {
                Some(reply) => reply,
                None => {
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    }
                }
            },
        };
        // A complete local reply leaves the downstream connection usable, as in Envoy.
        let mut reusable = false;
        if session.response_written().is_none() {
            match self
                .send_local(session, status, Bytes::from(body), &[], ctx)
                .await
            {
                Ok(()) => reusable = *e.esource() != ErrorSource::Downstream,
                Err(err) => tracing::debug!("cannot send local reply: {err}"),
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: reusable,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uri_len_is_the_displayed_length() {
        for uri in [
            "/",
            "/a/b?x=1&y",
            "http://h:8080/p?q",
            "*",
            "h.example:443",
            "http://h",
        ] {
            let uri: http::Uri = uri.parse().unwrap();
            assert_eq!(super::uri_len(&uri), uri.to_string().len(), "{uri}");
        }
    }
}
