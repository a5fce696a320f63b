//! `RouteConfiguration`: virtual hosts, routes, and what a matched route does.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use sentinel_proto::pb::envoy::config::core::v3 as core_pb;
use sentinel_proto::pb::envoy::config::route::v3 as pb;

pub(crate) use super::header_mutation::header_add;
pub use super::header_mutation::{AppendAction, HeaderAdd, HeaderMutations, Part, Template};
use super::matcher::{compile_regex, full_regex, HeaderMatcher, QueryMatcher};
use super::{duration, timeout_or, ConfigError, Result, TryCollectExact};

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
    /// Removed from every request (no client is internal with Envoy's default
    /// internal_address_config).
    pub internal_only_headers: Vec<http::HeaderName>,
    /// The virtual hosts by domain, built once here so that a request's lookup does not
    /// scan every domain.
    pub domains: DomainIndex,
}

/// Virtual host indexes by domain, in Envoy's precedence: exact, then the longest `*.suffix`,
/// then the longest `prefix*`, then `*`. Wildcards are grouped by length (as Envoy does), so
/// a lookup costs one hash probe per distinct wildcard length.
#[derive(Debug, Clone, Default)]
pub struct DomainIndex {
    exact: std::collections::HashMap<String, usize>,
    /// Suffix length -> suffix (with its leading `.` or whatever follows the `*`) -> index.
    suffixes: std::collections::BTreeMap<usize, std::collections::HashMap<String, usize>>,
    prefixes: std::collections::BTreeMap<usize, std::collections::HashMap<String, usize>>,
    any: Option<usize>,
}

impl DomainIndex {
    /// Domains are lower case and unique across the route configuration (checked before).
    fn new(virtual_hosts: &[VirtualHost]) -> Self {
        let mut index = Self::default();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                if d == "*" {
                    index.any.get_or_insert(i);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    let by_len = index.suffixes.entry(suffix.len()).or_default();
                    by_len.entry(suffix.to_string()).or_insert(i);
                } else if let Some(prefix) = d.strip_suffix('*') {
                    let by_len = index.prefixes.entry(prefix.len()).or_default();
                    by_len.entry(prefix.to_string()).or_insert(i);
                } else {
                    index.exact.entry(d.clone()).or_insert(i);
                }
            }
        }
        index
    }

    /// The index of the virtual host for a Host value (compared case-insensitively).
    pub fn find(&self, host: &str) -> Option<usize> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        // A wildcard must match at least one character: `*.a.com` does not match `.a.com`.
        for (len, by) in self.suffixes.range(..host.len()).rev() {
            if let Some(i) = host.get(host.len() - len..).and_then(|s| by.get(s)) {
                return Some(*i);
            }
        }
        for (len, by) in self.prefixes.range(..host.len()).rev() {
            if let Some(i) = host.get(..*len).and_then(|p| by.get(p)) {
                return Some(*i);
            }
        }
        self.any
    }
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: HeaderMutations,
    pub per_filter: PerFilter,
    pub rate_limits: Vec<super::ratelimit::RateLimitRule>,
    /// `x-envoy-attempt-count` on the upstream request / on the response.
    pub attempt_count_upstream: bool,
    pub attempt_count_in_response: bool,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: HeaderMutations,
    pub per_filter: PerFilter,
}

/// `typed_per_filter_config`, by HTTP filter name.
pub type PerFilter = std::collections::BTreeMap<String, FilterOverride>;

/// A per-route (or per-virtual-host) config for one HTTP filter.
#[derive(Debug, Clone)]
pub enum FilterOverride {
    /// `FilterConfig { disabled: true }`: the filter is skipped here.
    Disabled,
    LocalRateLimit(Arc<super::local_ratelimit::LocalRateLimit>),
    RateLimit(Arc<super::ratelimit::RateLimitPerRoute>),
    ExtProc(super::ext_proc::ExtProcPerRoute),
}

