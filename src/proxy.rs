//! The HTTP filter chain's terminal filter, the router, as a Pingora `ProxyHttp`.
//!
//! One `HttpHandler` exists per filter chain of a listener version; it holds that chain's
//! HTTP connection manager config. Each request loads one snapshot and keeps it in its
//! context, so it sees a single config version from start to end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use sentinel_xds::config::cluster::UpstreamProtocol;
use sentinel_xds::config::hcm::{HttpConnectionManager, RouteSource, ServerHeader};
use sentinel_xds::config::route::{
    Action, AppendAction, ClusterSpecifier, HeaderAdd, HeaderMutations, HostRewrite, Part,
    Redirect, RouteAction, RouteConfig,
};
use sentinel_xds::{Snapshot, SnapshotHandle};

use crate::mirror;
use crate::retry::{self, Failure};
use crate::router::{self, RequestView};
use crate::upstream::{ClusterManager, Host};

pub struct HttpHandler {
    pub hcm: Arc<HttpConnectionManager>,
    pub snapshots: SnapshotHandle,
    pub clusters: Arc<ClusterManager>,
    /// Set when this filter chain's listener version drains.
    pub drain: Arc<DrainState>,
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

/// A reply the proxy makes itself, with Envoy's status and body.
struct LocalReply {
    status: u16,
    body: &'static str,
}

#[derive(Default)]
pub struct Ctx {
    route_config: Option<Arc<RouteConfig>>,
    /// Indexes of the matched virtual host and route.
    matched: Option<(usize, usize)>,
    action: Option<Arc<RouteAction>>,
    weighted: Option<usize>,
    cluster: Option<Arc<crate::upstream::ClusterRuntime>>,
    host: Option<Arc<Host>>,
    reply: Option<LocalReply>,
    upstream_start: Option<Instant>,
    request_id: Option<String>,
    downstream: Option<SocketAddr>,
    local: Option<SocketAddr>,
    protocol: &'static str,
    /// Upstream attempts made so far (retries are attempts after the first).
    attempts: u32,
    /// Bodies of shadow requests still being fed; None once mirrors were started.
    mirrors: Option<Vec<tokio::sync::mpsc::Sender<Bytes>>>,
}

impl Ctx {
    /// Header mutations from the most to the least specific level.
    fn levels(&self) -> Vec<&HeaderMutations> {
        let mut out = Vec::with_capacity(4);
        let (Some(rc), Some((v, r))) = (&self.route_config, self.matched) else {
            return out;
        };
        let vh = &rc.virtual_hosts[v];
        if let (Some(i), Some(Action::Forward(a))) = (self.weighted, Some(&vh.routes[r].action)) {
            if let ClusterSpecifier::Weighted { clusters, .. } = &a.cluster {
                out.push(&clusters[i].headers);
            }
        }
        out.push(&vh.routes[r].headers);
        out.push(&vh.headers);
        out.push(&rc.headers);
        out
    }
}

fn local_error(status: u16) -> Box<Error> {
    Error::new(ErrorType::HTTPStatus(status))
}

impl HttpHandler {
    fn render(
        &self,
        t: &sentinel_xds::config::route::Template,
        ctx: &Ctx,
        req: Option<&RequestHeader>,
    ) -> String {
        let mut out = String::new();
        for p in &t.0 {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::DownstreamRemoteAddress => {
                    out.push_str(&ctx.downstream.map(|a| a.to_string()).unwrap_or_default())
                }
                Part::DownstreamRemoteAddressWithoutPort => out.push_str(
                    &ctx.downstream
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default(),
                ),
                Part::DownstreamLocalAddress => {
                    out.push_str(&ctx.local.map(|a| a.to_string()).unwrap_or_default())
                }
                Part::DownstreamLocalAddressWithoutPort => {
                    out.push_str(&ctx.local.map(|a| a.ip().to_string()).unwrap_or_default())
                }
                Part::Protocol => out.push_str(ctx.protocol),
                Part::UpstreamRemoteAddress => out.push_str(
                    &ctx.host
                        .as_ref()
                        .map(|h| h.addr.to_string())
                        .unwrap_or_default(),
                ),
                Part::Hostname => out.push_str(&crate::admin::hostname()),
                Part::RequestHeader(h) => {
                    if let Some(v) = req
                        .and_then(|r| r.headers.get(h))
                        .and_then(|v| v.to_str().ok())
                    {
                        out.push_str(v)
                    }
                }
            }
        }
        out
    }
}

