//! The HTTP connection manager network filter and its HTTP filter chain.

use std::sync::Arc;
use std::time::Duration;

use sentinel_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3 as pb;

use super::ext_proc::{self, ExtProc};
use super::local_ratelimit::{self, LocalRateLimit};
use super::ratelimit::{self, RateLimitFilter};
use super::route::RouteConfig;
use super::{timeout_or, ConfigError, Result, TryCollectExact};

pub const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// Where the HCM's routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// RDS: the route configuration of this name; `ads` says whether it rides the ADS stream.
    Rds {
        name: String,
        source: super::listener::ConfigSourceRef,
    },
    Inline(Arc<RouteConfig>),
}

/// One HTTP filter of the chain, with its name (the key of per-route configs). The router is
/// always last.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    Router,
    LocalRateLimit {
        name: String,
        config: Arc<LocalRateLimit>,
    },
    RateLimit {
        name: String,
        config: Arc<RateLimitFilter>,
    },
    ExtProc {
        name: String,
        config: Arc<ExtProc>,
    },
}

#[derive(Debug, Clone)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    pub http_filters: Vec<HttpFilter>,
    /// The router's `suppress_envoy_headers`: no `x-envoy-*` headers are added.
    pub suppress_envoy_headers: bool,
    pub server_name: String,
    pub server_header: ServerHeader,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<String>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    /// Time to receive the whole request (408 past it); disabled by default.
    pub request_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    /// `headers_with_underscores_action`: REJECT_REQUEST answers 400.
    /// `http_protocol_options.accept_http_10`: Envoy answers HTTP/1.0 with 426 otherwise.
    pub accept_http_10: bool,
    pub reject_underscore_headers: bool,
    pub drop_underscore_headers: bool,
    /// `upgrade_configs`: the upgrade types (lowercase) and whether each is allowed; routes may
    /// override them.
    pub upgrades: Vec<(String, bool)>,
}

