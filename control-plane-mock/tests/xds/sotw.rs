//! State-of-the-world ADS.

use control_plane_mock::{resource, EventKind, MockControlPlane, Snapshot, DEFAULT_NODE};
use sentinel_proto::pb::{
    envoy::config::{listener::v3::Listener, route::v3::RouteConfiguration},
    google::protobuf::Any,
};

use crate::common::*;

async fn start() -> control_plane_mock::MockHandle {
    MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("mock starts")
}

#[tokio::test]
async fn initial_fetch_lds_wildcard_and_rds_by_name_then_acks() {
    let cp = start().await;
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = SotwClient::ads(cp.xds_addr()).await;

    client.subscribe(resource::LISTENER, &[]).await;
    let lds = client.recv().await;
    assert_eq!(lds.type_url, resource::LISTENER);
    assert_eq!(lds.version_info, "1");
    assert_eq!(response_names(&lds), ["l1", "l2"]);
    let l1: Listener = sentinel_proto::from_any(&lds.resources[0]).unwrap();
    assert_eq!(l1.name, "l1");
    client.ack(&lds, &[]).await;

    client.subscribe(resource::ROUTE, &["r2"]).await;
    let rds = client.recv().await;
    assert_eq!(response_names(&rds), ["r2"]);
    assert_ne!(rds.nonce, lds.nonce);
    let r2: RouteConfiguration = sentinel_proto::from_any(&rds.resources[0]).unwrap();
    assert_eq!(r2.name, "r2");
    client.ack(&rds, &["r2"]).await;

    for type_url in [resource::LISTENER, resource::ROUTE] {
        let ack = cp
            .wait_for_ack(type_url, "1", TIMEOUT)
            .await
            .expect("ACK recorded");
        assert_eq!(ack.node_id, NODE);
        assert_eq!(ack.service, "ads");
        assert!(!ack.delta);
    }
    let request = cp
        .wait_for_event(|e| e.is(EventKind::Request, resource::ROUTE), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(request.resource_names, ["r2"]);
    client.expect_quiet().await;
}

#[tokio::test]
async fn nack_is_recorded_with_its_message_and_not_answered() {
    let cp = start().await;
    let mut bad = full_snapshot("1");
    // A resource that only decodes as an Any: the proxy must NACK it.
    bad.insert(
        "broken",
        Any {
            type_url: resource::LISTENER.into(),
            value: vec![0xff, 0xff, 0xff],
        },
    );
    cp.set_snapshot(NODE, bad);
    let mut client = SotwClient::ads(cp.xds_addr()).await;
    client.subscribe(resource::LISTENER, &[]).await;
    let lds = client.recv().await;
    assert_eq!(
        response_names(&lds),
        ["l1", "l2", ""],
        "the broken resource is sent as is"
    );
    assert_eq!(lds.resources[2].value, [0xff, 0xff, 0xff]);

    client
        .nack(&lds, "", "listener broken: cannot decode")
        .await;
    let nack = cp
        .wait_for_event(|e| e.is(EventKind::Nack, resource::LISTENER), TIMEOUT)
        .await
        .expect("NACK recorded");
    assert_eq!(
        nack.error_detail.as_deref(),
        Some("listener broken: cannot decode")
    );
    assert_eq!(nack.response_nonce, lds.nonce);
    assert!(cp.events().iter().all(|e| e.kind != EventKind::Ack));
    client.expect_quiet().await;

    // Fixing the snapshot pushes the corrected set.
    cp.set_snapshot(NODE, full_snapshot("2"));
    let fixed = client.recv().await;
    assert_eq!(fixed.version_info, "2");
    assert_eq!(response_names(&fixed), ["l1", "l2"]);
}

#[tokio::test]
async fn new_snapshot_is_pushed_only_for_changed_types() {
    let cp = start().await;
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = SotwClient::ads(cp.xds_addr()).await;
    client.subscribe(resource::LISTENER, &[]).await;
    let lds = client.recv().await;
    client.ack(&lds, &[]).await;
    client.subscribe(resource::ROUTE, &["r1"]).await;
    let rds = client.recv().await;
    client.ack(&rds, &["r1"]).await;
    cp.wait_for_ack(resource::ROUTE, "1", TIMEOUT)
        .await
        .unwrap();

    // Another node's snapshot changes nothing here.
    cp.set_snapshot("someone-else", Snapshot::new("x"));
    client.expect_quiet().await;

    // Only r1 changes: one RDS push, no LDS push.
    let v2 = snapshot(
        "2",
        &[
            listener("l1", 10001, "r1"),
            listener("l2", 10002, "r2"),
            route("r1", "c2"),
            route("r2", "c2"),
        ],
    );
    cp.set_snapshot(NODE, v2);
    let pushed = client.recv().await;
    assert_eq!(pushed.type_url, resource::ROUTE);
    assert_eq!(pushed.version_info, "2");
    assert_eq!(response_names(&pushed), ["r1"]);
    client.ack(&pushed, &["r1"]).await;
    cp.wait_for_ack(resource::ROUTE, "2", TIMEOUT)
        .await
        .unwrap();
    client.expect_quiet().await;

    // Removing a listener pushes the full (smaller) LDS set.
    assert!(cp.remove_resource(NODE, resource::LISTENER, "l2"));
    let lds = client.recv().await;
    assert_eq!(response_names(&lds), ["l1"]);
    assert_ne!(lds.version_info, "2", "an edit gets a new version");
}

#[tokio::test]
async fn subscription_change_is_answered_without_a_new_version() {
    let cp = start().await;
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = SotwClient::ads(cp.xds_addr()).await;
    client.subscribe(resource::ROUTE, &["r1"]).await;
    let first = client.recv().await;
    assert_eq!(response_names(&first), ["r1"]);

    // ACK that also adds r2: answered with both, same version.
    let seq = cp.next_event_seq();
    client.ack(&first, &["r1", "r2"]).await;
    let second = client.recv().await;
    assert_eq!(second.version_info, "1");
    assert_eq!(response_names(&second), ["r1", "r2"]);
    let kinds: Vec<EventKind> = cp
        .events_since(seq)
        .iter()
        .filter(|e| e.type_url == resource::ROUTE)
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [EventKind::Ack, EventKind::Request, EventKind::Response]
    );

    // A stale ACK (the first nonce) is ignored.
    client.ack(&first, &["r1"]).await;
    client.expect_quiet().await;

    // Subscribing only to a name that does not exist gets no (empty) RDS response.
    client.ack(&second, &["nope"]).await;
    client.expect_quiet().await;
}

