//! The request as it leaves for the upstream: the route's rewrites, Envoy's own headers,
//! header mutations of every level, the header-count limit, and the mirrors.

use pingora_error::Result;
use pingora_http::RequestHeader;
use sentinel_xds::config::route::HostRewrite;

use crate::ctx::Ctx;
use crate::headers::{self, mutate};
use crate::local_reply::local_error;
use crate::mirror;
use crate::proxy::HttpHandler;

impl HttpHandler {
    /// Turns the copy of the downstream request that Pingora sends upstream into what Envoy
    /// would send.
    pub(crate) fn prepare_upstream_request(
        &self,
        downstream: &RequestHeader,
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
        } else if let Some((re, sub)) = a.regex_rewrite.as_deref() {
            new_path = Some(re.replace_all(path, sub.as_str()).into_owned());
        }
        if let Some(p) = new_path {
            let uri = match query {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            if let Ok(uri) = uri.parse() {
                if !self.hcm.suppress_envoy_headers {
                    let _ = upstream.insert_header("x-envoy-original-path", pq.as_str());
                }
                upstream.set_uri(uri);
            }
        }
        // Pingora drops the hop-by-hop `te`; gRPC needs `te: trailers` upstream, as Envoy keeps.
        if crate::request::has_token(&downstream.headers, http::header::TE, "trailers") {
            let _ = upstream.insert_header(http::header::TE, "trailers");
        }
        // Host rewrites.
        let new_host = match a.host_rewrite.as_deref() {
            Some(HostRewrite::Literal(h)) => Some(h.clone()),
            Some(HostRewrite::Auto) => ctx
                .host
                .as_ref()
                .map(|h| h.hostname.clone().unwrap_or_else(|| h.addr.to_string())),
            Some(HostRewrite::Header(name)) => downstream
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
            |add| headers::render(&add.value, &ctx.vars(Some(downstream))),
        );
        if let (Some(t), false) = (ctx.route_timeout, self.hcm.suppress_envoy_headers) {
            let _ =
                upstream.insert_header("x-envoy-expected-rq-timeout-ms", t.as_millis().to_string());
        }
        // With max_grpc_timeout, the upstream is told the timeout that applies.
        if let (Some(t), Some(_)) = (ctx.route_timeout, a.max_grpc_timeout) {
            let _ = upstream.insert_header("grpc-timeout", format!("{}m", t.as_millis()));
        }
        if ctx.vhost().is_some_and(|v| v.attempt_count_upstream) {
            let _ = upstream.insert_header("x-envoy-attempt-count", ctx.attempts.to_string());
        }
        crate::ext_proc_body::upstream_framing(ctx, upstream);
        // Envoy counts the headers it forwards (its own included) against max_headers_count.
        let hop_by_hop = ["connection", "keep-alive", "proxy-connection", "upgrade"]
            .iter()
            .map(|h| upstream.headers.get_all(*h).iter().count())
            .sum::<usize>();
        if upstream.headers.len() - hop_by_hop > self.hcm.max_headers_count as usize {
            return Err(local_error(431));
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
}