/// Pingora's request and response headers keep header-name case next to the map, so they
/// are changed only through their own methods.
trait Headers {
    fn has(&self, name: &http::HeaderName) -> bool;
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn remove(&mut self, name: &str);
}

macro_rules! impl_headers {
    ($t:ty) => {
        impl Headers for $t {
            fn has(&self, name: &http::HeaderName) -> bool {
                self.headers.contains_key(name)
            }
            fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.insert_header(name, value);
            }
            fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.append_header(name, value);
            }
            fn remove(&mut self, name: &str) {
                self.remove_header(name);
            }
        }
    };
}
impl_headers!(RequestHeader);
impl_headers!(ResponseHeader);

/// Applies one header addition with Envoy's append semantics.
fn apply_add(headers: &mut impl Headers, add: &HeaderAdd, value: String) {
    if value.is_empty() && !add.keep_empty_value {
        return;
    }
    let Ok(value) = http::HeaderValue::try_from(value) else {
        return;
    };
    let exists = headers.has(&add.name);
    match add.action {
        AppendAction::AppendIfExistsOrAdd => headers.append(add.name.clone(), value),
        AppendAction::AddIfAbsent if !exists => headers.insert(add.name.clone(), value),
        AppendAction::OverwriteIfExistsOrAdd => headers.insert(add.name.clone(), value),
        AppendAction::OverwriteIfExists if exists => headers.insert(add.name.clone(), value),
        _ => {}
    }
}

