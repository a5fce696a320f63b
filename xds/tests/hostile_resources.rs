//! Malformed and hostile xDS resources get an error (a NACK), never a panic.
//!
//! Property tests mutate valid resources at random (values replaced by strings, numbers,
//! regexes and nested garbage; keys dropped) and feed arbitrary bytes as resources; the
//! store must answer every one with Ok or Err. Case counts are bounded so CI stays fast.

use std::time::Instant;

use proptest::prelude::*;
use sentinel_proto::pb::google::protobuf::Any;
use sentinel_xds::store::{Incoming, Store, Update};
use sentinel_xds::{types, SnapshotHandle};
use serde_json::Value;

const LISTENER: &str = r#"{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l",
  "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
  "filter_chains": [{"filter_chain_match": {"destination_port": 80, "source_prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]},
   "filters": [{"name": "hcm", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "stat_prefix": "s", "rds": {"route_config_name": "r", "config_source": {"ads": {}}},
    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}"#;
const ROUTE: &str = r#"{"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "r",
  "virtual_hosts": [{"name": "v", "domains": ["*.example.com", "*"], "routes": [
    {"match": {"safe_regex": {"regex": "/a/[0-9]+"}, "headers": [{"name": "x", "string_match": {"prefix": "p"}}]},
     "route": {"weighted_clusters": {"clusters": [{"name": "c", "weight": 1}]}, "regex_rewrite": {"pattern": {"regex": "^/a"}, "substitution": "/b"}, "timeout": "1s",
       "retry_policy": {"retry_on": "5xx", "num_retries": 2}}},
    {"match": {"prefix": "/"}, "redirect": {"host_redirect": "h", "response_code": "FOUND"}},
    {"match": {"path": "/d"}, "direct_response": {"status": 200, "body": {"inline_string": "x"}},
     "response_headers_to_add": [{"header": {"key": "k", "value": "%REQ(x)%"}}]}]}]}"#;
const CLUSTER: &str = r#"{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c", "type": "STRICT_DNS",
  "connect_timeout": "1s", "lb_policy": "LEAST_REQUEST",
  "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": 80}}}}]}]}}"#;
const ENDPOINTS: &str = r#"{"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": "c",
  "endpoints": [{"priority": 1, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 80}}}, "load_balancing_weight": 3}]}]}"#;

fn type_of(json: &str) -> &'static str {
    let v: Value = serde_json::from_str(json).unwrap();
    let t = v["@type"].as_str().unwrap().to_string();
    types::ORDER.into_iter().find(|x| *x == t).unwrap()
}

fn apply(type_url: &str, resources: Vec<Any>) -> Result<(), String> {
    let mut store = Store::new(SnapshotHandle::new());
    store.apply(
        Update {
            type_url: type_url.to_string(),
            version_info: "1".into(),
            resources: resources
                .into_iter()
                .map(|resource| Incoming {
                    name: None,
                    version: None,
                    resource,
                })
                .collect(),
            removed: vec![],
            full_state: true,
        },
        Instant::now(),
    )
}

/// Values a hostile control plane might put anywhere.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        Just(Value::from("([")),
        Just(Value::from("*.*")),
        Just(Value::from("%UNKNOWN%")),
        Just(Value::from("-1s")),
        Just(Value::from("99999999999s")),
        "[a-z%:/\\\\(\\[*]{0,12}".prop_map(Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

/// Replaces the `index`-th value of the tree (in walk order) by `with`, or drops that key.
fn mutate(v: &mut Value, index: &mut usize, with: &Value, drop: bool) -> bool {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().filter(|k| *k != "@type").cloned().collect();
            for k in keys {
                if *index == 0 {
                    if drop {
                        map.remove(&k);
                    } else {
                        map.insert(k, with.clone());
                    }
                    return true;
                }
                *index -= 1;
                if mutate(map.get_mut(&k).unwrap(), index, with, drop) {
                    return true;
                }
            }
            false
        }
        Value::Array(items) => items.iter_mut().any(|item| mutate(item, index, with, drop)),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_resources_never_panic(which in 0usize..4, index in 0usize..60, with in hostile_value(), drop in any::<bool>()) {
        let base = [LISTENER, ROUTE, CLUSTER, ENDPOINTS][which];
        let mut json: Value = serde_json::from_str(base).unwrap();
        let mut i = index;
        mutate(&mut json, &mut i, &with, drop);
        // Only what parses as the message can be sent by a control plane at all.
        if let Ok(any) = sentinel_proto::any_from_json(&json) {
            let _ = apply(type_of(base), vec![any]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(which in 0usize..4, bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let t = types::ORDER[which];
        let _ = apply(t, vec![Any { type_url: t.to_string(), value: bytes }]);
    }
}

#[test]
fn the_base_resources_are_valid() {
    for base in [LISTENER, ROUTE, CLUSTER, ENDPOINTS] {
        let any = sentinel_proto::any_from_json(&serde_json::from_str(base).unwrap()).unwrap();
        apply(type_of(base), vec![any]).unwrap();
    }
}

#[test]
fn duplicate_names_and_wrong_types_are_refused() {
    let any = sentinel_proto::any_from_json(&serde_json::from_str(ROUTE).unwrap()).unwrap();
    let err = apply(types::ROUTE, vec![any.clone(), any.clone()]).unwrap_err();
    assert!(err.contains("duplicate RDS resource 'r'"), "{err}");
    let err = apply(types::CLUSTER, vec![any]).unwrap_err();
    assert!(err.contains("in a CDS response"), "{err}");
    let err = apply("type.googleapis.com/envoy.bogus.Type", vec![]).unwrap_err();
    assert!(err.contains("unsupported resource type"), "{err}");
}

#[test]
fn unknown_extension_is_refused() {
    let mut json: Value = serde_json::from_str(LISTENER).unwrap();
    json["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0] = serde_json::json!({
        "name": "envoy.filters.http.cors",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}
    });
    let any = sentinel_proto::any_from_json(&json).unwrap();
    let err = apply(types::LISTENER, vec![any]).unwrap_err();
    assert!(
        err.contains("HTTP filter 'envoy.filters.http.cors'"),
        "{err}"
    );
}