fn per_filter(
    map: &std::collections::HashMap<String, sentinel_proto::pb::google::protobuf::Any>,
) -> Result<PerFilter> {
    let mut out = PerFilter::new();
    for (name, any) in map {
        let path = format!("typed_per_filter_config[{name:?}]");
        let bad = |e: sentinel_proto::JsonError| ConfigError::new(path.clone(), e.to_string());
        let (inner, optional) = if any
            .type_url
            .ends_with("/envoy.config.route.v3.FilterConfig")
        {
            let fc: pb::FilterConfig = sentinel_proto::from_any(any).map_err(bad)?;
            if fc.disabled {
                out.insert(name.clone(), FilterOverride::Disabled);
                continue;
            }
            match fc.config {
                Some(c) => (c, fc.is_optional),
                None => continue,
            }
        } else {
            (any.clone(), false)
        };
        let type_name = inner.type_url.rsplit('/').next().unwrap_or_default();
        if type_name == super::local_ratelimit::TYPE {
            let proto = sentinel_proto::from_any(&inner).map_err(bad)?;
            let config = super::local_ratelimit::LocalRateLimit::from_proto(&proto)
                .map_err(|e| e.within(&path))?;
            out.insert(
                name.clone(),
                FilterOverride::LocalRateLimit(Arc::new(config)),
            );
        } else if type_name == super::ratelimit::PER_ROUTE_TYPE {
            let proto = sentinel_proto::from_any(&inner).map_err(bad)?;
            let config = super::ratelimit::RateLimitPerRoute::from_proto(&proto)
                .map_err(|e| e.within(&path))?;
            out.insert(name.clone(), FilterOverride::RateLimit(Arc::new(config)));
        } else if type_name == super::ext_proc::PER_ROUTE_TYPE {
            let proto = sentinel_proto::from_any(&inner).map_err(bad)?;
            let config = super::ext_proc::ExtProcPerRoute::from_proto(&proto)
                .map_err(|e| e.within(&path))?;
            out.insert(name.clone(), FilterOverride::ExtProc(config));
        } else if !optional {
            return Err(ConfigError::new(
                path,
                format!("no supported HTTP filter takes per-route config of type {type_name}"),
            ));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    /// Matches the prefix when followed by `/`, `?`, `#` or the end of the path.
    SeparatedPrefix(String),
}

#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    pub grpc: bool,
    /// Percent of requests (0..=100 in millionths) sampled by `runtime_fraction`'s default.
    pub fraction_per_million: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum Action {
    Forward(Arc<RouteAction>),
    /// Boxed: a redirect is 160 bytes inline, and every `Route` would pay for it.
    Redirect(Box<Redirect>),
    Direct {
        status: u16,
        body: Option<bytes::Bytes>,
    },
}

#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    Cluster(String),
    Weighted {
        clusters: Vec<WeightedCluster>,
        total: u64,
    },
    Header(http::HeaderName),
}

#[derive(Debug, Clone)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    pub headers: HeaderMutations,
}

#[derive(Debug, Clone)]
pub enum HostRewrite {
    Literal(String),
    Auto,
    Header(http::HeaderName),
}

#[derive(Debug, Clone)]
pub struct RouteAction {
    pub cluster: ClusterSpecifier,
    /// 503 (SERVICE_UNAVAILABLE) by default, or 404.
    pub cluster_not_found_status: u16,
    pub prefix_rewrite: Option<String>,
    // The rarely set parts are boxed: a route action lives per route (10,000s of them), and
    // inline they were 180 of its 392 bytes.
    pub regex_rewrite: Option<Box<(Regex, String)>>,
    pub host_rewrite: Option<Box<HostRewrite>>,
    /// Whole-request timeout; None disables it. Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: Option<Box<RetryPolicy>>,
    pub mirrors: Vec<Mirror>,
    pub rate_limits: Vec<super::ratelimit::RateLimitRule>,
    /// The virtual host's `rate_limits` apply too (they do anyway when the route has none).
    pub include_vh_rate_limits: bool,
    /// `upgrade_configs`: per upgrade type (lowercase), allowed or not on this route, over
    /// the connection manager's setting.
    pub upgrades: Vec<(String, bool)>,
    /// `max_grpc_timeout`: when set, a gRPC call's `grpc-timeout` replaces `timeout`
    /// (zero: no cap); `grpc_timeout_offset` is taken off it first.
    pub max_grpc_timeout: Option<Duration>,
    pub grpc_timeout_offset: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: bool,
    pub refused_stream: bool,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub retriable_status_codes: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: String,
    pub fraction_per_million: u32,
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub status: u16,
    pub strip_query: bool,
}

