//! Delta (incremental) ADS.

use std::collections::HashMap;

use control_plane_mock::{resource, EventKind, MockControlPlane};
use sentinel_proto::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::common::*;

fn first_request(
    type_url: &str,
    subscribe: &[&str],
    initial: HashMap<String, String>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(),
        type_url: type_url.into(),
        resource_names_subscribe: names(subscribe.iter().copied()),
        initial_resource_versions: initial,
        ..Default::default()
    }
}

#[tokio::test]
async fn wildcard_changes_and_removals() {
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = DeltaClient::ads(cp.xds_addr()).await;
    client
        .send(first_request(resource::CLUSTER, &[], HashMap::new()))
        .await;
    let first = client.recv().await;
    assert_eq!(first.system_version_info, "1");
    assert_eq!(delta_names(&first), ["c1", "c2"]);
    assert!(first.resources.iter().all(|r| !r.version.is_empty()));
    client.ack(&first).await;
    let ack = cp
        .wait_for_ack(resource::CLUSTER, "1", TIMEOUT)
        .await
        .unwrap();
    assert!(ack.delta);

    // Removing c2 sends only the removal.
    assert!(cp.remove_resource(NODE, resource::CLUSTER, "c2"));
    let removal = client.recv().await;
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed_resources, ["c2"]);
    client.ack(&removal).await;

    // A snapshot that changes nothing for this client sends nothing.
    cp.update_snapshot(NODE, |s| {
        s.remove(resource::LISTENER, "l1");
    });
    client.expect_quiet().await;
}

#[tokio::test]
async fn initial_resource_versions_are_honoured() {
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let snap = full_snapshot("1");
    cp.set_snapshot(NODE, snap.clone());
    let c1_version = resource::resource_version(&snap.resources(resource::CLUSTER)[0].1);

    // A reconnecting client holds c1 (current) and c-old (gone).
    let mut client = DeltaClient::ads(cp.xds_addr()).await;
    let initial = HashMap::from([
        ("c1".to_string(), c1_version),
        ("c-old".to_string(), "stale".to_string()),
    ]);
    client
        .send(first_request(resource::CLUSTER, &["*"], initial))
        .await;
    let response = client.recv().await;
    assert_eq!(delta_names(&response), ["c2"], "c1 is not re-sent");
    assert_eq!(response.removed_resources, ["c-old"]);

    // Same for a named type: nothing to send, so nothing is sent.
    let cla_version = resource::resource_version(&snap.resources(resource::ENDPOINT)[0].1);
    client
        .send(first_request(
            resource::ENDPOINT,
            &["c1"],
            HashMap::from([("c1".to_string(), cla_version)]),
        ))
        .await;
    client.expect_quiet().await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_names() {
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = DeltaClient::ads(cp.xds_addr()).await;
    client
        .send(first_request(resource::ENDPOINT, &["c1"], HashMap::new()))
        .await;
    let first = client.recv().await;
    assert_eq!(delta_names(&first), ["c1"]);
    client.ack(&first).await;

    let subscribe = |sub: &[&str], unsub: &[&str]| DeltaDiscoveryRequest {
        type_url: resource::ENDPOINT.into(),
        resource_names_subscribe: names(sub.iter().copied()),
        resource_names_unsubscribe: names(unsub.iter().copied()),
        ..Default::default()
    };
    client.send(subscribe(&["c2"], &[])).await;
    let added = client.recv().await;
    assert_eq!(delta_names(&added), ["c2"]);
    client.ack(&added).await;

    // Unsubscribing is not answered (the client dropped it already)...
    client.send(subscribe(&[], &["c1"])).await;
    client.expect_quiet().await;
    let request = cp
        .wait_for_event(
            |e| e.is(EventKind::Request, resource::ENDPOINT) && !e.removed.is_empty(),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(request.removed, ["c1"]);
    // ...and no longer updated, but subscribing again re-sends it.
    client.send(subscribe(&["c1"], &[])).await;
    assert_eq!(delta_names(&client.recv().await), ["c1"]);

    // A subscribed resource deleted from the snapshot is removed.
    cp.remove_resource(NODE, resource::ENDPOINT, "c2");
    assert_eq!(client.recv().await.removed_resources, ["c2"]);
}

#[tokio::test]
async fn wildcard_gets_a_first_response_even_when_empty() {
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = DeltaClient::ads(cp.xds_addr()).await;
    client
        .send(first_request(resource::LISTENER, &[], HashMap::new()))
        .await;
    client.expect_quiet().await; // no snapshot yet
    cp.set_snapshot(NODE, snapshot("empty", &[]));
    let response = client.recv().await;
    assert_eq!(response.system_version_info, "empty");
    assert!(response.resources.is_empty() && response.removed_resources.is_empty());
}
