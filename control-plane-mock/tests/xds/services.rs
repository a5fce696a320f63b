//! The per-type services, and the control plane's lifecycle.

use control_plane_mock::{resource, EventKind, MockControlPlane};
use sentinel_proto::pb::envoy::service::{
    discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest},
    listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::common::*;

#[tokio::test]
async fn per_type_lds_service_stream_delta_and_fetch() {
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut lds = ListenerDiscoveryServiceClient::connect(format!("http://{}", cp.xds_addr()))
        .await
        .unwrap();

    // SotW: the type URL may be left empty on a per-type service.
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = lds
        .stream_listeners(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(TIMEOUT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.type_url, resource::LISTENER);
    assert_eq!(response_names(&response), ["l1", "l2"]);
    tx.send(DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ack = cp
        .wait_for_ack(resource::LISTENER, "1", TIMEOUT)
        .await
        .unwrap();
    assert_eq!(ack.service, "lds");

    // Delta on the same service.
    let (dtx, drx) = mpsc::channel(4);
    dtx.send(DeltaDiscoveryRequest {
        node: node(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut delta = lds
        .delta_listeners(ReceiverStream::new(drx))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(TIMEOUT, delta.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delta_names(&response), ["l1", "l2"]);

    // Fetch.
    let fetched = lds
        .fetch_listeners(DiscoveryRequest {
            node: node(),
            resource_names: names(["l2"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response_names(&fetched), ["l2"]);
}

#[tokio::test]
async fn shutdown_ends_streams_and_the_port_can_be_reused() {
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = cp.xds_addr();
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = SotwClient::ads(addr).await;
    client.subscribe(resource::LISTENER, &[]).await;
    client.recv().await;
    let snapshots = cp.snapshots();

    tokio::time::timeout(TIMEOUT, cp.shutdown())
        .await
        .expect("shutdown is prompt");
    let ended = tokio::time::timeout(TIMEOUT, client.rx.message())
        .await
        .expect("the client sees the end");
    let status = ended.expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // Restart on the same address, carrying the snapshots over.
    let cp = MockControlPlane::start(addr)
        .await
        .expect("same port again");
    for (node_id, snapshot) in snapshots {
        cp.set_snapshot(&node_id, snapshot);
    }
    let mut client = SotwClient::ads(addr).await;
    client.subscribe(resource::LISTENER, &[]).await;
    assert_eq!(response_names(&client.recv().await), ["l1", "l2"]);
    assert!(cp
        .events()
        .iter()
        .all(|e| e.kind != EventKind::StreamClosed));
    drop(client);
    let closed = cp
        .wait_for_event(|e| e.kind == EventKind::StreamClosed, TIMEOUT)
        .await
        .expect("the closed stream is recorded");
    assert_eq!(closed.node_id, NODE);
    cp.shutdown().await;
}
