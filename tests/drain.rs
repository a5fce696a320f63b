//! Config changes under load: requests in flight finish, none fail.

use std::time::Duration;

use control_plane_mock::Snapshot;
use test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const N: usize = 20;

/// Starts N requests on N connections; they finish after the slow upstream's delay.
fn in_flight(
    addr: std::net::SocketAddr,
) -> Vec<tokio::task::JoinHandle<std::io::Result<(u16, String, String)>>> {
    (0..N)
        .map(|_| tokio::spawn(async move { get(addr, "/").await }))
        .collect()
}

async fn all_ok(
    reqs: Vec<tokio::task::JoinHandle<std::io::Result<(u16, String, String)>>>,
    want: &str,
) {
    for r in reqs {
        let (status, _, body) = r.await.unwrap().expect("request completes");
        assert_eq!((status, body.as_str()), (200, want));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_with_requests_in_flight() {
    let slow = slow_upstream("slow", Duration::from_millis(600)).await;
    let fast = upstream("fast").await;
    let cp = control_plane().await;
    cp.set_snapshot("d1", snapshot("v1", "route_a", "cluster_a", slow));
    let p = proxy(cp.xds_addr(), "d1", false).await;
    let addr = listener_addr(&p, "listener_0").await;
    eventually("v1 serving", async || {
        (get(addr, "/").await.ok()?.2 == "slow").then_some(())
    })
    .await;
    let reqs = in_flight(addr);
    tokio::time::sleep(Duration::from_millis(150)).await;
    cp.set_snapshot("d1", snapshot("v2", "route_b", "cluster_b", fast));
    eventually("v2 serving", async || {
        (get(addr, "/").await.ok()?.2 == "fast").then_some(())
    })
    .await;
    all_ok(reqs, "slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_update_drains_keepalive_connections() {
    let slow = slow_upstream("slow", Duration::from_millis(600)).await;
    let cp = control_plane().await;
    cp.set_snapshot("d2", snapshot("v1", "route_a", "cluster_a", slow));
    let p = proxy(cp.xds_addr(), "d2", false).await;
    let addr = listener_addr(&p, "listener_0").await;
    // A keep-alive connection opened before the update.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let reqs = in_flight(addr);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Same listener name and address, new filter chain config (another route name).
    cp.set_snapshot("d2", snapshot("v2", "route_b", "cluster_a", slow));
    eventually("the new listener version", async || {
        let (_, dump) = admin(&p, "/config_dump").await;
        (dump.contains("\"route_config_name\": \"route_b\"") && !dump.contains("warming_state"))
            .then_some(())
    })
    .await;
    // The old keep-alive connection is served by the old version (its routes kept), and its
    // answer says it closes.
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    all_ok(reqs, "slow").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_removal_with_requests_in_flight() {
    let slow = slow_upstream("slow", Duration::from_millis(600)).await;
    let cp = control_plane().await;
    cp.set_snapshot("d3", snapshot("v1", "route_a", "cluster_a", slow));
    let p = proxy(cp.xds_addr(), "d3", false).await;
    let addr = listener_addr(&p, "listener_0").await;
    let reqs = in_flight(addr);
    tokio::time::sleep(Duration::from_millis(150)).await;
    cp.set_snapshot("d3", Snapshot::new("v2"));
    eventually("the port to close", async || {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    all_ok(reqs, "slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_get_goaway_when_their_listener_drains() {
    let up = upstream("up").await;
    let cp = control_plane().await;
    cp.set_snapshot("d4", snapshot("v1", "route_a", "cluster_a", up));
    let p = proxy(cp.xds_addr(), "d4", false).await;
    let addr = listener_addr(&p, "listener_0").await;
    eventually("v1 serving", async || {
        (get(addr, "/").await.ok()?.0 == 200).then_some(())
    })
    .await;
    // An h2c (prior knowledge) connection with one request done.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(client.send_request(req).await.unwrap().status(), 200);
    // The listener changes: the idle HTTP/2 connection is told to go away, well before the
    // drain time (1 s) would close it.
    let start = std::time::Instant::now();
    cp.set_snapshot("d4", snapshot("v2", "route_b", "cluster_a", up));
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends")
        .unwrap()
        .expect("gracefully");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}