impl HttpConnectionManager {
    pub fn from_proto(h: &pb::HttpConnectionManager) -> Result<Self> {
        use pb::http_connection_manager::{CodecType, RouteSpecifier, ServerHeaderTransformation};
        let codec = match CodecType::try_from(h.codec_type) {
            Ok(CodecType::Auto) => Codec::Auto,
            Ok(CodecType::Http1) => Codec::Http1,
            Ok(CodecType::Http2) => Codec::Http2,
            _ => {
                return Err(ConfigError::new(
                    "codec_type",
                    "only AUTO, HTTP1 and HTTP2 are supported",
                ))
            }
        };
        let routes = match &h.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => {
                if rds.route_config_name.is_empty() {
                    return Err(ConfigError::new("rds.route_config_name", "required"));
                }
                let source = rds
                    .config_source
                    .as_ref()
                    .ok_or_else(|| ConfigError::new("rds.config_source", "required"))?;
                RouteSource::Rds {
                    name: rds.route_config_name.clone(),
                    source: super::listener::ConfigSourceRef::from_proto(source)
                        .map_err(|e| e.within("rds.config_source"))?,
                }
            }
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Arc::new(
                RouteConfig::from_proto(rc).map_err(|e| e.within("route_config"))?,
            )),
            _ => {
                return Err(ConfigError::new(
                    "route_specifier",
                    "rds or route_config is required",
                ))
            }
        };
        let mut http_filters = Vec::new();
        let mut suppress_envoy_headers = false;
        for (i, f) in h.http_filters.iter().enumerate() {
            let path = format!("http_filters[{i}]");
            if f.disabled {
                continue;
            }
            let type_name = match &f.config_type {
                Some(pb::http_filter::ConfigType::TypedConfig(any)) => any
                    .type_url
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => String::new(),
                Some(_) => return Err(ConfigError::new(path, "config_discovery is not supported")),
            };
            if type_name == ROUTER_TYPE
                || (type_name.is_empty() && f.name == "envoy.filters.http.router")
            {
                if let Some(pb::http_filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    let router: sentinel_proto::pb::envoy::extensions::filters::http::router::v3::Router =
                        sentinel_proto::from_any(any).map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
                    suppress_envoy_headers = router.suppress_envoy_headers;
                }
                http_filters.push(HttpFilter::Router);
            } else if let (
                local_ratelimit::TYPE,
                Some(pb::http_filter::ConfigType::TypedConfig(any)),
            ) = (type_name.as_str(), &f.config_type)
            {
                let proto = sentinel_proto::from_any(any)
                    .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
                let config = LocalRateLimit::from_proto(&proto)
                    .map_err(|e| e.within(&format!("{path}.typed_config")))?;
                http_filters.push(HttpFilter::LocalRateLimit {
                    name: f.name.clone(),
                    config: Arc::new(config),
                });
            } else if let (ratelimit::TYPE, Some(pb::http_filter::ConfigType::TypedConfig(any))) =
                (type_name.as_str(), &f.config_type)
            {
                let proto = sentinel_proto::from_any(any)
                    .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
                let config = RateLimitFilter::from_proto(&proto)
                    .map_err(|e| e.within(&format!("{path}.typed_config")))?;
                http_filters.push(HttpFilter::RateLimit {
                    name: f.name.clone(),
                    config: Arc::new(config),
                });
            } else if let (ext_proc::TYPE, Some(pb::http_filter::ConfigType::TypedConfig(any))) =
                (type_name.as_str(), &f.config_type)
            {
                let proto = sentinel_proto::from_any(any)
                    .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
                let config = ExtProc::from_proto(&proto)
                    .map_err(|e| e.within(&format!("{path}.typed_config")))?;
                http_filters.push(HttpFilter::ExtProc {
                    name: f.name.clone(),
                    config: Arc::new(config),
                });
            } else if f.is_optional {
                tracing::info!(filter = %f.name, "skipping optional HTTP filter that Sentinel does not implement");
            } else {
                return Err(ConfigError::new(
                    path,
                    format!("HTTP filter '{}' ({type_name}) is not supported", f.name),
                ));
            }
        }
        if !matches!(http_filters.last(), Some(HttpFilter::Router)) {
            return Err(ConfigError::new(
                "http_filters",
                "the router filter must be the last filter",
            ));
        }
        let common = h.common_http_protocol_options.as_ref();
        let underscores = common.map_or(0, |c| c.headers_with_underscores_action);
        let server_header =
            match ServerHeaderTransformation::try_from(h.server_header_transformation) {
                Ok(ServerHeaderTransformation::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
                Ok(ServerHeaderTransformation::PassThrough) => ServerHeader::PassThrough,
                _ => ServerHeader::Overwrite,
            };
        // Internal clients would have their x-envoy-* control headers obeyed; Sentinel treats
        // every client as external, which is Envoy's default (an empty internal_address_config).
        if h.internal_address_config
            .as_ref()
            .is_some_and(|c| c.unix_sockets || !c.cidr_ranges.is_empty())
        {
            return Err(ConfigError::new(
                "internal_address_config",
                "internal addresses are not supported (every client is external)",
            ));
        }
        let upgrades = h
            .upgrade_configs
            .iter()
            .enumerate()
            .map(|(i, u)| {
                super::route::upgrade(
                    &u.upgrade_type,
                    u.enabled.as_ref(),
                    &format!("upgrade_configs[{i}]"),
                )
            })
            .try_collect_exact()?;
        let max_request_headers_kb = h.max_request_headers_kb.as_ref().map_or(60, |v| v.value);
        if !(1..=8192).contains(&max_request_headers_kb) {
            return Err(ConfigError::new(
                "max_request_headers_kb",
                "must be in 1..8192",
            ));
        }
        Ok(Self {
            upgrades,
            stat_prefix: h.stat_prefix.clone(),
            codec,
            routes,
            http_filters,
            suppress_envoy_headers,
            server_name: if h.server_name.is_empty() {
                "envoy".into()
            } else {
                h.server_name.clone()
            },
            server_header,
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
            xff_num_trusted_hops: h.xff_num_trusted_hops,
            skip_xff_append: h.skip_xff_append,
            via: (!h.via.is_empty()).then(|| h.via.clone()),
            generate_request_id: h.generate_request_id.as_ref().is_none_or(|b| b.value),
            preserve_external_request_id: h.preserve_external_request_id,
            always_set_request_id_in_response: h.always_set_request_id_in_response,
            normalize_path: h.normalize_path.as_ref().is_some_and(|b| b.value),
            merge_slashes: h.merge_slashes,
            request_timeout: timeout_or(h.request_timeout.as_ref(), None, "request_timeout")?,
            stream_idle_timeout: timeout_or(
                h.stream_idle_timeout.as_ref(),
                Some(Duration::from_secs(300)),
                "stream_idle_timeout",
            )?,
            idle_timeout: timeout_or(
                common.and_then(|c| c.idle_timeout.as_ref()),
                Some(Duration::from_secs(3600)),
                "common_http_protocol_options.idle_timeout",
            )?,
            max_request_headers_kb,
            max_headers_count: common
                .and_then(|c| c.max_headers_count.as_ref())
                .map_or(100, |v| v.value),
            accept_http_10: h
                .http_protocol_options
                .as_ref()
                .is_some_and(|o| o.accept_http_10),
            reject_underscore_headers: underscores == 1,
            drop_underscore_headers: underscores == 2,
        })
    }
}
