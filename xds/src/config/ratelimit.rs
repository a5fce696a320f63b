//! `envoy.filters.http.ratelimit` (global limits through an RLS server) and the route's
//! `rate_limits` actions that build its descriptors.

use std::time::Duration;

use sentinel_proto::pb::envoy::config::core::v3 as core_pb;
use sentinel_proto::pb::envoy::config::route::v3 as route_pb;
use sentinel_proto::pb::envoy::extensions::filters::http::ratelimit::v3 as pb;

use super::matcher::HeaderMatcher;
use super::route::{header_add, HeaderAdd};
use super::{timeout_or, ConfigError, Result};

pub const TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimit";

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
}

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
                .collect::<Result<_>>()?,
            as_resource_exhausted: c.rate_limited_as_resource_exhausted,
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
}

impl RateLimitRule {
    pub fn from_proto(r: &route_pb::RateLimit) -> Result<Self> {
        use route_pb::rate_limit::action::ActionSpecifier as A;
        if r.limit.is_some() {
            return Err(ConfigError::new(
                "limit",
                "dynamic limit overrides are not supported",
            ));
        }
        if r.hits_addend.is_some() || r.apply_on_stream_done || r.x_ratelimit_option != 0 {
            return Err(ConfigError::new(
                "hits_addend",
                "hits_addend, apply_on_stream_done and x_ratelimit_option are not supported",
            ));
        }
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
                        .collect::<Result<_>>()?,
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
        })
    }
}

/// Parses a list of `rate_limits`.
pub fn rules(v: &[route_pb::RateLimit], field: &str) -> Result<Vec<RateLimitRule>> {
    v.iter()
        .enumerate()
        .map(|(i, r)| RateLimitRule::from_proto(r).map_err(|e| e.within(&format!("{field}[{i}]"))))
        .collect()
}
