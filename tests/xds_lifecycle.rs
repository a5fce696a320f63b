//! The xDS lifecycle end to end, in process: mock control plane → Sentinel → hyper upstreams.

use std::time::Duration;

use control_plane_mock::{resource, EventKind, Snapshot};
use test_support::*;

const T: Duration = Duration::from_secs(10);

async fn serves(addr: std::net::SocketAddr, want: &str) {
    eventually(&format!("traffic to reach {want}"), async || {
        match get(addr, "/").await {
            Ok((200, _, body)) if body == want => Some(()),
            _ => None,
        }
    })
    .await
}

/// The error detail of the first NACK of this resource type.
async fn nack_detail(cp: &control_plane_mock::MockHandle, type_url: &str) -> String {
    let nack = cp
        .wait_for_event(|e| e.is(EventKind::Nack, type_url), T)
        .await
        .unwrap_or_else(|| panic!("a NACK of {type_url}"));
    nack.error_detail.expect("a NACK says why")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_initial_fetch_ack_and_traffic() {
    let up = upstream("one").await;
    let cp = control_plane().await;
    cp.set_snapshot("n1", snapshot("v1", "route_a", "cluster_a", up));
    let p = proxy(cp.xds_addr(), "n1", false).await;
    for t in [
        resource::CLUSTER,
        resource::ENDPOINT,
        resource::LISTENER,
        resource::ROUTE,
    ] {
        assert!(
            cp.wait_for_ack(t, "v1", T).await.is_some(),
            "no ACK for {t}"
        );
    }
    let addr = listener_addr(&p, "listener_0").await;
    serves(addr, "one").await;
    let (status, body) = admin(&p, "/ready").await;
    assert_eq!((status, body.as_str()), (200, "LIVE\n"));
    let (_, dump) = admin(&p, "/config_dump").await;
    assert!(dump.contains("\"version_info\": \"v1\""), "{dump}");
    assert!(dump.contains("route_a"));
    // Nothing was NACKed, and EDS/RDS were never asked for by the (legacy wildcard) empty list.
    let events = cp.events();
    assert!(events.iter().all(|e| e.kind != EventKind::Nack));
    for e in events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Request | EventKind::Ack))
    {
        if e.type_url == resource::ENDPOINT || e.type_url == resource::ROUTE {
            assert!(!e.resource_names.is_empty(), "{e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_initial_fetch_update_and_removal() {
    let (one, two) = (upstream("one").await, upstream("two").await);
    let cp = control_plane().await;
    cp.set_snapshot("n2", snapshot("v1", "route_a", "cluster_a", one));
    let p = proxy(cp.xds_addr(), "n2", true).await;
    let addr = listener_addr(&p, "listener_0").await;
    serves(addr, "one").await;
    assert!(cp
        .events()
        .iter()
        .any(|e| e.delta && e.kind == EventKind::Ack));
    // New cluster and route: the old ones are removed (delta removed_resources).
    cp.set_snapshot("n2", snapshot("v2", "route_b", "cluster_b", two));
    serves(addr, "two").await;
    let (_, dump) = eventually("cluster_a to leave the dump", async || {
        let (s, d) = admin(&p, "/config_dump").await;
        (!d.contains("cluster_a")).then_some((s, d))
    })
    .await;
    assert!(dump.contains("cluster_b"));
    // Listener removed: the port stops accepting.
    cp.set_snapshot("n2", Snapshot::new("v3"));
    eventually("listener removal", async || {
        get(addr, "/").await.is_err().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_names_resource_and_field_and_keeps_old_config() {
    let up = upstream("one").await;
    let cp = control_plane().await;
    cp.set_snapshot("n3", snapshot("v1", "route_a", "cluster_a", up));
    let p = proxy(cp.xds_addr(), "n3", false).await;
    let addr = listener_addr(&p, "listener_0").await;
    serves(addr, "one").await;
    // A route with a bad regex.
    let mut bad = snapshot("v2", "route_a", "cluster_a", up);
    let route: sentinel_proto::pb::envoy::config::route::v3::RouteConfiguration = sentinel_proto::from_json(
        &sentinel_proto::parse_text(
            r#"{ name: route_a, virtual_hosts: [ { name: all, domains: ["*"], routes: [ { match: { safe_regex: { regex: "([" } }, route: { cluster: cluster_a } } ] } ] }"#,
        )
        .unwrap(),
    )
    .unwrap();
    bad.insert("route_a", sentinel_proto::to_any(&route));
    cp.set_snapshot("n3", bad);
    let nack = cp
        .wait_for_event(|e| e.is(EventKind::Nack, resource::ROUTE), T)
        .await
        .expect("a NACK for the bad route");
    let detail = nack.error_detail.unwrap();
    assert!(detail.contains("route_a"), "{detail}");
    assert!(
        detail.contains("virtual_hosts[0].routes[0].match.safe_regex"),
        "{detail}"
    );
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the last good version"
    );
    // The old route keeps serving, and config_dump shows the rejected update.
    assert_eq!(get(addr, "/").await.unwrap().0, 200);
    let (_, dump) = admin(&p, "/config_dump").await;
    assert!(dump.contains("invalid regex"), "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_field_is_nacked() {
    let up = upstream("one").await;
    let cp = control_plane().await;
    let mut snap = snapshot("v1", "route_a", "cluster_a", up);
    let cluster: sentinel_proto::pb::envoy::config::cluster::v3::Cluster = sentinel_proto::from_json(
        &sentinel_proto::parse_text("{ name: cluster_a, type: EDS, eds_cluster_config: { eds_config: { ads: {} } }, outlier_detection: { consecutive_5xx: 3 } }").unwrap(),
    )
    .unwrap();
    snap.insert("cluster_a", sentinel_proto::to_any(&cluster));
    cp.set_snapshot("n4", snap);
    let _p = proxy(cp.xds_addr(), "n4", false).await;
    let detail = nack_detail(&cp, resource::CLUSTER).await;
    assert!(detail.contains("cluster_a: outlier_detection"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_must_not_bind_is_nacked() {
    let up = upstream("one").await;
    let cp = control_plane().await;
    let mut snap = snapshot("v1", "route_a", "cluster_a", up);
    let listener = snap.resources(resource::LISTENER)[0].1.clone();
    let mut json = sentinel_proto::any_to_json(&listener).unwrap();
    let name = json["name"].as_str().unwrap().to_string();
    json["bind_to_port"] = false.into();
    snap.insert(&name, sentinel_proto::any_from_json(&json).unwrap());
    cp.set_snapshot("n4b", snap);
    let _p = proxy(cp.xds_addr(), "n4b", false).await;
    let detail = nack_detail(&cp, resource::LISTENER).await;
    assert!(
        detail.contains(&format!("{name}: bind_to_port")),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_waits_for_routes_until_initial_fetch_timeout() {
    let up = upstream("one").await;
    let cp = control_plane().await;
    // The listener points at a route that the control plane never sends, with a 1 s timeout.
    let mut snap = snapshot("v1", "route_a", "cluster_a", up);
    snap.remove(resource::ROUTE, "route_a");
    let listener = snap.resources(resource::LISTENER)[0].1.clone();
    let mut json = sentinel_proto::any_to_json(&listener).unwrap();
    json["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"]
        ["initial_fetch_timeout"] = "1s".into();
    snap.insert("listener_0", sentinel_proto::any_from_json(&json).unwrap());
    cp.set_snapshot("n5", snap);
    let p = proxy(cp.xds_addr(), "n5", false).await;
    cp.wait_for_ack(resource::LISTENER, "v1", T)
        .await
        .expect("LDS ACK");
    // Warming: not ready, nothing bound.
    let (status, _) = admin(&p, "/ready").await;
    assert_eq!(status, 503);
    assert!(p.listeners.load().is_empty());
    // After the timeout the listener serves, and without routes every request is a 404.
    let addr = listener_addr(&p, "listener_0").await;
    assert_eq!(get(addr, "/").await.unwrap().0, 404);
    assert_eq!(admin(&p, "/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_and_eds_follow_references() {
    let (one, two) = (upstream("one").await, upstream("two").await);
    let cp = control_plane().await;
    cp.set_snapshot("n6", snapshot("v1", "route_a", "cluster_a", one));
    let p = proxy(cp.xds_addr(), "n6", false).await;
    let addr = listener_addr(&p, "listener_0").await;
    serves(addr, "one").await;
    let seq = cp.next_event_seq();
    cp.set_snapshot("n6", snapshot("v2", "route_b", "cluster_b", two));
    serves(addr, "two").await;
    // The proxy re-subscribed: its RDS and EDS requests now name only the new resources.
    for (t, name) in [
        (resource::ROUTE, "route_b"),
        (resource::ENDPOINT, "cluster_b"),
    ] {
        let e = cp
            .wait_for_event_since(
                seq,
                |e| e.type_url == t && e.resource_names == vec![name.to_string()],
                T,
            )
            .await;
        assert!(e.is_some(), "no {t} request naming only {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_keeps_config_and_reconnects() {
    let (one, two) = (upstream("one").await, upstream("two").await);
    let cp = control_plane().await;
    let xds = cp.xds_addr();
    cp.set_snapshot("n7", snapshot("v1", "route_a", "cluster_a", one));
    let p = proxy(xds, "n7", false).await;
    let addr = listener_addr(&p, "listener_0").await;
    serves(addr, "one").await;
    cp.shutdown().await;
    // The control plane is gone: traffic still flows on the last good config.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(addr, "/").await.unwrap().2, "one");
    let cp = control_plane_mock::MockControlPlane::start(xds)
        .await
        .unwrap();
    cp.set_snapshot("n7", snapshot("v2", "route_a", "cluster_a", two));
    serves(addr, "two").await;
    // The reconnected stream's first request carried the node.
    assert!(cp.events().iter().any(|e| e.node_id == "n7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reconnect_sends_initial_resource_versions() {
    let up = upstream("one").await;
    let cp = control_plane().await;
    let xds = cp.xds_addr();
    cp.set_snapshot("n8", snapshot("v1", "route_a", "cluster_a", up));
    let p = proxy(xds, "n8", true).await;
    let addr = listener_addr(&p, "listener_0").await;
    serves(addr, "one").await;
    cp.shutdown().await;
    let cp = control_plane_mock::MockControlPlane::start(xds)
        .await
        .unwrap();
    cp.set_snapshot("n8", snapshot("v1", "route_a", "cluster_a", up));
    cp.wait_for_event(|e| e.delta && e.type_url == resource::LISTENER, T)
        .await
        .expect("the proxy reconnects");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The proxy said what it holds, so nothing unchanged is sent again.
    let resent: Vec<_> = cp
        .events()
        .into_iter()
        .filter(|e| {
            e.kind == EventKind::Response
                && e.resource_names
                    .iter()
                    .any(|n| n == "listener_0" || n == "cluster_a")
        })
        .collect();
    assert!(resent.is_empty(), "{resent:?}");
    assert_eq!(get(addr, "/").await.unwrap().2, "one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_config_source_files_are_reloaded() {
    let (one, two) = (upstream("one").await, upstream("two").await);
    let dir = std::env::temp_dir().join(format!("sentinel-path-xds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, body: String| {
        // Envoy watches for a move into place; write then rename, as operators do.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    };
    let cds = |port: u16| {
        format!(
            r#"{{ "version_info": "{port}", "resources": [ {{ "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c", "type": "STATIC", "connect_timeout": "1s",
              "load_assignment": {{ "cluster_name": "c", "endpoints": [ {{ "lb_endpoints": [ {{ "endpoint": {{ "address": {{ "socket_address": {{ "address": "127.0.0.1", "port_value": {port} }} }} }} }} ] }} ] }} }} ] }}"#
        )
    };
    write("cds.json", cds(one.port()));
    write(
        "lds.yaml",
        r#"
version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: file_listener
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
  filter_chains:
  - filters:
    - name: hcm
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: f
        route_config: { virtual_hosts: [ { name: v, domains: ["*"], routes: [ { match: { prefix: / }, route: { cluster: c } } ] } ] }
        http_filters: [ { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } } ]
"#
        .to_string(),
    );
    let yaml = format!(
        "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}\n\
         dynamic_resources: {{ lds_config: {{ path_config_source: {{ path: {lds} }} }}, cds_config: {{ path_config_source: {{ path: {cds} }} }} }}",
        lds = dir.join("lds.yaml").display(),
        cds = dir.join("cds.json").display()
    );
    let options = sentinel::Options {
        config_yaml: Some(yaml),
        ..sentinel::Options::default()
    };
    let p = sentinel::SentinelApp::new(options)
        .unwrap()
        .start()
        .await
        .unwrap();
    let addr = listener_addr(&p, "file_listener").await;
    serves(addr, "one").await;
    write("cds.json", cds(two.port()));
    serves(addr, "two").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_is_nacked() {
    let up = upstream("one").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cp = control_plane().await;
    let mut snap = snapshot("v1", "route_a", "cluster_a", up);
    let listener = snap.resources(resource::LISTENER)[0].1.clone();
    let mut json = sentinel_proto::any_to_json(&listener).unwrap();
    json["address"]["socket_address"]["port_value"] = port.into();
    snap.insert("listener_0", sentinel_proto::any_from_json(&json).unwrap());
    cp.set_snapshot("n9", snap);
    let _p = proxy(cp.xds_addr(), "n9", false).await;
    let detail = nack_detail(&cp, resource::LISTENER).await;
    assert!(
        detail.contains(&format!(
            "listener_0: address: cannot bind '127.0.0.1:{port}'"
        )),
        "{detail}"
    );
    drop(taken);
}
