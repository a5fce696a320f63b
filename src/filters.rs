//! The HTTP filters before the router, run on the request headers in the chain's order.
//!
//! A filter sees the matched route (if any) for its per-route override, may add request
//! headers, may add response headers (kept in the context until the response), or may answer
//! the request itself. Filters: `envoy.filters.http.local_ratelimit` and
//! `envoy.filters.http.ratelimit`.

use std::time::Instant;

use pingora_http::RequestHeader;
use pingora_http::ResponseHeader;
use sentinel_xds::config::ext_proc::{BodyMode, ExtProc, ExtProcOverrides, ExtProcPerRoute};
use sentinel_xds::config::hcm::HttpFilter;
use sentinel_xds::config::local_ratelimit::{LocalRateLimit, TokenBucket, VhRateLimits};
use sentinel_xds::config::ratelimit::{RateLimitFilter, RateLimitPerRoute, RateLimitRule};
use sentinel_xds::config::route::{Action, FilterOverride, PerFilter, Route, VirtualHost};

use crate::ctx::Ctx;
use crate::ext_proc::{self, Outcome};
use crate::headers::{self, apply_add};
use crate::proxy::HttpHandler;
use crate::ratelimit::{self, DescriptorInput, Verdict};

/// A filter's own answer to the request.
pub(crate) struct FilterReply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(http::HeaderName, String)>,
    /// The grpc-status a gRPC client gets instead of the one mapped from `status`.
    pub grpc_status: Option<u32>,
}

/// Samples a share given in millionths.
fn sampled(per_million: u32) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && rand::random_range(0..1_000_000) < per_million)
}

/// The rate limit filter's per-route config: the route's, else the virtual host's; the outer
/// None when the filter is disabled here.
fn per_route_rate_limit<'a>(
    name: &str,
    levels: [Option<&'a PerFilter>; 2],
) -> Option<Option<&'a RateLimitPerRoute>> {
    for per in levels.into_iter().flatten() {
        match per.get(name) {
            Some(FilterOverride::Disabled) => return None,
            Some(FilterOverride::RateLimit(c)) => return Some(Some(c)),
            _ => {}
        }
    }
    Some(None)
}

/// The config a filter uses for this request: the route's override, else the virtual
/// host's, else its own; None when it is disabled here.
fn effective<'a>(
    name: &str,
    own: &'a LocalRateLimit,
    levels: [Option<&'a PerFilter>; 2],
) -> Option<&'a LocalRateLimit> {
    for per in levels.into_iter().flatten() {
        match per.get(name) {
            Some(FilterOverride::Disabled) => return None,
            Some(FilterOverride::LocalRateLimit(c)) => return Some(c),
            Some(FilterOverride::ExtProc(_) | FilterOverride::RateLimit(_)) | None => {}
        }
    }
    Some(own)
}

impl HttpHandler {
    /// Runs the filters before the router; Some(reply) stops the request.
    pub(crate) async fn decode_headers(
        &self,
        ctx: &mut Ctx,
        req: &mut RequestHeader,
    ) -> Option<FilterReply> {
        let route_config = ctx.route_config.clone();
        let (route, vhost) = match (&route_config, ctx.matched) {
            (Some(rc), Some((v, i))) => (
                Some(&rc.virtual_hosts[v].routes[i]),
                Some(&rc.virtual_hosts[v]),
            ),
            _ => (None, None),
        };
        let mut response_headers = Vec::new();
        for filter in &self.hcm.http_filters {
            let reply = match filter {
                HttpFilter::Router => break,
                HttpFilter::LocalRateLimit { name, config } => {
                    let levels = [route.map(|r| &r.per_filter), vhost.map(|v| &v.per_filter)];
                    let Some(cfg) = effective(name, config, levels) else {
                        continue;
                    };
                    local_rate_limit(
                        cfg,
                        req,
                        route,
                        vhost,
                        &self.local_cluster,
                        &mut response_headers,
                        ctx,
                    )
                }
                HttpFilter::RateLimit { name, config } => {
                    let levels = [route.map(|r| &r.per_filter), vhost.map(|v| &v.per_filter)];
                    let Some(per_route) = per_route_rate_limit(name, levels) else {
                        continue;
                    };
                    let scope = (route, vhost, per_route);
                    self.global_rate_limit(config, scope, req, &mut response_headers, ctx)
                        .await
                }
                HttpFilter::ExtProc { name, config } => {
                    let levels = [route.map(|r| &r.per_filter), vhost.map(|v| &v.per_filter)];
                    self.ext_proc_request(name, config, levels, req, ctx).await
                }
            };
            if let Some(mut r) = reply {
                r.headers.splice(0..0, response_headers);
                return Some(r);
            }
        }
        ctx.filter_response_headers.extend(response_headers);
        None
    }

