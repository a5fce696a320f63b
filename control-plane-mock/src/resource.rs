//! Type URLs, resource names and resource versions: the few facts about xDS resources the
//! server needs without understanding the resources themselves.

use prost_reflect::{DynamicMessage, Value};
use sentinel_proto::pb::google::protobuf::Any;

/// `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Whether a type may be subscribed by wildcard (`*` or the legacy empty name list). The xDS
/// protocol allows it only for LDS and CDS; RDS and EDS clients always name what they want,
/// and treating their empty list as "everything" would push routes nobody references.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// The order in which a snapshot change is pushed on one ADS stream: make-before-break
/// (clusters and their endpoints before the listeners and routes that point at them), then
/// every other type in type URL order.
pub fn push_rank(type_url: &str) -> usize {
    match type_url {
        CLUSTER => 0,
        ENDPOINT => 1,
        LISTENER => 2,
        ROUTE => 3,
        _ => 4,
    }
}

/// The name a resource is known by in xDS: `cluster_name` for a ClusterLoadAssignment, `name`
/// for everything else that has one. `None` when the payload does not decode or has no name
/// field, in which case the caller must give the name explicitly.
pub fn resource_name(any: &Any) -> Option<String> {
    let full_name = any.type_url.rsplit_once('/').map(|(_, n)| n)?;
    let desc = sentinel_proto::message(full_name)?;
    let message = DynamicMessage::decode(desc, any.value.as_slice()).ok()?;
    let field = name_field(&any.type_url);
    match message.get_field_by_name(field).as_deref() {
        Some(Value::String(name)) => Some(name.clone()),
        _ => None,
    }
}

/// The same name read from the JSON form, before the resource is packed: cheaper, and it
/// works for resources whose payload is deliberately broken.
pub fn json_resource_name(type_url: &str, value: &serde_json::Value) -> Option<String> {
    value
        .get(name_field(type_url))?
        .as_str()
        .map(str::to_string)
}

fn name_field(type_url: &str) -> &'static str {
    if type_url.ends_with(".ClusterLoadAssignment") {
        "cluster_name"
    } else {
        "name"
    }
}

/// A stable 64-bit FNV-1a hash. Per-resource versions in delta xDS must survive a control
/// plane restart (the client quotes them back in `initial_resource_versions`), so the std
/// `DefaultHasher`, whose algorithm is unspecified, will not do.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate the parts so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The per-resource version sent in delta xDS: a hash of the type URL and the payload bytes,
/// so an unchanged resource keeps its version across snapshots and restarts.
pub fn resource_version(any: &Any) -> String {
    format!(
        "{:016x}",
        fnv1a(&[any.type_url.as_bytes(), any.value.as_slice()])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_proto::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment,
    };

    #[test]
    fn names_come_from_the_right_field() {
        let cla = ClusterLoadAssignment {
            cluster_name: "c1".into(),
            ..Default::default()
        };
        assert_eq!(
            resource_name(&sentinel_proto::to_any(&cla)).as_deref(),
            Some("c1")
        );
        let cluster = Cluster {
            name: "c2".into(),
            ..Default::default()
        };
        assert_eq!(
            resource_name(&sentinel_proto::to_any(&cluster)).as_deref(),
            Some("c2")
        );
        let garbage = Any {
            type_url: CLUSTER.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert_eq!(resource_name(&garbage), None);
    }

    #[test]
    fn versions_depend_on_bytes_only() {
        let a = Any {
            type_url: CLUSTER.into(),
            value: vec![1, 2],
        };
        assert_eq!(resource_version(&a), resource_version(&a.clone()));
        let b = Any {
            value: vec![1, 3],
            ..a.clone()
        };
        assert_ne!(resource_version(&a), resource_version(&b));
    }
}