impl RouteConfig {
    pub fn from_proto(rc: &pb::RouteConfiguration) -> Result<Self> {
        let virtual_hosts = rc
            .virtual_hosts
            .iter()
            .enumerate()
            .map(|(i, vh)| {
                VirtualHost::from_proto(vh).map_err(|e| e.within(&format!("virtual_hosts[{i}]")))
            })
            .try_collect_exact()?;
        let mut seen = std::collections::HashSet::new();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                if !seen.insert(d.to_ascii_lowercase()) {
                    return Err(ConfigError::new(
                        format!("virtual_hosts[{i}].domains"),
                        format!("only unique values for domains are permitted: duplicate entry of domain {d}"),
                    ));
                }
            }
        }
        Ok(Self {
            name: rc.name.clone(),
            domains: DomainIndex::new(&virtual_hosts),
            virtual_hosts,
            headers: HeaderMutations::from_proto(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
            )?,
            most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
            internal_only_headers: rc
                .internal_only_headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    http::HeaderName::try_from(h.to_ascii_lowercase()).map_err(|_| {
                        ConfigError::new(
                            format!("internal_only_headers[{i}]"),
                            "invalid header name",
                        )
                    })
                })
                .try_collect_exact()?,
        })
    }

    /// Every cluster a route names statically (for `validate_clusters` and EDS interest).
    pub fn referenced_clusters(&self) -> impl Iterator<Item = &str> {
        self.virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.iter())
            .flat_map(|r| {
                let mut names: Vec<&str> = Vec::new();
                if let Action::Forward(a) = &r.action {
                    match &a.cluster {
                        ClusterSpecifier::Cluster(c) => names.push(c),
                        ClusterSpecifier::Weighted { clusters, .. } => {
                            names.extend(clusters.iter().map(|c| c.name.as_str()))
                        }
                        ClusterSpecifier::Header(_) => {}
                    }
                    names.extend(a.mirrors.iter().map(|m| m.cluster.as_str()));
                }
                names
            })
    }
}

impl VirtualHost {
    fn from_proto(vh: &pb::VirtualHost) -> Result<Self> {
        if vh.domains.is_empty() {
            return Err(ConfigError::new(
                "domains",
                "at least one domain is required",
            ));
        }
        for (i, d) in vh.domains.iter().enumerate() {
            let wildcards = d.matches('*').count();
            let ok = d == "*"
                || wildcards == 0
                || (wildcards == 1 && (d.starts_with('*') || d.ends_with('*')));
            if !ok {
                return Err(ConfigError::new(
                    format!("domains[{i}]"),
                    format!("invalid domain '{d}'"),
                ));
            }
        }
        if vh.require_tls != 0 {
            return Err(ConfigError::new("require_tls", "not supported"));
        }
        let routes = vh
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::from_proto(r).map_err(|e| e.within(&format!("routes[{i}]"))))
            .try_collect_exact()?;
        Ok(Self {
            name: vh.name.clone(),
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            per_filter: per_filter(&vh.typed_per_filter_config)?,
            rate_limits: super::ratelimit::rules(&vh.rate_limits, "rate_limits")?,
            attempt_count_upstream: vh.include_request_attempt_count,
            attempt_count_in_response: vh.include_attempt_count_in_response,
            routes,
            headers: HeaderMutations::from_proto(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            )?,
        })
    }
}