    /// Sends the request headers to an external processor (when its mode says so) and
    /// applies its answer; keeps the conversation for the response headers.
    async fn ext_proc_request(
        &self,
        name: &str,
        config: &std::sync::Arc<ExtProc>,
        levels: [Option<&PerFilter>; 2],
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Option<FilterReply> {
        // The most specific level with an ext_proc config decides whether the filter runs;
        // overrides merge field by field from there down.
        let mut found: [Option<&ExtProcOverrides>; 2] = [None, None];
        for (i, per) in levels.into_iter().enumerate() {
            match per.and_then(|p| p.get(name)) {
                Some(
                    FilterOverride::Disabled | FilterOverride::ExtProc(ExtProcPerRoute::Disabled),
                ) if found[0].is_none() => return None,
                Some(FilterOverride::ExtProc(ExtProcPerRoute::Overrides(o))) => found[i] = Some(o),
                _ => {}
            }
        }
        let merged = match found {
            [Some(a), Some(b)] => {
                let mut m = a.clone();
                m.fill_from(b);
                Some(std::borrow::Cow::Owned(m))
            }
            [Some(o), None] | [None, Some(o)] => Some(std::borrow::Cow::Borrowed(o)),
            [None, None] => None,
        };
        let owned;
        let config = match merged.as_deref() {
            Some(o) if o.changes_config() => {
                owned = std::sync::Arc::new(config.overridden(o));
                &owned
            }
            _ => config,
        };
        let mode = merged.and_then(|o| o.mode).unwrap_or(config.mode);
        let stats = self.ext_proc_stats.get(name).cloned().unwrap_or_default();
        let mut conv = ext_proc::Conversation::new(config.clone(), mode, stats);
        conv.request_attributes = self.attributes(&config.request_attributes, req, None, ctx);
        let end = ctx.request_end_of_stream;
        if config.observability_mode {
            if mode.request_headers {
                let msg = ext_proc::request_headers(req, end);
                if let Err(f) = conv.observe(&self.clusters, msg).await {
                    return self.ext_proc_failure(&conv, f);
                }
            }
        } else if mode.request_headers {
            let answer = conv
                .exchange(&self.clusters, ext_proc::request_headers(req, end))
                .await
                .map(|r| conv.mode_override(r))
                .and_then(|r| ext_proc::outcome(r, true, config));
            match answer {
                Ok(Outcome::Immediate(i)) => {
                    conv.stats.immediate_responses_sent.inc();
                    return Some(ext_proc::immediate_reply(i));
                }
                Ok(Outcome::Continue {
                    mutation,
                    clear_route_cache,
                }) => {
                    if let Some(m) = mutation {
                        match ext_proc::apply(&m, &config.mutation_rules, req, &conv.stats) {
                            Ok(pseudo) => {
                                for (k, v) in pseudo {
                                    if k == ":path" {
                                        if let Ok(uri) = v.parse() {
                                            req.set_uri(uri);
                                        }
                                    }
                                }
                            }
                            Err(f) => return self.ext_proc_failure(&conv, f),
                        }
                    }
                    ctx.clear_route_cache |= clear_route_cache;
                }
                Err(f) => return self.ext_proc_failure(&conv, f),
            }
        }
        let mode = conv.mode;
        let body = mode.request_body != BodyMode::None && !end;
        conv.request_body.done = !body;
        if body {
            conv.request_body.content_length = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
        }
        // Trailers can only follow a body that has not ended with the headers.
        if mode.response_headers
            || body
            || (mode.request_trailers && !end)
            || mode.response_body != BodyMode::None
            || mode.response_trailers
        {
            ctx.ext_proc.push(conv);
        }
        None
    }

    /// A processor's attributes, evaluated now.
    pub(crate) fn attributes(
        &self,
        attributes: &[sentinel_xds::config::ext_proc_attributes::Attribute],
        req: &RequestHeader,
        resp: Option<&ResponseHeader>,
        ctx: &Ctx,
    ) -> Option<ext_proc::Attributes> {
        let sources = crate::ext_proc_attributes::Sources {
            req,
            resp,
            ctx,
            filter_chain: &self.filter_chain,
        };
        crate::ext_proc_attributes::evaluate(attributes, &sources)
    }

    /// A processor that failed: pass the request on, or answer 504/500 (`failure_mode_allow`).
    fn ext_proc_failure(
        &self,
        conv: &ext_proc::Conversation,
        f: ext_proc::Failure,
    ) -> Option<FilterReply> {
        tracing::debug!("ext_proc failed: {f:?}");
        if f == ext_proc::Failure::Closed {
            return None;
        }
        if conv.config.failure_mode_allow {
            conv.stats.failure_mode_allowed.inc();
        }
        (!conv.config.failure_mode_allow).then(|| FilterReply {
            status: f.status(),
            body: String::new(),
            headers: vec![],
            grpc_status: None,
        })
    }

    /// The response headers go to each processor that asked for them, in reverse filter
    /// order (as Envoy encodes). Returns the status to answer with instead, on failure.
    pub(crate) async fn ext_proc_response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) {
        let mut convs = std::mem::take(&mut ctx.ext_proc);
        self.ext_proc_response_headers(&mut convs, req, resp, ctx)
            .await;
        // Kept for the response body and trailers.
        ctx.ext_proc = convs;
    }

