//! Validated config: plain Rust types converted from Envoy's xDS protos.
//!
//! Protos stop here. Every resource that reaches the data plane went through one of the
//! `from_proto` conversions below, which check the field table in [`fields`] first (so a field
//! whose absence would change behaviour is refused, not silently dropped) and then build
//! types that need no further checks at request time (regexes compiled, defaults applied).

// Envoy still honours its deprecated fields (`append`, `total_weight`, `path`), so we do too.
#![allow(deprecated)]

pub mod cluster;
pub mod endpoint;
pub mod ext_proc;
pub mod ext_proc_attributes;
pub mod fields;
pub mod hcm;
pub mod header_mutation;
pub mod listener;
pub mod local_ratelimit;
pub mod matcher;
pub mod ratelimit;
pub mod route;

use std::time::Duration;

use sentinel_proto::pb::google::protobuf as pbw;

pub use cluster::Cluster;
pub use endpoint::ClusterLoadAssignment;
pub use listener::Listener;
pub use route::RouteConfig;

/// A resource that cannot be accepted. The message names the field path and the reason, and
/// is what goes into a NACK's `error_detail`, prefixed by the resource name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// Dotted field path inside the resource (`filter_chains[0].filters[0].typed_config`).
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the path with the enclosing field, as errors bubble up.
    pub fn within(mut self, outer: &str) -> Self {
        self.path = if self.path.is_empty() {
            outer.to_string()
        } else if self.path.starts_with('[') {
            format!("{outer}{}", self.path)
        } else {
            format!("{outer}.{}", self.path)
        };
        self
    }
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// Collects converted items into a `Vec` of exactly their count.
///
/// `collect::<Result<Vec<_>>>()` cannot see the count through its error shunt, so it starts
/// with room for four items and grows by doubling: a virtual host's one-route `Vec<Route>`
/// held three empty 400-byte slots, 12 MB over the 10,000 routes of the scale benchmark.
/// Config lives as long as it serves, so its vectors should be no larger than their items.
pub(crate) trait TryCollectExact<T>: ExactSizeIterator<Item = Result<T>> + Sized {
    fn try_collect_exact(self) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.len());
        for item in self {
            out.push(item?);
        }
        Ok(out)
    }
}

impl<T, I: ExactSizeIterator<Item = Result<T>>> TryCollectExact<T> for I {}

/// Converts a proto Duration; negative or out-of-range values are config errors.
pub(crate) fn duration(d: &pbw::Duration, path: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(ConfigError::new(path, "duration out of range"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional proto Duration with Envoy's convention that 0 disables the timeout.
pub(crate) fn timeout_or(
    d: Option<&pbw::Duration>,
    default: Option<Duration>,
    path: &str,
) -> Result<Option<Duration>> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = duration(d, path)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// Reads a `SocketAddress` into a std address (names are not resolved here).
pub(crate) fn socket_addr(
    a: &sentinel_proto::pb::envoy::config::core::v3::Address,
    path: &str,
) -> Result<std::net::SocketAddr> {
    use sentinel_proto::pb::envoy::config::core::v3::{address, socket_address};
    let Some(address::Address::SocketAddress(sa)) = &a.address else {
        return Err(ConfigError::new(path, "only socket_address is supported"));
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
        _ => return Err(ConfigError::new(path, "port_value (0..65535) is required")),
    };
    let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("'{}' is not an IP address", sa.address),
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, port))
}
