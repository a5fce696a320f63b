//! What the proxy is given: the Envoy bootstrap (ADS to the mock control plane) and the xDS
//! snapshots built from a case's resources plus the scaffold.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use control_plane_mock::Snapshot;
use serde_yaml::{Mapping, Value};

use crate::case::Scaffold;

/// The node id the proxy announces and the snapshots are set for.
pub const NODE_ID: &str = "conformance";
/// The scaffold listener's name and the route configuration it asks for by RDS.
pub const LISTENER_NAME: &str = "listener_0";
pub const ROUTE_NAME: &str = "route_0";

/// An Envoy bootstrap: admin on `admin_port`, ADS (SotW or delta) over HTTP/2 to the static
/// `xds_cluster` at `xds_port`, listeners and clusters from ADS.
pub fn bootstrap(admin_port: u16, xds_port: u16, delta: bool) -> String {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"node: {{ id: {NODE_ID}, cluster: {NODE_ID} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    grpc_services: [ {{ envoy_grpc: {{ cluster_name: xds_cluster }} }} ]
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {xds_port} }} }} }}
"#
    )
}

/// The scaffold listener: `listener_0` on `port`, HCM with RDS `route_0` and the case's
/// extra HCM fields.
fn listener(port: u16, hcm: &Mapping) -> Result<Value> {
    let mut typed: Mapping = serde_yaml::from_str(&format!(
        r#"
"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
stat_prefix: ingress
codec_type: AUTO
rds: {{ route_config_name: {ROUTE_NAME}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
http_filters:
- name: envoy.filters.http.router
  typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))?;
    for (k, v) in hcm {
        typed.insert(k.clone(), v.clone());
    }
    let mut l: Mapping = serde_yaml::from_str(&format!(
        r#"
"@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: {LISTENER_NAME}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
"#
    ))?;
    let mut filter: Mapping =
        serde_yaml::from_str("name: envoy.filters.network.http_connection_manager")?;
    filter.insert("typed_config".into(), Value::Mapping(typed));
    let mut chain = Mapping::new();
    chain.insert(
        "filters".into(),
        Value::Sequence(vec![Value::Mapping(filter)]),
    );
    l.insert(
        "filter_chains".into(),
        Value::Sequence(vec![Value::Mapping(chain)]),
    );
    Ok(Value::Mapping(l))
}

/// An EDS cluster named after an upstream, and its endpoints.
fn cluster(name: &str, port: u16) -> Result<[Value; 2]> {
    let c = serde_yaml::from_str(&format!(
        r#"
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: {name}
type: EDS
connect_timeout: 1s
eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
"#
    ))?;
    let cla = serde_yaml::from_str(&format!(
        r#"
"@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
cluster_name: {name}
endpoints:
- lb_endpoints:
  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    ))?;
    Ok([c, cla])
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("@type")?.as_str()
}

fn named(v: &Value, type_suffix: &str, name: &str) -> bool {
    type_of(v).is_some_and(|t| t.ends_with(type_suffix))
        && v.get("name").and_then(Value::as_str) == Some(name)
}

/// Everything the scaffold needs to know about a case run.
pub struct ScaffoldInput<'a> {
    pub listener_port: u16,
    pub hcm: &'a Mapping,
    /// Upstream name -> port.
    pub upstreams: &'a BTreeMap<String, u16>,
}

/// Builds the snapshot `version`: the scaffold resources, then the case's.
pub fn snapshot(
    version: &str,
    resources: &[Value],
    scaffold: &[Scaffold],
    input: &ScaffoldInput<'_>,
) -> Result<Snapshot> {
    let mut all = Vec::new();
    if scaffold.contains(&Scaffold::Listener)
        && !resources
            .iter()
            .any(|r| named(r, ".Listener", LISTENER_NAME))
    {
        all.push(listener(input.listener_port, input.hcm)?);
    }
    if scaffold.contains(&Scaffold::Clusters) {
        for (name, port) in input.upstreams {
            if !resources.iter().any(|r| named(r, ".Cluster", name)) {
                all.extend(cluster(name, *port)?);
            }
        }
    }
    all.extend(resources.iter().cloned());
    let json = serde_json::json!({
        "version": version,
        "resources": serde_json::to_value(&all).context("resources to JSON")?,
    });
    Snapshot::from_value(&json).context("building the snapshot")
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_plane_mock::resource;

    #[test]
    fn scaffold_adds_listener_and_clusters_unless_given() {
        let upstreams = BTreeMap::from([("a".to_string(), 10), ("b".to_string(), 11)]);
        let hcm: Mapping = serde_yaml::from_str("server_name: x").unwrap();
        let input = ScaffoldInput {
            listener_port: 9,
            hcm: &hcm,
            upstreams: &upstreams,
        };
        let own: Vec<Value> = serde_yaml::from_str(
            r#"[ { "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: b, type: STATIC } ]"#,
        )
        .unwrap();
        let s = snapshot("1", &own, &[Scaffold::Listener, Scaffold::Clusters], &input).unwrap();
        assert_eq!(s.version(), "1");
        assert_eq!(s.resources(resource::LISTENER).len(), 1);
        let clusters: Vec<_> = s
            .resources(resource::CLUSTER)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(clusters, ["a", "b"]);
        assert_eq!(s.resources(resource::ENDPOINT).len(), 1);
        let none = snapshot("2", &[], &[], &input).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn bootstrap_parses() {
        let text = bootstrap(1, 2, true);
        let v: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            v["dynamic_resources"]["ads_config"]["api_type"].as_str(),
            Some("DELTA_GRPC")
        );
    }
}