    async fn ext_proc_response_headers(
        &self,
        convs: &mut [ext_proc::Conversation],
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) {
        for conv in convs.iter_mut().rev() {
            let attributes = &conv.config.response_attributes;
            conv.response_attributes = self.attributes(attributes, req, Some(resp), ctx);
            if !conv.mode.response_headers {
                continue;
            }
            let config = conv.config.clone();
            if config.observability_mode {
                let msg = ext_proc::response_headers(resp);
                if let Err(f) = conv.observe(&self.clusters, msg).await {
                    if config.failure_mode_allow {
                        conv.stats.failure_mode_allowed.inc();
                    } else {
                        replace_response(resp, ctx, f.status(), String::new(), vec![]);
                        return;
                    }
                }
                continue;
            }
            let answer = conv
                .exchange(&self.clusters, ext_proc::response_headers(resp))
                .await
                .map(|r| conv.mode_override(r))
                .and_then(|r| ext_proc::outcome(r, false, &config));
            let failure = match answer {
                Ok(Outcome::Continue {
                    mutation: Some(m), ..
                }) => match ext_proc::apply(&m, &config.mutation_rules, resp, &conv.stats) {
                    Ok(pseudo) => {
                        for (k, v) in pseudo {
                            if let (":status", Ok(code)) = (k.as_str(), v.parse::<u16>()) {
                                let _ = resp.set_status(code);
                            }
                        }
                        None
                    }
                    Err(f) => Some(f),
                },
                Ok(Outcome::Continue { mutation: None, .. }) => None,
                Ok(Outcome::Immediate(i)) => {
                    conv.stats.immediate_responses_sent.inc();
                    let reply = ext_proc::immediate_reply(i);
                    replace_response(resp, ctx, reply.status, reply.body, reply.headers);
                    return;
                }
                Err(f) => Some(f),
            };
            match (failure, config.failure_mode_allow) {
                (Some(ext_proc::Failure::Closed), _) => {}
                (Some(_), true) => {
                    // Envoy is done with the processor: no body messages follow.
                    conv.stats.failure_mode_allowed.inc();
                    conv.response_body.done = true;
                }
                (Some(f), false) => {
                    replace_response(resp, ctx, f.status(), String::new(), vec![]);
                    return;
                }
                (None, _) => {}
            }
        }
    }