/// Removes, then adds, the header mutations of every level. By default the least specific
/// level is applied last so that it wins; `most_specific_header_mutations_wins` reverses it.
fn mutate<'a>(
    headers: &mut impl Headers,
    levels: &[&'a HeaderMutations],
    most_specific_wins: bool,
    removes: impl Fn(&'a HeaderMutations) -> &'a [String],
    adds: impl Fn(&'a HeaderMutations) -> &'a [HeaderAdd],
    render: impl Fn(&HeaderAdd) -> String,
) {
    for level in levels {
        for name in removes(level) {
            headers.remove(name);
        }
    }
    let mut ordered: Vec<&HeaderMutations> = levels.to_vec();
    if most_specific_wins {
        ordered.reverse();
    }
    for level in ordered {
        for add in adds(level) {
            apply_add(headers, add, render(add));
        }
    }
}

fn host_of(req: &RequestHeader) -> String {
    req.uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// `normalize_path` (RFC 3986 dot segments) and `merge_slashes`; None when the path is
/// invalid (Envoy answers 400).
fn normalize(path: &str, dots: bool, merge: bool) -> Option<String> {
    let mut p = path.to_string();
    if merge {
        while p.contains("//") {
            p = p.replace("//", "/");
        }
    }
    if dots {
        if !p.starts_with('/') {
            return None;
        }
        let mut out: Vec<&str> = Vec::new();
        let trailing = p.ends_with("/.") || p.ends_with("/..") || p.ends_with('/');
        for seg in p.split('/').skip(1) {
            match seg {
                "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
        let mut joined = format!("/{}", out.join("/"));
        if trailing && !joined.ends_with('/') {
            joined.push('/');
        }
        p = joined;
    }
    Some(p)
}

impl HttpHandler {
    /// Whether the route's retry policy retries this failure of the current attempt.
    fn retry(&self, ctx: &Ctx, failure: Failure) -> bool {
        ctx.action
            .as_ref()
            .and_then(|a| a.retry.as_ref())
            .is_some_and(|p| retry::should_retry(p, ctx.attempts, failure))
    }

    async fn send_local(
        &self,
        session: &mut Session,
        status: u16,
        body: Bytes,
        extra: &[(&str, String)],
        ctx: &Ctx,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(4))?;
        if !body.is_empty() {
            resp.insert_header("content-type", "text/plain")?;
        }
        resp.insert_header("content-length", body.len().to_string())?;
        for (k, v) in extra {
            resp.insert_header(k.to_string(), v.as_str())?;
        }
        self.finish_response_headers(&mut resp, ctx, session.req_header());
        resp.insert_header(
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )?;
        let end = body.is_empty() || session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), end).await?;
        if !end {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// Response header mutations of every level, then the `server` header.
    fn finish_response_headers(&self, resp: &mut ResponseHeader, ctx: &Ctx, req: &RequestHeader) {
        let most_specific = ctx
            .route_config
            .as_ref()
            .is_some_and(|rc| rc.most_specific_header_mutations_wins);
        mutate(
            resp,
            &ctx.levels(),
            most_specific,
            |l| &l.response_remove,
            |l| &l.response_add,
            |add| self.render(&add.value, ctx, Some(req)),
        );
        match self.hcm.server_header {
            ServerHeader::Overwrite => {
                let _ = resp.insert_header("server", self.hcm.server_name.as_str());
            }
            ServerHeader::AppendIfAbsent if !resp.headers.contains_key("server") => {
                let _ = resp.insert_header("server", self.hcm.server_name.as_str());
            }
            _ => {}
        }
        if self.hcm.always_set_request_id_in_response {
            if let Some(id) = &ctx.request_id {
                let _ = resp.insert_header("x-request-id", id.as_str());
            }
        }
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

    fn redirect_location(
        &self,
        r: &Redirect,
        req: &RequestHeader,
        matched_prefix: Option<&str>,
    ) -> String {
        let host_header = host_of(req);
        let (host, port) = match host_header.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                (h.to_string(), Some(p.to_string()))
            }
            _ => (host_header.clone(), None),
        };
        let scheme = r.scheme.clone().unwrap_or_else(|| "http".into());
        let host = r.host.clone().unwrap_or(host);
        let port = match (r.port, &r.scheme) {
            (Some(p), _) => Some(p.to_string()),
            (None, Some(_)) => None,
            (None, None) if r.host.is_some() => None,
            (None, None) => port,
        };
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
        let mut new_path = if let Some(p) = &r.path {
            p.clone()
        } else {
            path.to_string()
        };
        let query = if r.strip_query || r.path.as_ref().is_some_and(|p| p.contains('?')) {
            None
        } else {
            query
        };
        if let (Some(prefix), Some(matched)) = (&r.prefix_rewrite, matched_prefix) {
            new_path = format!("{prefix}{}", &new_path[matched.len().min(new_path.len())..]);
        }
        if let Some((re, sub)) = &r.regex_rewrite {
            new_path = re.replace_all(&new_path, sub.as_str()).into_owned();
        }
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        match query {
            Some(q) => format!("{scheme}://{host}{port}{new_path}?{q}"),
            None => format!("{scheme}://{host}{port}{new_path}"),
        }
    }
}

#[async_trait]
impl ProxyHttp for HttpHandler {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.snapshots.load();
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
                + req.uri.to_string().len();
            if size > self.hcm.max_request_headers_kb as usize * 1024
                || req.headers.len() > self.hcm.max_headers_count as usize
            {
                self.send_local(session, 431, Bytes::new(), &[], ctx)
                    .await?;
                return Ok(true);
            }
        }
        // Downstream timeouts: idle keep-alive and stream idle (reads of the request body).
        if !self.drain.draining.load(Ordering::Relaxed) {
            session.set_keepalive(self.hcm.idle_timeout.map(|d| d.as_secs().max(1)));
        }
        session.set_read_timeout(self.hcm.stream_idle_timeout);
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
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let id = match existing {
                    Some(id)
                        if self.hcm.preserve_external_request_id
                            || !self.hcm.use_remote_address =>
                    {
                        id
                    }
                    _ => {
                        let id = uuid4();
                        let _ = req.insert_header("x-request-id", id.as_str());
                        id
                    }
                };
                ctx.request_id = Some(id);
            }
            if self.hcm.use_remote_address && !self.hcm.skip_xff_append {
                if let Some(a) = downstream {
                    let value = match req
                        .headers
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                    {
                        Some(prev) => format!("{prev},{}", a.ip()),
                        None => a.ip().to_string(),
                    };
                    let _ = req.insert_header("x-forwarded-for", value);
                }
            }
            if self.hcm.use_remote_address || !req.headers.contains_key("x-forwarded-proto") {
                let _ = req.insert_header("x-forwarded-proto", "http");
            }
            if let Some(via) = &self.hcm.via {
                let _ = req.append_header("via", via.as_str());
            }
        }
        let Some(rc) = self.route_config(&snap) else {
            self.send_local(session, 404, Bytes::new(), &[], ctx)
                .await?;
            return Ok(true);
        };
        let req = session.req_header();
        let host = host_of(req);
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
        let matched = router::virtual_host(&rc, &host).and_then(|vh| {
            let view = RequestView {
                path,
                query,
                headers: &req.headers,
                random: rand::random_range(0..1_000_000),
            };
            let r = router::route(vh, &view)?;
            let v = rc.virtual_hosts.iter().position(|x| std::ptr::eq(x, vh))?;
            let i = vh.routes.iter().position(|x| std::ptr::eq(x, r))?;
            Some((v, i))
        });
        ctx.route_config = Some(rc.clone());
        let Some((v, i)) = matched else {
            self.send_local(session, 404, Bytes::new(), &[], ctx)
                .await?;
            return Ok(true);
        };
        ctx.matched = Some((v, i));
        match &rc.virtual_hosts[v].routes[i].action {
            Action::Direct { status, body } => {
                let body = body.clone().unwrap_or_default();
                self.send_local(session, *status, body, &[], ctx).await?;
                Ok(true)
            }
            Action::Redirect(r) => {
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
                let name = match &a.cluster {
                    ClusterSpecifier::Cluster(c) => Some(c.clone()),
                    ClusterSpecifier::Header(h) => session
                        .req_header()
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
                };
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
            ctx.reply = Some(LocalReply {
                status: 503,
                body: "no healthy upstream",
            });
            return Err(local_error(503));
        };
        host.active.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = ctx.host.replace(host.clone()) {
            old.active.fetch_sub(1, Ordering::Relaxed);
        }
        let mut peer = HttpPeer::new(host.addr, false, String::new());
        let config = &cluster.config;
        peer.options.connection_timeout = Some(config.connect_timeout);
        peer.options.idle_timeout = config.idle_timeout;
        if config.protocol == UpstreamProtocol::Http2 {
            peer.options.alpn = ALPN::H2;
        }
        if let Some(a) = &ctx.action {
            let t = match (a.retry.as_ref().and_then(|r| r.per_try_timeout), a.timeout) {
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
        let Some(a) = ctx.action.clone() else {
            return Ok(());
        };
        // Path rewrites.
        let pq = upstream
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let (path, query) = pq
            .split_once('?')
            .map_or((pq.as_str(), None), |(p, q)| (p, Some(q)));
        let mut new_path = None;
        if let Some(prefix) = &a.prefix_rewrite {
            if let (Some(rc), Some((v, i))) = (&ctx.route_config, ctx.matched) {
                use sentinel_xds::config::route::PathMatch;
                let matched_len = match &rc.virtual_hosts[v].routes[i].matcher.path {
                    PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => p.len(),
                    PathMatch::Exact(p) => p.len(),
                    PathMatch::Regex(_) => path.len(),
                };
                new_path = Some(format!("{prefix}{}", &path[matched_len.min(path.len())..]));
            }
        } else if let Some((re, sub)) = &a.regex_rewrite {
            new_path = Some(re.replace_all(path, sub.as_str()).into_owned());
        }
        if let Some(p) = new_path {
            let uri = match query {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            if let Ok(uri) = uri.parse() {
                upstream.set_uri(uri);
            }
        }
        // Host rewrites.
        let new_host = match &a.host_rewrite {
            Some(HostRewrite::Literal(h)) => Some(h.clone()),
            Some(HostRewrite::Auto) => ctx.host.as_ref().map(|h| h.addr.to_string()),
            Some(HostRewrite::Header(name)) => session
                .req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            None => None,
        };
        if let Some(h) = new_host {
            let _ = upstream.insert_header("host", h.as_str());
            if upstream.uri.authority().is_some() {
                if let Ok(uri) = http::Uri::builder()
                    .scheme(upstream.uri.scheme_str().unwrap_or("http"))
                    .authority(h.as_str())
                    .path_and_query(
                        upstream
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/"),
                    )
                    .build()
                {
                    upstream.set_uri(uri);
                }
            }
        }
        let most_specific = ctx
            .route_config
            .as_ref()
            .is_some_and(|rc| rc.most_specific_header_mutations_wins);
        mutate(
            upstream,
            &ctx.levels(),
            most_specific,
            |l| &l.request_remove,
            |l| &l.request_add,
            |add| self.render(&add.value, ctx, Some(session.req_header())),
        );
        if let Some(t) = a.timeout {
            let _ =
                upstream.insert_header("x-envoy-expected-rq-timeout-ms", t.as_millis().to_string());
        }
        if ctx.mirrors.is_none() {
            let senders = a
                .mirrors
                .iter()
                .filter(|m| rand::random_range(0..1_000_000) < m.fraction_per_million)
                .filter_map(|m| self.clusters.get(&m.cluster))
                .filter_map(|c| mirror::start(c, upstream))
                .collect();
            ctx.mirrors = Some(senders);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
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
        let can =
            session.response_written().is_none() && !session.as_ref().retry_buffer_truncated();
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
        if let Some(start) = ctx.upstream_start {
            let _ = resp.insert_header(
                "x-envoy-upstream-service-time",
                start.elapsed().as_millis().to_string(),
            );
        }
        self.finish_response_headers(resp, ctx, session.req_header());
        Ok(())
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(h) = ctx.host.take() {
            h.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, body) = match (ctx.reply.take(), e.etype(), e.esource()) {
            (Some(r), _, _) => (r.status, r.body),
            (None, ErrorType::HTTPStatus(s), _) => (*s, ""),
            (None, ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream) => (504, "upstream request timeout"),
            (None, ErrorType::ConnectTimedout, _) => {
                (503, "upstream connect error or disconnect/reset before headers. reset reason: connection timeout")
            }
            (None, ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute, _) => {
                (503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")
            }
            (None, ErrorType::InvalidHTTPHeader | ErrorType::H1Error, ErrorSource::Upstream) => {
                (502, "upstream connect error or disconnect/reset before headers. reset reason: protocol error")
            }
            (None, _, ErrorSource::Upstream) => {
                (503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
            }
            (None, ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed, ErrorSource::Downstream) => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                }
            }
            (None, _, ErrorSource::Downstream) => (400, ""),
            (None, _, _) => (500, ""),
        };
        if session.response_written().is_none() {
            if let Err(err) = self
                .send_local(
                    session,
                    status,
                    Bytes::from_static(body.as_bytes()),
                    &[],
                    ctx,
                )
                .await
            {
                tracing::debug!("cannot send local reply: {err}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// A random version-4 UUID, as Envoy generates for x-request-id.
fn uuid4() -> String {
    let b: [u8; 16] = rand::random();
    let (hi, lo) = (
        u64::from_be_bytes(b[..8].try_into().unwrap()),
        u64::from_be_bytes(b[8..].try_into().unwrap()),
    );
    let hi = (hi & !0xf000) | 0x4000;
    let lo = (lo & !(0xc000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_envoy() {
        assert_eq!(
            normalize("/a/./b/../c", true, false).as_deref(),
            Some("/a/c")
        );
        assert_eq!(normalize("/a//b", false, true).as_deref(), Some("/a/b"));
        assert_eq!(normalize("/..", true, false).as_deref(), Some("/"));
    }

    #[test]
    fn uuid_has_version_4() {
        let id = uuid4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
