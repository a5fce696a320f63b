//! Reading Envoy's admin `/config_dump` output, so what a real Envoy runs can be replayed to
//! the proxy under test. Only the four xDS resource kinds are taken; other dump sections
//! (bootstrap, secrets, scoped routes...) are skipped with a debug log.

use serde_json::Value;

use crate::error::SnapshotError;

/// A list field of a dump section and the path to the resource inside one of its entries.
type Field = (&'static str, &'static [&'static str]);

/// Where each dump type keeps its resources.
const SECTIONS: &[(&str, &[Field])] = &[
    (
        "ListenersConfigDump",
        &[
            ("static_listeners", &["listener"]),
            ("dynamic_listeners", &["active_state", "listener"]),
        ],
    ),
    (
        "ClustersConfigDump",
        &[
            ("static_clusters", &["cluster"]),
            ("dynamic_active_clusters", &["cluster"]),
            ("dynamic_warming_clusters", &["cluster"]),
        ],
    ),
    (
        "RoutesConfigDump",
        &[
            ("static_route_configs", &["route_config"]),
            ("dynamic_route_configs", &["route_config"]),
        ],
    ),
    (
        "EndpointsConfigDump",
        &[
            ("static_endpoint_configs", &["endpoint_config"]),
            ("dynamic_endpoint_configs", &["endpoint_config"]),
        ],
    ),
];

/// The resources (each an `Any` in JSON form, with `@type`) of a config dump, in dump order.
/// A dynamic listener that is only warming (no `active_state`) is taken from `warming_state`.
pub fn resources(dump: &Value) -> Result<Vec<Value>, SnapshotError> {
    let configs = dump
        .get("configs")
        .and_then(Value::as_array)
        .ok_or_else(|| SnapshotError::Shape("config_dump: `configs` must be a list".into()))?;
    let mut out = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        let type_url = config.get("@type").and_then(Value::as_str).ok_or_else(|| {
            SnapshotError::Shape(format!("config_dump: configs[{index}] has no @type"))
        })?;
        let short = type_url.rsplit('.').next().unwrap_or(type_url);
        let Some((_, fields)) = SECTIONS.iter().find(|(name, _)| *name == short) else {
            tracing::debug!(%type_url, "config_dump: skipping section");
            continue;
        };
        for (list_field, path) in *fields {
            let Some(list) = config.get(*list_field).and_then(Value::as_array) else {
                continue;
            };
            for entry in list {
                let found = lookup(entry, path).or_else(|| {
                    // A listener still warming has no active state yet.
                    (path[0] == "active_state")
                        .then(|| lookup(entry, &["warming_state", "listener"]))?
                });
                match found {
                    Some(resource) => out.push(resource.clone()),
                    None => {
                        tracing::debug!(%type_url, %list_field, "config_dump: entry without resource")
                    }
                }
            }
        }
    }
    Ok(out)
}

fn lookup<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

#[cfg(test)]
mod tests {
    use crate::{resource, Snapshot};

    #[test]
    fn reads_the_four_dump_types() {
        let dump = r#"{"configs": [
          {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {}},
          {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
           "static_clusters": [{"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "s"}}],
           "dynamic_active_clusters": [{"version_info": "1", "cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "d"}}]},
          {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
           "dynamic_listeners": [{"name": "l", "active_state": {"listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l"}}},
                                 {"name": "w", "warming_state": {"listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "w"}}}]},
          {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
           "dynamic_route_configs": [{"route_config": {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "r"}}]},
          {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
           "dynamic_endpoint_configs": [{"endpoint_config": {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": "d"}}]}
        ]}"#;
        let s = Snapshot::from_text(dump).unwrap();
        let names = |t| {
            s.resources(t)
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(resource::CLUSTER), ["s", "d"]);
        assert_eq!(names(resource::LISTENER), ["l", "w"]);
        assert_eq!(names(resource::ROUTE), ["r"]);
        assert_eq!(names(resource::ENDPOINT), ["d"]);
    }
}
