//! `ClusterLoadAssignment`: the endpoints of a cluster, from EDS or inline.

use std::net::SocketAddr;

use sentinel_proto::pb::envoy::config::core::v3 as core_pb;
use sentinel_proto::pb::envoy::config::endpoint::v3 as pb;

use super::{ConfigError, Result};

/// Where an endpoint lives: an IP address, or a name that a DNS cluster resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Envoy's `HealthStatus` as the load balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Degraded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    /// `Endpoint.hostname`: the Host that `auto_host_rewrite` sends to this endpoint.
    pub hostname: Option<String>,
    pub weight: u32,
    pub health: Health,
    pub priority: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLoadAssignment {
    pub cluster_name: String,
    pub endpoints: Vec<Endpoint>,
}

impl ClusterLoadAssignment {
    /// `allow_names`: DNS clusters carry host names; EDS and STATIC need IP addresses.
    pub fn from_proto(cla: &pb::ClusterLoadAssignment, allow_names: bool) -> Result<Self> {
        // Exactly as many as given: an assignment lives as long as it serves (a growing Vec
        // would hold room for four endpoints where EDS commonly sends one).
        let count = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
        let mut endpoints = Vec::with_capacity(count);
        for (li, locality) in cla.endpoints.iter().enumerate() {
            let lpath = format!("endpoints[{li}]");
            if locality.lb_config.is_some() {
                return Err(ConfigError::new(lpath, "LEDS is not supported"));
            }
            for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
                let path = format!("{lpath}.lb_endpoints[{ei}]");
                let Some(pb::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier
                else {
                    return Err(ConfigError::new(path, "an endpoint is required"));
                };
                let addr = ep.address.as_ref().ok_or_else(|| {
                    ConfigError::new(format!("{path}.endpoint.address"), "required")
                })?;
                let address =
                    endpoint_address(addr, allow_names, &format!("{path}.endpoint.address"))?;
                let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
                if weight == 0 {
                    return Err(ConfigError::new(
                        format!("{path}.load_balancing_weight"),
                        "must be at least 1",
                    ));
                }
                let health = match core_pb::HealthStatus::try_from(lb.health_status) {
                    Ok(core_pb::HealthStatus::Unhealthy)
                    | Ok(core_pb::HealthStatus::Draining)
                    | Ok(core_pb::HealthStatus::Timeout) => Health::Unhealthy,
                    Ok(core_pb::HealthStatus::Degraded) => Health::Degraded,
                    _ => Health::Healthy,
                };
                endpoints.push(Endpoint {
                    address,
                    hostname: (!ep.hostname.is_empty()).then(|| ep.hostname.clone()),
                    weight,
                    health,
                    priority: locality.priority,
                });
            }
        }
        Ok(Self {
            cluster_name: cla.cluster_name.clone(),
            endpoints,
        })
    }
}

fn endpoint_address(
    a: &core_pb::Address,
    allow_names: bool,
    path: &str,
) -> Result<EndpointAddress> {
    use core_pb::{address, socket_address};
    let Some(address::Address::SocketAddress(sa)) = &a.address else {
        return Err(ConfigError::new(path, "only socket_address is supported"));
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) if (1..=65535).contains(&p) => p as u16,
        _ => return Err(ConfigError::new(path, "port_value (1..65535) is required")),
    };
    match sa.address.parse() {
        Ok(ip) => Ok(EndpointAddress::Ip(SocketAddr::new(ip, port))),
        Err(_) if allow_names && !sa.address.is_empty() => Ok(EndpointAddress::Dns {
            host: sa.address.clone(),
            port,
        }),
        Err(_) => Err(ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("'{}' is not an IP address", sa.address),
        )),
    }
}