impl Route {
    fn from_proto(r: &pb::Route) -> Result<Self> {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| ConfigError::new("match", "required"))?;
        let matcher = RouteMatch::from_proto(m).map_err(|e| e.within("match"))?;
        let action = match &r.action {
            Some(pb::route::Action::Route(a)) => Action::Forward(Arc::new(
                RouteAction::from_proto(a).map_err(|e| e.within("route"))?,
            )),
            Some(pb::route::Action::Redirect(rd)) => Action::Redirect(Box::new(
                Redirect::from_proto(rd).map_err(|e| e.within("redirect"))?,
            )),
            Some(pb::route::Action::DirectResponse(d)) => {
                if !(200..=599).contains(&d.status) {
                    return Err(ConfigError::new(
                        "direct_response.status",
                        "must be in 200..599",
                    ));
                }
                let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                    None => None,
                    Some(core_pb::data_source::Specifier::InlineString(s)) => {
                        Some(bytes::Bytes::from(s.clone()))
                    }
                    Some(core_pb::data_source::Specifier::InlineBytes(b)) => {
                        Some(bytes::Bytes::from(b.clone()))
                    }
                    Some(_) => {
                        return Err(ConfigError::new(
                            "direct_response.body",
                            "only inline bodies are supported",
                        ))
                    }
                };
                Action::Direct {
                    status: d.status as u16,
                    body,
                }
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "action",
                    "only route, redirect and direct_response are supported",
                ))
            }
            None => return Err(ConfigError::new("action", "an action is required")),
        };
        Ok(Self {
            name: r.name.clone(),
            matcher,
            per_filter: per_filter(&r.typed_per_filter_config)?,
            action,
            headers: HeaderMutations::from_proto(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
            )?,
        })
    }
}

pub(crate) fn fraction_per_million(f: &core_pb::RuntimeFractionalPercent) -> u32 {
    use sentinel_proto::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    let Some(p) = &f.default_value else { return 0 };
    let per_million = match D::try_from(p.denominator) {
        Ok(D::Hundred) => p.numerator as u64 * 10_000,
        Ok(D::TenThousand) => p.numerator as u64 * 100,
        _ => p.numerator as u64,
    };
    per_million.min(1_000_000) as u32
}

impl RouteMatch {
    fn from_proto(m: &pb::RouteMatch) -> Result<Self> {
        use pb::route_match::PathSpecifier as P;
        let path = match &m.path_specifier {
            Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
            Some(P::Path(p)) => PathMatch::Exact(p.clone()),
            Some(P::SafeRegex(r)) => PathMatch::Regex(full_regex(r, "safe_regex")?),
            Some(P::PathSeparatedPrefix(p)) => {
                if p.contains(['?', '#']) || p.ends_with('/') {
                    return Err(ConfigError::new(
                        "path_separated_prefix",
                        "must not end in '/' or contain '?' or '#'",
                    ));
                }
                PathMatch::SeparatedPrefix(p.clone())
            }
            Some(_) => return Err(ConfigError::new("path_specifier", "not supported")),
            None => {
                return Err(ConfigError::new(
                    "path_specifier",
                    "a path specifier is required",
                ))
            }
        };
        Ok(Self {
            path,
            case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
            headers: m
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| HeaderMatcher::from_proto(h, &format!("headers[{i}]")))
                .try_collect_exact()?,
            query: m
                .query_parameters
                .iter()
                .enumerate()
                .map(|(i, q)| QueryMatcher::from_proto(q, &format!("query_parameters[{i}]")))
                .try_collect_exact()?,
            grpc: m.grpc.is_some(),
            fraction_per_million: m.runtime_fraction.as_ref().map(fraction_per_million),
        })
    }
}

fn regex_rewrite(
    r: &sentinel_proto::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
    path: &str,
) -> Result<(Regex, String)> {
    let pattern = r
        .pattern
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.pattern"), "required"))?;
    let re = compile_regex(&pattern.regex, false, &format!("{path}.pattern"))?;
    // RE2 substitutions use \1; the regex crate uses ${1}.
    let mut sub = String::new();
    let mut chars = r.substitution.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                sub.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => sub.push_str("$$"),
            _ => sub.push(c),
        }
    }
    Ok((re, sub))
}

/// One `upgrade_configs` entry: its type, lowercase, and `enabled` (true by default).
pub(crate) fn upgrade(
    kind: &str,
    enabled: Option<&sentinel_proto::pb::google::protobuf::BoolValue>,
    path: &str,
) -> Result<(String, bool)> {
    if kind.is_empty() {
        return Err(ConfigError::new(format!("{path}.upgrade_type"), "required"));
    }
    Ok((kind.to_ascii_lowercase(), enabled.is_none_or(|b| b.value)))
}

