//! `Listener`: an address, its filter chains, and the config sources they point at.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sentinel_proto::pb::envoy::config::core::v3 as core_pb;
use sentinel_proto::pb::envoy::config::listener::v3 as pb;
use sentinel_proto::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;

use super::hcm::{HttpConnectionManager, HCM_TYPE};
use super::{socket_addr, timeout_or, ConfigError, Result, TryCollectExact};

/// How a subscription is transported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// On the aggregated stream.
    Ads,
    /// Its own stream to a gRPC cluster; `delta` for DELTA_GRPC.
    Grpc { cluster: String, delta: bool },
    /// A file of `DiscoveryResponse` JSON/YAML, reloaded when it changes.
    Path(PathBuf),
}

/// A `ConfigSource`: where a resource comes from and how long to wait for it at first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSourceRef {
    pub kind: SourceKind,
    /// None: wait forever. Envoy's default is 15 s.
    pub initial_fetch_timeout: Option<Duration>,
}

impl ConfigSourceRef {
    pub fn from_proto(c: &core_pb::ConfigSource) -> Result<Self> {
        use core_pb::api_config_source::ApiType;
        use core_pb::config_source::ConfigSourceSpecifier as S;
        let kind = match &c.config_source_specifier {
            Some(S::Ads(_)) => SourceKind::Ads,
            Some(S::Path(p)) => SourceKind::Path(PathBuf::from(p)),
            Some(S::PathConfigSource(p)) => SourceKind::Path(PathBuf::from(&p.path)),
            Some(S::ApiConfigSource(api)) => {
                let delta = match ApiType::try_from(api.api_type) {
                    Ok(ApiType::Grpc) => false,
                    Ok(ApiType::DeltaGrpc) => true,
                    _ => {
                        return Err(ConfigError::new(
                            "api_config_source.api_type",
                            "only GRPC and DELTA_GRPC are supported",
                        ))
                    }
                };
                let cluster = api
                    .grpc_services
                    .first()
                    .and_then(|g| match &g.target_specifier {
                        Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(e)) => {
                            Some(e.cluster_name.clone())
                        }
                        _ => None,
                    })
                    .ok_or_else(|| {
                        ConfigError::new(
                            "api_config_source.grpc_services",
                            "one envoy_grpc service is required",
                        )
                    })?;
                SourceKind::Grpc { cluster, delta }
            }
            _ => {
                return Err(ConfigError::new(
                    "config_source_specifier",
                    "ads, api_config_source or path_config_source is required",
                ))
            }
        };
        Ok(Self {
            kind,
            initial_fetch_timeout: timeout_or(
                c.initial_fetch_timeout.as_ref(),
                Some(Duration::from_secs(15)),
                "initial_fetch_timeout",
            )?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CidrRange {
    pub addr: IpAddr,
    pub len: u8,
}

impl CidrRange {
    fn from_proto(c: &core_pb::CidrRange, path: &str) -> Result<Self> {
        let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
            ConfigError::new(path, format!("'{}' is not an IP address", c.address_prefix))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.as_ref().map_or(max, |v| v.value);
        if len > max {
            return Err(ConfigError::new(
                path,
                format!("prefix_len {len} is too long"),
            ));
        }
        Ok(Self {
            addr,
            len: len as u8,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceType {
    Any,
    SameIpOrLoopback,
    External,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilterChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<CidrRange>,
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<CidrRange>,
    pub source_ports: Vec<u16>,
}

impl FilterChainMatch {
    fn from_proto(m: Option<&pb::FilterChainMatch>) -> Result<Self> {
        let Some(m) = m else {
            return Ok(Self {
                destination_port: None,
                prefix_ranges: vec![],
                direct_source_prefix_ranges: vec![],
                source_type: SourceType::Any,
                source_prefix_ranges: vec![],
                source_ports: vec![],
            });
        };
        let ranges = |v: &[core_pb::CidrRange], f: &str| {
            v.iter()
                .enumerate()
                .map(|(i, c)| CidrRange::from_proto(c, &format!("{f}[{i}]")))
                .try_collect_exact()
        };
        let destination_port = match m.destination_port.as_ref().map(|p| p.value) {
            None => None,
            Some(p @ 1..=65535) => Some(p as u16),
            Some(p) => {
                return Err(ConfigError::new(
                    "destination_port",
                    format!("{p} is not a port"),
                ))
            }
        };
        Ok(Self {
            destination_port,
            prefix_ranges: ranges(&m.prefix_ranges, "prefix_ranges")?,
            direct_source_prefix_ranges: ranges(
                &m.direct_source_prefix_ranges,
                "direct_source_prefix_ranges",
            )?,
            source_type: match m.source_type {
                1 => SourceType::SameIpOrLoopback,
                2 => SourceType::External,
                _ => SourceType::Any,
            },
            source_prefix_ranges: ranges(&m.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports: m
                .source_ports
                .iter()
                .map(|p| {
                    u16::try_from(*p)
                        .map_err(|_| ConfigError::new("source_ports", format!("{p} is not a port")))
                })
                .try_collect_exact()?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct FilterChain {
    pub name: String,
    pub matcher: FilterChainMatch,
    pub hcm: HttpConnectionManager,
}

impl FilterChain {
    fn from_proto(fc: &pb::FilterChain) -> Result<Self> {
        let matcher = FilterChainMatch::from_proto(fc.filter_chain_match.as_ref())
            .map_err(|e| e.within("filter_chain_match"))?;
        if fc.transport_socket.is_some() {
            return Err(ConfigError::new(
                "transport_socket",
                "TLS is not supported yet",
            ));
        }
        let [filter] = fc.filters.as_slice() else {
            return Err(ConfigError::new(
                "filters",
                "exactly one network filter (http_connection_manager) is required",
            ));
        };
        let hcm = match &filter.config_type {
            Some(pb::filter::ConfigType::TypedConfig(any)) if any.type_url.ends_with(HCM_TYPE) => {
                let h: hcm_pb::HttpConnectionManager = sentinel_proto::from_any(any)
                    .map_err(|e| ConfigError::new("filters[0].typed_config", e.to_string()))?;
                HttpConnectionManager::from_proto(&h)
                    .map_err(|e| e.within("filters[0].typed_config"))?
            }
            _ => {
                return Err(ConfigError::new(
                    "filters[0]",
                    format!(
                        "network filter '{}' is not supported (only http_connection_manager)",
                        filter.name
                    ),
                ))
            }
        };
        Ok(Self {
            name: fc.name.clone(),
            matcher,
            hcm,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainType {
    Default,
    ModifyOnly,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub filter_chains: Vec<FilterChain>,
    pub default_filter_chain: Option<FilterChain>,
    pub drain_type: DrainType,
    pub buffer_limit: u32,
}

impl Listener {
    pub fn from_proto(l: &pb::Listener) -> Result<Self> {
        if l.name.is_empty() {
            return Err(ConfigError::new("name", "listener name is required"));
        }
        let address = socket_addr(
            l.address
                .as_ref()
                .ok_or_else(|| ConfigError::new("address", "required"))?,
            "address",
        )?;
        let filter_chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, fc)| {
                FilterChain::from_proto(fc).map_err(|e| e.within(&format!("filter_chains[{i}]")))
            })
            .try_collect_exact()?;
        for (i, fc) in filter_chains.iter().enumerate() {
            if filter_chains[..i].iter().any(|o| o.matcher == fc.matcher) {
                return Err(ConfigError::new(
                    format!("filter_chains[{i}]"),
                    format!("multiple filter chains with the same matching rules are defined (listener {})", l.name),
                ));
            }
        }
        let default_filter_chain = l
            .default_filter_chain
            .as_ref()
            .map(|fc| FilterChain::from_proto(fc).map_err(|e| e.within("default_filter_chain")))
            .transpose()?;
        // Such a listener only takes connections redirected from another (original_dst),
        // which Sentinel does not do; binding its port instead would take it from its owner.
        if l.bind_to_port.as_ref().is_some_and(|b| !b.value) {
            return Err(ConfigError::new(
                "bind_to_port",
                "false is not supported (listeners reached through original_dst redirection)",
            ));
        }
        if filter_chains.is_empty() && default_filter_chain.is_none() {
            return Err(ConfigError::new(
                "filter_chains",
                "at least one filter chain is required",
            ));
        }
        Ok(Self {
            name: l.name.clone(),
            address,
            filter_chains,
            default_filter_chain,
            drain_type: if l.drain_type == 1 {
                DrainType::ModifyOnly
            } else {
                DrainType::Default
            },
            buffer_limit: l
                .per_connection_buffer_limit_bytes
                .as_ref()
                .map_or(1 << 20, |v| v.value),
        })
    }

    /// Every route configuration name this listener waits for, with its source.
    pub fn rds_names(&self) -> impl Iterator<Item = (&str, &ConfigSourceRef)> {
        self.filter_chains
            .iter()
            .chain(&self.default_filter_chain)
            .filter_map(|fc| match &fc.hcm.routes {
                super::hcm::RouteSource::Rds { name, source } => Some((name.as_str(), source)),
                _ => None,
            })
    }
}