#[tokio::test]
async fn snapshot_arriving_later_and_default_node() {
    let cp = start().await;
    let mut client = SotwClient::ads(cp.xds_addr()).await;
    client.subscribe(resource::CLUSTER, &["*"]).await;
    client.expect_quiet().await; // no snapshot yet: the client waits

    cp.set_snapshot(DEFAULT_NODE, snapshot("d", &[cluster("c9")]));
    let cds = client.recv().await;
    assert_eq!(cds.version_info, "d");
    assert_eq!(response_names(&cds), ["c9"]);

    // The node's own snapshot takes precedence over the default one.
    cp.set_snapshot(NODE, snapshot("own", &[]));
    let cds = client.recv().await;
    assert_eq!(cds.version_info, "own");
    assert!(
        cds.resources.is_empty(),
        "LDS/CDS send the empty set: absence is removal"
    );
}

#[tokio::test]
async fn cluster_change_resends_endpoints_for_warming() {
    let cp = start().await;
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = SotwClient::ads(cp.xds_addr()).await;
    client.subscribe(resource::CLUSTER, &[]).await;
    let cds = client.recv().await;
    client.ack(&cds, &[]).await;
    client.subscribe(resource::ENDPOINT, &["c1", "c2"]).await;
    let eds = client.recv().await;
    assert_eq!(response_names(&eds), ["c1", "c2"]);
    client.ack(&eds, &["c1", "c2"]).await;

    // c1 changes (timeout), its endpoints do not: CDS then EDS, in that order.
    let mut v2 = full_snapshot("2");
    let c1 = v2.resources(resource::CLUSTER)[0].1.clone();
    let mut c1: sentinel_proto::pb::envoy::config::cluster::v3::Cluster =
        sentinel_proto::from_any(&c1).unwrap();
    c1.connect_timeout = Some(sentinel_proto::pb::google::protobuf::Duration {
        seconds: 2,
        nanos: 0,
    });
    v2.insert("c1", sentinel_proto::to_any(&c1));
    cp.set_snapshot(NODE, v2);
    assert_eq!(client.recv().await.type_url, resource::CLUSTER);
    let eds = client.recv().await;
    assert_eq!(eds.type_url, resource::ENDPOINT);
    assert_eq!(eds.version_info, "2");
}
