//! The Envoy bootstrap, read exactly as Envoy reads it.
//!
//! The file (YAML or JSON, proto3 JSON mapping) becomes the real `Bootstrap` message through
//! the descriptor pool; `--config-yaml` is merged over it with protobuf merge semantics
//! (messages merge, repeated fields append, scalars replace), as Envoy's `MergeFrom` does.

use std::net::SocketAddr;
use std::path::Path;

use sentinel_proto::pb::envoy::config::bootstrap::v3 as pb;
use sentinel_proto::pb::envoy::config::core::v3 as core_pb;
use sentinel_proto::pb::google::protobuf::Any;

use crate::config::listener::ConfigSourceRef;
use crate::config::{socket_addr, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid bootstrap: {0}")]
    Parse(#[from] sentinel_proto::JsonError),
    #[error("invalid bootstrap: {0}")]
    Field(#[from] ConfigError),
    #[error("invalid bootstrap: no configuration given (use -c or --config-yaml)")]
    Empty,
}

/// The node identity sent to the control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub zone: String,
}

/// Command-line overrides of the bootstrap (`--service-node` and friends).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node_id: Option<String>,
    pub cluster: Option<String>,
    pub zone: Option<String>,
}

/// The aggregated stream's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsConfig {
    pub cluster: String,
    pub delta: bool,
}

/// The bootstrap, validated. Static resources stay as `Any` so that they take the same
/// validation path as xDS resources (and show in config_dump as received).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub node: NodeInfo,
    /// The node as sent on the wire (metadata and all).
    pub node_proto: core_pb::Node,
    pub admin: Option<SocketAddr>,
    pub static_resources: Vec<Any>,
    pub ads: Option<AdsConfig>,
    pub lds: Option<ConfigSourceRef>,
    pub cds: Option<ConfigSourceRef>,
    /// The bootstrap as JSON, for config_dump.
    pub json: serde_json::Value,
}

/// Proto-style merge of two JSON documents: objects merge, arrays append, scalars replace.
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    use serde_json::Value;
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

impl Bootstrap {
    /// Reads `-c path` and/or `--config-yaml text`.
    pub fn load(
        path: Option<&Path>,
        config_yaml: Option<&str>,
        overrides: &Overrides,
    ) -> Result<Self, BootstrapError> {
        let mut json = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| BootstrapError::Io {
                    path: p.display().to_string(),
                    source,
                })?;
                sentinel_proto::parse_text(&text)?
            }
            None => serde_json::Value::Object(Default::default()),
        };
        if let Some(y) = config_yaml {
            merge(&mut json, sentinel_proto::parse_text(y)?);
        }
        if path.is_none() && config_yaml.is_none() {
            return Err(BootstrapError::Empty);
        }
        let proto: pb::Bootstrap = sentinel_proto::from_json(&json)?;
        Self::from_proto(proto, overrides, json)
    }

    fn from_proto(
        b: pb::Bootstrap,
        overrides: &Overrides,
        json: serde_json::Value,
    ) -> Result<Self, BootstrapError> {
        let mut node_proto = b.node.clone().unwrap_or_default();
        if let Some(id) = &overrides.node_id {
            node_proto.id = id.clone();
        }
        if let Some(c) = &overrides.cluster {
            node_proto.cluster = c.clone();
        }
        if let Some(z) = &overrides.zone {
            node_proto
                .locality
                .get_or_insert_with(Default::default)
                .zone = z.clone();
        }
        node_proto.user_agent_name = "envoy".into();
        node_proto.user_agent_version_type =
            Some(core_pb::node::UserAgentVersionType::UserAgentVersion(
                format!("sentinel/{}", env!("CARGO_PKG_VERSION")),
            ));
        let node = NodeInfo {
            id: node_proto.id.clone(),
            cluster: node_proto.cluster.clone(),
            zone: node_proto
                .locality
                .as_ref()
                .map(|l| l.zone.clone())
                .unwrap_or_default(),
        };
        let admin = match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
            Some(a) => Some(socket_addr(a, "admin.address")?),
            None => None,
        };
        let mut static_resources = Vec::new();
        if let Some(sr) = &b.static_resources {
            if !sr.secrets.is_empty() {
                return Err(ConfigError::new(
                    "static_resources.secrets",
                    "TLS secrets are not supported yet",
                )
                .into());
            }
            static_resources.extend(sr.clusters.iter().map(sentinel_proto::to_any));
            static_resources.extend(sr.listeners.iter().map(sentinel_proto::to_any));
        }
        let (mut ads, mut lds, mut cds) = (None, None, None);
        if let Some(dr) = &b.dynamic_resources {
            if let Some(a) = &dr.ads_config {
                let src = ConfigSourceRef::from_proto(&core_pb::ConfigSource {
                    config_source_specifier: Some(
                        core_pb::config_source::ConfigSourceSpecifier::ApiConfigSource(a.clone()),
                    ),
                    ..Default::default()
                })
                .map_err(|e| e.within("dynamic_resources.ads_config"))?;
                if let crate::config::listener::SourceKind::Grpc { cluster, delta } = src.kind {
                    ads = Some(AdsConfig { cluster, delta });
                }
            }
            lds = dr
                .lds_config
                .as_ref()
                .map(|c| {
                    ConfigSourceRef::from_proto(c)
                        .map_err(|e| e.within("dynamic_resources.lds_config"))
                })
                .transpose()?;
            cds = dr
                .cds_config
                .as_ref()
                .map(|c| {
                    ConfigSourceRef::from_proto(c)
                        .map_err(|e| e.within("dynamic_resources.cds_config"))
                })
                .transpose()?;
            for (field, src) in [("lds_config", &lds), ("cds_config", &cds)] {
                if src
                    .as_ref()
                    .is_some_and(|s| s.kind == crate::config::listener::SourceKind::Ads)
                    && ads.is_none()
                {
                    return Err(ConfigError::new(
                        format!("dynamic_resources.{field}"),
                        "uses ads but dynamic_resources.ads_config is not set",
                    )
                    .into());
                }
            }
        }
        Ok(Self {
            node,
            node_proto,
            admin,
            static_resources,
            ads,
            lds,
            cds,
            json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_yaml_merges_over_file_and_overrides_apply() {
        let dir = std::env::temp_dir().join(format!("sentinel-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.yaml");
        std::fs::write(&path, "node: { id: a, cluster: c }\nadmin: { address: { socket_address: { address: 127.0.0.1, port_value: 9901 } } }\n").unwrap();
        let b = Bootstrap::load(
            Some(&path),
            Some("node: { id: b }"),
            &Overrides {
                zone: Some("z".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            b.node,
            NodeInfo {
                id: "b".into(),
                cluster: "c".into(),
                zone: "z".into()
            }
        );
        assert_eq!(b.admin, Some("127.0.0.1:9901".parse().unwrap()));
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Bootstrap::load(
            None,
            Some("dynamic_resources: { lds_config: { bogus: 1 } }"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("dynamic_resources.lds_config"),
            "{err}"
        );
    }

    #[test]
    fn ads_source_without_ads_config_is_refused() {
        let err = Bootstrap::load(
            None,
            Some("dynamic_resources: { lds_config: { ads: {} } }"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ads_config is not set"), "{err}");
    }
}