impl RouteAction {
    fn from_proto(a: &pb::RouteAction) -> Result<Self> {
        use pb::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
        let cluster = match &a.cluster_specifier {
            Some(C::Cluster(c)) if !c.is_empty() => ClusterSpecifier::Cluster(c.clone()),
            Some(C::ClusterHeader(h)) => ClusterSpecifier::Header(
                http::HeaderName::try_from(h.to_ascii_lowercase())
                    .map_err(|_| ConfigError::new("cluster_header", "invalid header name"))?,
            ),
            Some(C::WeightedClusters(w)) => {
                let clusters = w
                    .clusters
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let p = format!("weighted_clusters.clusters[{i}]");
                        if c.name.is_empty() {
                            return Err(ConfigError::new(format!("{p}.name"), "required"));
                        }
                        Ok(WeightedCluster {
                            name: c.name.clone(),
                            weight: c.weight.as_ref().map_or(0, |w| w.value),
                            headers: HeaderMutations::from_proto(
                                &c.request_headers_to_add,
                                &c.request_headers_to_remove,
                                &c.response_headers_to_add,
                                &c.response_headers_to_remove,
                            )
                            .map_err(|e| e.within(&p))?,
                        })
                    })
                    .try_collect_exact()?;
                let sum: u64 = clusters.iter().map(|c| c.weight as u64).sum();
                let total = match a.cluster_specifier {
                    Some(C::WeightedClusters(ref w)) => {
                        w.total_weight.as_ref().map_or(sum, |t| t.value as u64)
                    }
                    _ => sum,
                };
                if clusters.is_empty() || sum == 0 || total != sum {
                    return Err(ConfigError::new(
                        "weighted_clusters",
                        format!("sum of weights ({sum}) must be positive and equal total_weight ({total})"),
                    ));
                }
                ClusterSpecifier::Weighted { clusters, total }
            }
            _ => {
                return Err(ConfigError::new(
                    "cluster_specifier",
                    "cluster, weighted_clusters or cluster_header is required",
                ))
            }
        };
        let cluster_not_found_status = match pb::route_action::ClusterNotFoundResponseCode::try_from(
            a.cluster_not_found_response_code,
        ) {
            Ok(pb::route_action::ClusterNotFoundResponseCode::NotFound) => 404,
            Ok(pb::route_action::ClusterNotFoundResponseCode::InternalServerError) => 500,
            _ => 503,
        };
        let host_rewrite = match &a.host_rewrite_specifier {
            None => None,
            Some(H::HostRewriteLiteral(h)) => Some(HostRewrite::Literal(h.clone())),
            Some(H::AutoHostRewrite(b)) if b.value => Some(HostRewrite::Auto),
            Some(H::AutoHostRewrite(_)) => None,
            Some(H::HostRewriteHeader(h)) => Some(HostRewrite::Header(
                http::HeaderName::try_from(h.to_ascii_lowercase())
                    .map_err(|_| ConfigError::new("host_rewrite_header", "invalid header name"))?,
            )),
            Some(_) => return Err(ConfigError::new("host_rewrite_specifier", "not supported")),
        };
        if !a.prefix_rewrite.is_empty() && a.regex_rewrite.is_some() {
            return Err(ConfigError::new(
                "regex_rewrite",
                "cannot be used with prefix_rewrite",
            ));
        }
        Ok(Self {
            cluster,
            cluster_not_found_status,
            prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
            regex_rewrite: a
                .regex_rewrite
                .as_ref()
                .map(|r| regex_rewrite(r, "regex_rewrite").map(Box::new))
                .transpose()?,
            host_rewrite: host_rewrite.map(Box::new),
            timeout: timeout_or(a.timeout.as_ref(), Some(Duration::from_secs(15)), "timeout")?,
            idle_timeout: timeout_or(a.idle_timeout.as_ref(), None, "idle_timeout")?,
            rate_limits: super::ratelimit::rules(&a.rate_limits, "rate_limits")?,
            include_vh_rate_limits: a.include_vh_rate_limits.as_ref().is_some_and(|b| b.value),
            max_grpc_timeout: a
                .max_grpc_timeout
                .as_ref()
                .map(|d| super::duration(d, "max_grpc_timeout"))
                .transpose()?,
            grpc_timeout_offset: a
                .grpc_timeout_offset
                .as_ref()
                .map(|d| super::duration(d, "grpc_timeout_offset"))
                .transpose()?,
            upgrades: a
                .upgrade_configs
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    upgrade(
                        &u.upgrade_type,
                        u.enabled.as_ref(),
                        &format!("upgrade_configs[{i}]"),
                    )
                })
                .try_collect_exact()?,
            retry: a
                .retry_policy
                .as_ref()
                .map(|r| {
                    RetryPolicy::from_proto(r)
                        .map(Box::new)
                        .map_err(|e| e.within("retry_policy"))
                })
                .transpose()?,
            mirrors: a
                .request_mirror_policies
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.cluster.is_empty() {
                        return Err(ConfigError::new(
                            format!("request_mirror_policies[{i}].cluster"),
                            "required",
                        ));
                    }
                    Ok(Mirror {
                        cluster: m.cluster.clone(),
                        fraction_per_million: m
                            .runtime_fraction
                            .as_ref()
                            .map_or(1_000_000, fraction_per_million),
                    })
                })
                .try_collect_exact()?,
        })
    }
}