    async fn global_rate_limit(
        &self,
        cfg: &RateLimitFilter,
        (route, vhost, per_route): (
            Option<&Route>,
            Option<&VirtualHost>,
            Option<&RateLimitPerRoute>,
        ),
        req: &mut RequestHeader,
        response_headers: &mut Vec<(http::HeaderName, String)>,
        ctx: &Ctx,
    ) -> Option<FilterReply> {
        let action = route.and_then(|r| match &r.action {
            Action::Forward(a) => Some(a.clone()),
            _ => None,
        })?;
        // Which `rate_limits` make the descriptors, as Envoy picks them: the most specific
        // RateLimitPerRoute's, else the filter's own, else the route's and (per vh_rate_limits)
        // the virtual host's, at the filter's stage.
        let vh_option = match per_route {
            _ if action.include_vh_rate_limits => VhRateLimits::Include,
            Some(p) => p.vh_rate_limits,
            None => VhRateLimits::Override,
        };
        let vh_rules = match vh_option {
            VhRateLimits::Include => vhost.map(|v| v.rate_limits.as_slice()),
            VhRateLimits::Override if action.rate_limits.is_empty() => {
                vhost.map(|v| v.rate_limits.as_slice())
            }
            _ => None,
        }
        .unwrap_or_default();
        let (stage, rules): (u32, Vec<&RateLimitRule>) = match per_route {
            Some(p) if !p.rate_limits.is_empty() => (0, p.rate_limits.iter().collect()),
            _ if !cfg.rate_limits.is_empty() => (0, cfg.rate_limits.iter().collect()),
            _ => (
                cfg.stage,
                action.rate_limits.iter().chain(vh_rules).collect(),
            ),
        };
        let domain = per_route
            .and_then(|p| p.domain.as_deref())
            .unwrap_or(&cfg.domain);
        let input = DescriptorInput {
            req,
            source_cluster: &self.local_cluster,
            destination_cluster: ctx.cluster_name.as_deref(),
            remote: ctx.downstream.map(|a| a.ip()),
        };
        let descriptors = ratelimit::descriptors(stage, rules.into_iter(), &input);
        if descriptors.is_empty() {
            return None;
        }
        match ratelimit::check(cfg, domain, &self.clusters, descriptors).await {
            Verdict::Deny(reply) => Some(reply),
            Verdict::Allow {
                request_headers,
                response_headers: extra,
            } => {
                for (k, v) in request_headers {
                    let _ = req.insert_header(k, v);
                }
                response_headers.extend(extra);
                None
            }
        }
    }
}

/// The descriptors (as entry lists) that the route's and virtual host's `rate_limits` make
/// for this request at the filter's stage.
fn self_descriptors(
    cfg: &LocalRateLimit,
    req: &RequestHeader,
    route: Option<&Route>,
    vhost: Option<&VirtualHost>,
    ctx: &Ctx,
    local_cluster: &str,
) -> Vec<Vec<(String, String)>> {
    let route_rules = route
        .and_then(|r| match &r.action {
            Action::Forward(a) => Some(a.rate_limits.as_slice()),
            _ => None,
        })
        .unwrap_or_default();
    let vh_rules = vhost.map(|v| v.rate_limits.as_slice()).unwrap_or_default();
    let vh_rules = match cfg.vh_rate_limits {
        VhRateLimits::Include => vh_rules,
        VhRateLimits::Override if route_rules.is_empty() => vh_rules,
        _ => &[],
    };
    let input = DescriptorInput {
        req,
        source_cluster: local_cluster,
        destination_cluster: ctx.cluster_name.as_deref(),
        remote: ctx.downstream.map(|a| a.ip()),
    };
    ratelimit::descriptors(cfg.stage, route_rules.iter().chain(vh_rules), &input)
        .into_iter()
        .map(|d| d.entries.into_iter().map(|e| (e.key, e.value)).collect())
        .collect()
}

