//! `envoy.filters.http.ratelimit` (global limits through an RLS server) and the route's
//! `rate_limits` actions that build its descriptors.

use std::time::Duration;

use sentinel_proto::pb::envoy::config::core::v3 as core_pb;
use sentinel_proto::pb::envoy::config::route::v3 as route_pb;
use sentinel_proto::pb::envoy::extensions::filters::http::ratelimit::v3 as pb;

use super::matcher::HeaderMatcher;
use super::route::{header_add, HeaderAdd};
use super::{timeout_or, ConfigError, Result, TryCollectExact};

pub const TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimit";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";

/// The filter's own config.
#[derive(Debug)]
pub struct RateLimitFilter {
    pub domain: String,
    pub stage: u32,
    /// The RLS call's deadline (20 ms by default); None waits as long as it takes.
    pub timeout: Option<Duration>,
    pub failure_mode_deny: bool,
    /// The cluster of the rate limit service (gRPC over HTTP/2).
    pub cluster: String,
    pub x_ratelimit_headers: bool,
    pub x_envoy_ratelimited_header: bool,
    pub rate_limited_status: u16,
    pub status_on_error: u16,
    pub response_headers: Vec<HeaderAdd>,
    pub as_resource_exhausted: bool,
    /// The filter's own `rate_limits`: when set, the route's and virtual host's are ignored.
    pub rate_limits: Vec<RateLimitRule>,
}

/// `RateLimitPerRoute`, the filter's config on a route or virtual host.
#[derive(Debug)]
pub struct RateLimitPerRoute {
    /// When set, these make the descriptors instead of any other `rate_limits`.
    pub rate_limits: Vec<RateLimitRule>,
    /// Overrides the filter's domain.
    pub domain: Option<String>,
    pub vh_rate_limits: super::local_ratelimit::VhRateLimits,
}

impl RateLimitPerRoute {
    pub fn from_proto(c: &pb::RateLimitPerRoute) -> Result<Self> {
        use super::local_ratelimit::VhRateLimits;
        if c.override_option != 0 {
            return Err(ConfigError::new("override_option", "not supported"));
        }
        Ok(Self {
            rate_limits: new_style_rules(&c.rate_limits, "rate_limits")?,
            domain: (!c.domain.is_empty()).then(|| c.domain.clone()),
            vh_rate_limits: match c.vh_rate_limits {
                1 => VhRateLimits::Include,
                2 => VhRateLimits::Ignore,
                _ => VhRateLimits::Override,
            },
        })
    }
}

/// How many hits a descriptor counts for (`RateLimit.hits_addend`).
#[derive(Debug, Clone)]
pub enum HitsAddend {
    Number(u64),
    /// `%REQ(name)%`: the request header's value, a number up to 1,000,000,000; the
    /// descriptor is dropped when it is not one (as Envoy does).
    Header(http::HeaderName),
}

/// The largest `hits_addend` Envoy takes.
pub const MAX_HITS_ADDEND: u64 = 1_000_000_000;

fn http_status(
    s: Option<&sentinel_proto::pb::envoy::r#type::v3::HttpStatus>,
    default: u16,
    path: &str,
) -> Result<u16> {
    match s.map(|s| s.code) {
        None | Some(0) => Ok(default),
        Some(c) if (100..600).contains(&c) => Ok(c as u16),
        Some(c) => Err(ConfigError::new(path, format!("{c} is not an HTTP status"))),
    }
}

impl RateLimitFilter {
    pub fn from_proto(c: &pb::RateLimit) -> Result<Self> {
        if c.domain.is_empty() {
            return Err(ConfigError::new("domain", "required"));
        }
        if !matches!(c.request_type.as_str(), "" | "both") {
            return Err(ConfigError::new("request_type", "only 'both' is supported"));
        }
        let service = c
            .rate_limit_service
            .as_ref()
            .ok_or_else(|| ConfigError::new("rate_limit_service", "required"))?;
        let cluster = match service
            .grpc_service
            .as_ref()
            .and_then(|g| g.target_specifier.as_ref())
        {
            Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(e))
                if !e.cluster_name.is_empty() =>
            {
                e.cluster_name.clone()
            }
            _ => {
                return Err(ConfigError::new(
                    "rate_limit_service.grpc_service",
                    "an envoy_grpc cluster_name is required",
                ))
            }
        };
        Ok(Self {
            domain: c.domain.clone(),
            stage: c.stage,
            timeout: timeout_or(
                c.timeout.as_ref(),
                Some(Duration::from_millis(20)),
                "timeout",
            )?,
            failure_mode_deny: c.failure_mode_deny,
            cluster,
            x_ratelimit_headers: c.enable_x_ratelimit_headers == 1,
            x_envoy_ratelimited_header: !c.disable_x_envoy_ratelimited_header,
            rate_limited_status: http_status(
                c.rate_limited_status.as_ref(),
                429,
                "rate_limited_status",
            )?,
            status_on_error: http_status(c.status_on_error.as_ref(), 500, "status_on_error")?,
            response_headers: c
                .response_headers_to_add
                .iter()
                .enumerate()
                .map(|(i, o)| header_add(o, &format!("response_headers_to_add[{i}]")))
                .try_collect_exact()?,
            as_resource_exhausted: c.rate_limited_as_resource_exhausted,
            rate_limits: new_style_rules(&c.rate_limits, "rate_limits")?,
        })
    }
}