impl RetryPolicy {
    fn from_proto(r: &pb::RetryPolicy) -> Result<Self> {
        let mut on = RetryOn::default();
        for cond in r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match cond {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "refused-stream" => on.refused_stream = true,
                other => {
                    return Err(ConfigError::new(
                        "retry_on",
                        format!("retry condition '{other}' is not supported"),
                    ))
                }
            }
        }
        let (base, max) = match &r.retry_back_off {
            Some(b) => {
                let base = b
                    .base_interval
                    .as_ref()
                    .map(|d| duration(d, "retry_back_off.base_interval"))
                    .transpose()?
                    .ok_or_else(|| ConfigError::new("retry_back_off.base_interval", "required"))?;
                if base.is_zero() {
                    return Err(ConfigError::new(
                        "retry_back_off.base_interval",
                        "must be greater than 0",
                    ));
                }
                let max = b
                    .max_interval
                    .as_ref()
                    .map(|d| duration(d, "retry_back_off.max_interval"))
                    .transpose()?
                    .unwrap_or(base * 10);
                if max < base {
                    return Err(ConfigError::new(
                        "retry_back_off.max_interval",
                        "must be at least base_interval",
                    ));
                }
                (base, max)
            }
            None => (Duration::from_millis(25), Duration::from_millis(250)),
        };
        Ok(Self {
            on,
            num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
            per_try_timeout: timeout_or(r.per_try_timeout.as_ref(), None, "per_try_timeout")?,
            base_interval: base,
            max_interval: max,
            retriable_status_codes: r.retriable_status_codes.iter().map(|c| *c as u16).collect(),
        })
    }
}

impl Redirect {
    fn from_proto(r: &pb::RedirectAction) -> Result<Self> {
        use pb::redirect_action::{
            PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
        };
        let scheme = match &r.scheme_rewrite_specifier {
            Some(S::HttpsRedirect(true)) => Some("https".to_string()),
            Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
            _ => None,
        };
        let (path, prefix_rewrite, regex) = match &r.path_rewrite_specifier {
            None => (None, None, None),
            Some(P::PathRedirect(p)) => (Some(p.clone()), None, None),
            Some(P::PrefixRewrite(p)) => (None, Some(p.clone()), None),
            Some(P::RegexRewrite(rr)) => (None, None, Some(regex_rewrite(rr, "regex_rewrite")?)),
            Some(P::PathRewrite(_)) => {
                return Err(ConfigError::new(
                    "path_rewrite",
                    "path templates are not supported",
                ))
            }
        };
        let status = match C::try_from(r.response_code) {
            Ok(C::MovedPermanently) => 301,
            Ok(C::Found) => 302,
            Ok(C::SeeOther) => 303,
            Ok(C::TemporaryRedirect) => 307,
            Ok(C::PermanentRedirect) => 308,
            Err(_) => return Err(ConfigError::new("response_code", "unknown code")),
        };
        Ok(Self {
            scheme,
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            port: (r.port_redirect != 0).then_some(r.port_redirect as u16),
            path,
            prefix_rewrite,
            regex_rewrite: regex,
            status,
            strip_query: r.strip_query,
        })
    }
}