fn local_rate_limit(
    cfg: &LocalRateLimit,
    req: &mut RequestHeader,
    route: Option<&Route>,
    vhost: Option<&VirtualHost>,
    local_cluster: &str,
    response_headers: &mut Vec<(http::HeaderName, String)>,
    ctx: &Ctx,
) -> Option<FilterReply> {
    if !sampled(cfg.enabled_per_million) {
        return None;
    }
    // Descriptor buckets that the route's rate_limits select, then the default bucket.
    let mut buckets: Vec<&TokenBucket> = Vec::new();
    if !cfg.descriptors.is_empty() {
        for d in self_descriptors(cfg, req, route, vhost, ctx, local_cluster) {
            if let Some(b) = cfg.descriptors.iter().find(|b| b.entries == d) {
                buckets.push(&b.bucket);
            }
        }
    }
    if buckets.is_empty() || cfg.always_consume_default {
        buckets.extend(cfg.bucket.as_ref());
    }
    let now = Instant::now();
    // Every bucket takes its token; the most restrictive one decides and is reported.
    let mut tightest: Option<(&TokenBucket, u64)> = None;
    let mut allowed = true;
    for b in buckets {
        let (ok, left) = b.try_take(now);
        allowed &= ok;
        if tightest.is_none_or(|(_, l)| left < l) {
            tightest = Some((b, left));
        }
    }
    let (bucket, remaining) = tightest?;
    if cfg.x_ratelimit_headers {
        response_headers.push((
            http::HeaderName::from_static("x-ratelimit-limit"),
            bucket.max_tokens.to_string(),
        ));
        response_headers.push((
            http::HeaderName::from_static("x-ratelimit-remaining"),
            remaining.to_string(),
        ));
        response_headers.push((
            http::HeaderName::from_static("x-ratelimit-reset"),
            bucket.reset_after(now).as_secs().to_string(),
        ));
    }
    if allowed {
        return None;
    }
    if !sampled(cfg.enforced_per_million) {
        for add in &cfg.request_headers_when_not_enforced {
            let v = headers::render(&add.value, &ctx.vars(Some(req)));
            apply_add(req, add, v);
        }
        return None;
    }
    let mut out = std::mem::take(response_headers);
    for add in &cfg.response_headers {
        out.push((
            add.name.clone(),
            headers::render(&add.value, &ctx.vars(Some(req))),
        ));
    }
    Some(FilterReply {
        status: cfg.status,
        body: "local_rate_limited".into(),
        headers: out,
        // RESOURCE_EXHAUSTED rather than UNAVAILABLE, when asked.
        grpc_status: cfg.as_resource_exhausted.then_some(8),
    })
}

/// Turns the upstream's response into another one: new status and headers now, and the body
/// replaced as it streams (see `Ctx::replace_body`).
fn replace_response(
    resp: &mut ResponseHeader,
    ctx: &mut Ctx,
    status: u16,
    body: String,
    headers: Vec<(http::HeaderName, String)>,
) {
    let _ = resp.set_status(status);
    let names: Vec<http::HeaderName> = resp.headers.keys().cloned().collect();
    for n in names {
        resp.remove_header(&n);
    }
    for (k, v) in headers {
        let _ = resp.insert_header(k, v);
    }
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
    ctx.replace_body = Some(bytes::Bytes::from(body));
}
