//! `Cluster`: how to reach an upstream service.

use std::time::Duration;

use sentinel_proto::pb::envoy::config::cluster::v3 as pb;
use sentinel_proto::pb::envoy::extensions::upstreams::http::v3 as http_opts;

use super::endpoint::ClusterLoadAssignment;
use super::listener::ConfigSourceRef;
use super::{duration, ConfigError, Result};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    /// Endpoints arrive by EDS under this name (`service_name`, or the cluster name).
    Eds {
        service_name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choice_count: u32 },
}

/// `dns_lookup_family`: which resolved addresses a DNS cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    /// AUTO and V6 preferred: IPv6 if any, else IPv4.
    PreferV6,
    V4Only,
    V6Only,
    /// V4_PREFERRED: IPv4 if any, else IPv6.
    PreferV4,
    All,
}

impl DnsFamily {
    /// Filters resolved addresses as Envoy's resolver would.
    pub fn select(self, addrs: Vec<std::net::SocketAddr>) -> Vec<std::net::SocketAddr> {
        let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv4());
        match self {
            Self::V4Only => v4,
            Self::V6Only => v6,
            Self::PreferV6 if !v6.is_empty() => v6,
            Self::PreferV6 => v4,
            Self::PreferV4 if !v4.is_empty() => v4,
            Self::PreferV4 => v6,
            Self::All => v4.into_iter().chain(v6).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// Upstream connection idle timeout (`common_http_protocol_options.idle_timeout`, 1 h).
    pub idle_timeout: Option<Duration>,
    pub dns_refresh_rate: Duration,
    pub dns_family: DnsFamily,
    /// Inline endpoints (STATIC and DNS clusters).
    pub load_assignment: Option<ClusterLoadAssignment>,
    /// Where an EDS cluster's endpoints come from (ADS when `eds_config` is absent).
    pub eds_source: Option<ConfigSourceRef>,
}

impl Cluster {
    pub fn from_proto(c: &pb::Cluster) -> Result<Self> {
        if c.name.is_empty() {
            return Err(ConfigError::new("name", "cluster name is required"));
        }
        use pb::cluster::{ClusterDiscoveryType, DiscoveryType};
        let kind = match &c.cluster_discovery_type {
            None => DiscoveryType::Static,
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
                .map_err(|_| ConfigError::new("type", format!("unknown discovery type {t}")))?,
            Some(ClusterDiscoveryType::ClusterType(_)) => {
                return Err(ConfigError::new(
                    "cluster_type",
                    "custom cluster types are not supported",
                ))
            }
        };
        let discovery = match kind {
            DiscoveryType::Static => Discovery::Static,
            DiscoveryType::StrictDns => Discovery::StrictDns,
            DiscoveryType::LogicalDns => Discovery::LogicalDns,
            DiscoveryType::Eds => {
                let eds = c.eds_cluster_config.as_ref();
                let service_name = eds
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                Discovery::Eds { service_name }
            }
            DiscoveryType::OriginalDst => {
                return Err(ConfigError::new("type", "ORIGINAL_DST is not supported"))
            }
        };
        let lb_policy = match pb::cluster::LbPolicy::try_from(c.lb_policy) {
            Ok(pb::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
            Ok(pb::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest {
                choice_count: match &c.lb_config {
                    Some(pb::cluster::LbConfig::LeastRequestLbConfig(l)) => {
                        l.choice_count.as_ref().map_or(2, |v| v.value.max(2))
                    }
                    _ => 2,
                },
            },
            Ok(other) => {
                return Err(ConfigError::new(
                    "lb_policy",
                    format!("{} is not supported", other.as_str_name()),
                ))
            }
            Err(_) => return Err(ConfigError::new("lb_policy", "unknown policy")),
        };
        if !matches!(
            c.lb_config,
            None | Some(pb::cluster::LbConfig::LeastRequestLbConfig(_))
        ) {
            return Err(ConfigError::new(
                "lb_config",
                "only least_request_lb_config is supported",
            ));
        }
        let connect_timeout = c
            .connect_timeout
            .as_ref()
            .map(|d| duration(d, "connect_timeout"))
            .transpose()?
            .unwrap_or(Duration::from_secs(5));
        let (protocol, idle_timeout) = protocol_options(c)?;
        let load_assignment = match (&c.load_assignment, &discovery) {
            (Some(_), Discovery::Eds { .. }) => None,
            (Some(la), d) => Some(
                ClusterLoadAssignment::from_proto(la, *d != Discovery::Static)
                    .map_err(|e| e.within("load_assignment"))?,
            ),
            (None, Discovery::Eds { .. }) => None,
            (None, _) => Some(ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                endpoints: vec![],
            }),
        };
        if matches!(discovery, Discovery::LogicalDns)
            && load_assignment
                .as_ref()
                .is_some_and(|la| la.endpoints.len() != 1)
        {
            return Err(ConfigError::new(
                "load_assignment",
                "LOGICAL_DNS clusters must have a single endpoint",
            ));
        }
        let dns_refresh_rate = c
            .dns_refresh_rate
            .as_ref()
            .map(|d| duration(d, "dns_refresh_rate"))
            .transpose()?
            .unwrap_or(Duration::from_secs(5));
        let dns_family = match pb::cluster::DnsLookupFamily::try_from(c.dns_lookup_family) {
            Ok(pb::cluster::DnsLookupFamily::V4Only) => DnsFamily::V4Only,
            Ok(pb::cluster::DnsLookupFamily::V6Only) => DnsFamily::V6Only,
            Ok(pb::cluster::DnsLookupFamily::V4Preferred) => DnsFamily::PreferV4,
            Ok(pb::cluster::DnsLookupFamily::All) => DnsFamily::All,
            _ => DnsFamily::PreferV6,
        };
        let eds_source = match &discovery {
            Discovery::Eds { .. } => Some(
                match c
                    .eds_cluster_config
                    .as_ref()
                    .and_then(|e| e.eds_config.as_ref())
                {
                    Some(src) => ConfigSourceRef::from_proto(src)
                        .map_err(|e| e.within("eds_cluster_config.eds_config"))?,
                    None => ConfigSourceRef {
                        kind: super::listener::SourceKind::Ads,
                        initial_fetch_timeout: Some(Duration::from_secs(15)),
                    },
                },
            ),
            _ => None,
        };
        Ok(Self {
            name: c.name.clone(),
            eds_source,
            dns_family,
            discovery,
            lb_policy,
            connect_timeout,
            protocol,
            idle_timeout,
            dns_refresh_rate,
            load_assignment,
        })
    }

    /// The EDS resource name this cluster waits for, if it is an EDS cluster.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }
}

fn protocol_options(c: &pb::Cluster) -> Result<(UpstreamProtocol, Option<Duration>)> {
    let mut protocol = UpstreamProtocol::Http1;
    let mut idle = Some(Duration::from_secs(3600));
    for (key, any) in &c.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[{key:?}]");
        if any.type_url.rsplit('/').next() != Some(HTTP_PROTOCOL_OPTIONS) {
            return Err(ConfigError::new(
                path,
                format!("unsupported options type {}", any.type_url),
            ));
        }
        let opts: http_opts::HttpProtocolOptions = sentinel_proto::from_any(any)
            .map_err(|e| ConfigError::new(path.clone(), e.to_string()))?;
        use http_opts::http_protocol_options::{
            explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
        };
        match &opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => {
                protocol = match e.protocol_config {
                    Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                    Some(ProtocolConfig::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
                    _ => {
                        return Err(ConfigError::new(
                            format!("{path}.explicit_http_config"),
                            "only HTTP/1.1 and HTTP/2 are supported",
                        ))
                    }
                }
            }
            None => {}
            Some(_) => {
                return Err(ConfigError::new(
                    path,
                    "only explicit_http_config is supported (not use_downstream_protocol_config or auto_config)",
                ))
            }
        }
        if let Some(common) = &opts.common_http_protocol_options {
            idle = super::timeout_or(
                common.idle_timeout.as_ref(),
                idle,
                &format!("{path}.common_http_protocol_options.idle_timeout"),
            )?;
        }
    }
    if c.http2_protocol_options.is_some() {
        protocol = UpstreamProtocol::Http2;
    }
    Ok((protocol, idle))
}
