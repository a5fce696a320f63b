//! The HTTP API, the demo upstream and the snapshot directory watcher.

use std::time::Duration;

use control_plane_mock::{
    bind, resource, serve_demo_upstream, serve_http_api, DirWatcher, MockControlPlane,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A one-shot HTTP/1.0 request; returns (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: test\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn http_api_sets_and_shows_snapshots_and_events() {
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let api = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_http_api(listener, cp.controller()));

    assert_eq!(http(api, "GET", "/healthz", "").await, (200, "ok\n".into()));
    assert_eq!(http(api, "GET", "/snapshot/n1", "").await.0, 404);
    let text = format!("version: v7\nresources:\n{}", cluster("c1"));
    let (status, body) = http(api, "POST", "/snapshot/n1", &text).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cp.snapshot("n1").unwrap().version(), "v7");
    let (status, body) = http(api, "GET", "/snapshot/n1", "").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["resources"][0]["name"], "c1");
    let (status, body) = http(api, "POST", "/snapshot/n1", "resources: [ { bogus: 1 } ]").await;
    assert_eq!(status, 400);
    assert!(body.contains("resource 0"), "{body}");

    // An ACK shows up in /events.
    cp.set_snapshot(NODE, full_snapshot("1"));
    let mut client = SotwClient::ads(cp.xds_addr()).await;
    client.subscribe(resource::CLUSTER, &[]).await;
    let cds = client.recv().await;
    client.ack(&cds, &[]).await;
    cp.wait_for_ack(resource::CLUSTER, "1", TIMEOUT)
        .await
        .unwrap();
    let (_, body) = http(api, "GET", "/events", "").await;
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ack = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "ACK")
        .expect("ACK listed");
    assert_eq!(ack["type_url"], resource::CLUSTER);
    assert_eq!(ack["version_info"], "1");
    server.abort();
}

#[tokio::test]
async fn demo_upstream_echoes() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_demo_upstream(listener, "up".into()));
    assert_eq!(
        http(addr, "GET", "/a/b?c=1", "").await,
        (200, "up: GET /a/b?c=1\n".into())
    );
    server.abort();
}

#[tokio::test]
async fn directory_watcher_loads_changes_and_removals() {
    let dir = std::env::temp_dir().join(format!("cpm-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cp = MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut watcher = DirWatcher::new(&dir);
    let file = dir.join("n1.yaml");
    std::fs::write(&file, format!("resources:\n{}", cluster("c1"))).unwrap();
    std::fs::write(dir.join("ignored.txt"), "x").unwrap();
    assert_eq!(watcher.scan(&cp), 1);
    let v1 = cp.snapshot("n1").unwrap().version().to_string();
    assert_eq!(watcher.scan(&cp), 0, "unchanged files are not reloaded");

    // Same mtime resolution issues aside, a different length is a change.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(
        &file,
        format!("resources:\n{}{}", cluster("c1"), cluster("c2")),
    )
    .unwrap();
    assert_eq!(watcher.scan(&cp), 1);
    assert_ne!(cp.snapshot("n1").unwrap().version(), v1);
    assert_eq!(cp.snapshot("n1").unwrap().len(), 2);

    // A broken edit keeps the last good snapshot.
    std::fs::write(&file, "resources: [ { bogus: 1 } ]").unwrap();
    watcher.scan(&cp);
    assert_eq!(cp.snapshot("n1").unwrap().len(), 2);

    std::fs::remove_file(&file).unwrap();
    assert_eq!(watcher.scan(&cp), 1);
    assert!(cp.snapshot("n1").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}