/// One entry of a descriptor, or how to make it from the request.
#[derive(Debug, Clone)]
pub enum Action {
    SourceCluster,
    DestinationCluster,
    RequestHeaders {
        header: http::HeaderName,
        key: String,
        skip_if_absent: bool,
    },
    QueryParameters {
        name: String,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
}

/// One `rate_limits` entry of a route or virtual host: the actions that make one descriptor.
#[derive(Debug, Clone)]
pub struct RateLimitRule {
    pub stage: u32,
    pub actions: Vec<Action>,
    pub hits_addend: Option<HitsAddend>,
}

impl RateLimitRule {
    /// `new_style`: a rule of the filter's or RateLimitPerRoute's `rate_limits`, where
    /// `hits_addend` applies (Envoy ignores it in the route's and virtual host's).
    pub fn from_proto(r: &route_pb::RateLimit, new_style: bool) -> Result<Self> {
        use route_pb::rate_limit::action::ActionSpecifier as A;
        if r.limit.is_some() {
            return Err(ConfigError::new(
                "limit",
                "dynamic limit overrides are not supported",
            ));
        }
        if r.apply_on_stream_done {
            return Err(ConfigError::new("apply_on_stream_done", "not supported"));
        }
        if r.x_ratelimit_option != 0 {
            return Err(ConfigError::new("x_ratelimit_option", "not supported"));
        }
        let hits_addend = match &r.hits_addend {
            Some(h) if new_style => Some(hits_addend(h)?),
            _ => None,
        };
        let mut actions = Vec::with_capacity(r.actions.len());
        for (i, a) in r.actions.iter().enumerate() {
            let path = format!("actions[{i}]");
            let or = |s: &str, d: &str| {
                if s.is_empty() {
                    d.to_string()
                } else {
                    s.to_string()
                }
            };
            actions.push(match &a.action_specifier {
                Some(A::SourceCluster(_)) => Action::SourceCluster,
                Some(A::DestinationCluster(_)) => Action::DestinationCluster,
                Some(A::RequestHeaders(h)) => Action::RequestHeaders {
                    header: http::HeaderName::try_from(h.header_name.to_ascii_lowercase())
                        .map_err(|_| {
                            ConfigError::new(
                                format!("{path}.request_headers.header_name"),
                                "invalid header name",
                            )
                        })?,
                    key: h.descriptor_key.clone(),
                    skip_if_absent: h.skip_if_absent,
                },
                Some(A::QueryParameters(q)) => Action::QueryParameters {
                    name: q.query_parameter_name.clone(),
                    key: q.descriptor_key.clone(),
                    skip_if_absent: q.skip_if_absent,
                },
                Some(A::RemoteAddress(_)) => Action::RemoteAddress,
                Some(A::MaskedRemoteAddress(m)) => Action::MaskedRemoteAddress {
                    v4: m
                        .v4_prefix_mask_len
                        .as_ref()
                        .map_or(32, |v| v.value.min(32)) as u8,
                    v6: m
                        .v6_prefix_mask_len
                        .as_ref()
                        .map_or(128, |v| v.value.min(128)) as u8,
                },
                Some(A::GenericKey(g)) => Action::GenericKey {
                    key: or(&g.descriptor_key, "generic_key"),
                    value: g.descriptor_value.clone(),
                },
                Some(A::HeaderValueMatch(h)) => Action::HeaderValueMatch {
                    key: or(&h.descriptor_key, "header_match"),
                    value: h.descriptor_value.clone(),
                    expect_match: h.expect_match.as_ref().is_none_or(|b| b.value),
                    headers: h
                        .headers
                        .iter()
                        .enumerate()
                        .map(|(j, m)| {
                            HeaderMatcher::from_proto(
                                m,
                                &format!("{path}.header_value_match.headers[{j}]"),
                            )
                        })
                        .try_collect_exact()?,
                },
                _ => {
                    return Err(ConfigError::new(
                        path,
                        "this rate limit action is not supported",
                    ))
                }
            });
        }
        Ok(Self {
            stage: r.stage.as_ref().map_or(0, |s| s.value),
            actions,
            hits_addend,
        })
    }
}

fn hits_addend(h: &route_pb::rate_limit::HitsAddend) -> Result<HitsAddend> {
    match (h.number.as_ref().map(|n| n.value), h.format.as_str()) {
        (Some(n), "") if n <= MAX_HITS_ADDEND => Ok(HitsAddend::Number(n)),
        (Some(_), "") => Err(ConfigError::new(
            "hits_addend.number",
            format!("must be at most {MAX_HITS_ADDEND}"),
        )),
        (None, f) => f
            .strip_prefix("%REQ(")
            .and_then(|f| f.strip_suffix(")%"))
            .and_then(|h| http::HeaderName::try_from(h.to_ascii_lowercase()).ok())
            .map(HitsAddend::Header)
            .ok_or_else(|| {
                ConfigError::new(
                    "hits_addend.format",
                    "only a number or %REQ(header)% is supported",
                )
            }),
        (Some(_), _) => Err(ConfigError::new(
            "hits_addend",
            "number and format are exclusive",
        )),
    }
}

/// `rate_limits` of the filter or of `RateLimitPerRoute`, where `stage` does not apply.
fn new_style_rules(v: &[route_pb::RateLimit], field: &str) -> Result<Vec<RateLimitRule>> {
    let mut rules = parse_rules(v, field, true)?;
    for r in &mut rules {
        r.stage = 0;
    }
    Ok(rules)
}

/// Parses a route's or virtual host's `rate_limits`.
pub fn rules(v: &[route_pb::RateLimit], field: &str) -> Result<Vec<RateLimitRule>> {
    parse_rules(v, field, false)
}

fn parse_rules(
    v: &[route_pb::RateLimit],
    field: &str,
    new_style: bool,
) -> Result<Vec<RateLimitRule>> {
    v.iter()
        .enumerate()
        .map(|(i, r)| {
            RateLimitRule::from_proto(r, new_style).map_err(|e| e.within(&format!("{field}[{i}]")))
        })
        .collect()
}
