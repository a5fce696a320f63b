//! The keep-alive pool of idle upstream connections (the vendored pingora-core's
//! `connectors::idle_pool`), through `TransportConnector`'s public API against real sockets.

use std::time::Duration;

use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::{BasicPeer, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener and a peer for it.
async fn server() -> (TcpListener, BasicPeer) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = BasicPeer::new(&l.local_addr().unwrap().to_string());
    (l, peer)
}

/// A new connection to `peer` and the server's end of it.
async fn connect(c: &TransportConnector, l: &TcpListener, peer: &BasicPeer) -> (Stream, TcpStream) {
    let stream = c.new_stream(peer).await.unwrap();
    let (server_end, _) = l.accept().await.unwrap();
    (stream, server_end)
}

/// What the server end reads next: EOF (Ok(0)) or a reset means the proxy closed it.
async fn closed_by_proxy(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 8];
    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn reuses_the_most_recently_released_connection_of_the_peer() {
    let c = TransportConnector::new(None);
    let (l, peer) = server().await;
    let (a, _sa) = connect(&c, &l, &peer).await;
    let (b, _sb) = connect(&c, &l, &peer).await;
    let b_id = b.id();
    c.release_stream(a, peer.reuse_hash(), None);
    c.release_stream(b, peer.reuse_hash(), None);
    assert_eq!(c.reused_stream(&peer).await.unwrap().id(), b_id);
    assert!(c.reused_stream(&peer).await.is_some());
    assert!(c.reused_stream(&peer).await.is_none(), "two were parked");
    let (_, other) = server().await;
    assert!(c.reused_stream(&other).await.is_none());
}

#[tokio::test]
async fn a_connection_is_reused_by_the_thread_that_released_it() {
    let c = std::sync::Arc::new(TransportConnector::new(None));
    let (l, peer) = server().await;
    let (a, _sa) = connect(&c, &l, &peer).await;
    c.release_stream(a, peer.reuse_hash(), None);
    let (c2, peer2) = (c.clone(), peer.clone());
    let elsewhere = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move { c2.reused_stream(&peer2).await.is_some() })
    });
    assert!(
        !elsewhere.join().unwrap(),
        "another worker's connection is not taken"
    );
    assert!(c.reused_stream(&peer).await.is_some());
}

#[tokio::test]
async fn a_connection_whose_hash_leads_elsewhere_is_not_reused() {
    let c = TransportConnector::new(None);
    let (l, peer) = server().await;
    let (_l2, other) = server().await;
    let (a, _sa) = connect(&c, &l, &peer).await;
    // Parked under the other peer's key, as a hash collision would.
    c.release_stream(a, other.reuse_hash(), None);
    assert!(c.reused_stream(&other).await.is_none());
}

#[tokio::test]
async fn an_idle_connection_the_server_closes_is_closed_at_once() {
    let c = TransportConnector::new(None);
    let (l, peer) = server().await;
    let (a, mut sa) = connect(&c, &l, &peer).await;
    let (b, mut sb) = connect(&c, &l, &peer).await;
    c.release_stream(a, peer.reuse_hash(), None);
    tokio::time::sleep(Duration::from_millis(20)).await; // the watcher has run once
    c.release_stream(b, peer.reuse_hash(), None);
    // The server half-closes one; the pool answers with its own close, unprompted.
    sa.shutdown().await.unwrap();
    assert!(closed_by_proxy(&mut sa).await);
    // Bytes nobody asked for make a connection unusable too.
    sb.write_all(b"x").await.unwrap();
    assert!(closed_by_proxy(&mut sb).await);
    assert_eq!(c.unexpected_data_connection_count(), 1);
    assert!(c.reused_stream(&peer).await.is_none());
}

#[tokio::test]
async fn idle_timeout_closes_the_connection() {
    let c = TransportConnector::new(None);
    let (l, peer) = server().await;
    let (a, mut sa) = connect(&c, &l, &peer).await;
    let (b, _sb) = connect(&c, &l, &peer).await;
    let b_id = b.id();
    c.release_stream(b, peer.reuse_hash(), Some(Duration::from_secs(60)));
    c.release_stream(a, peer.reuse_hash(), Some(Duration::from_millis(50)));
    assert!(closed_by_proxy(&mut sa).await);
    assert_eq!(c.reused_stream(&peer).await.unwrap().id(), b_id);
}

#[tokio::test]
async fn a_full_pool_closes_the_oldest_connection_of_the_peer() {
    let c = TransportConnector::new(Some(ConnectorOptions::new(1)));
    let (l, peer) = server().await;
    let (a, mut sa) = connect(&c, &l, &peer).await;
    let (b, _sb) = connect(&c, &l, &peer).await;
    let b_id = b.id();
    c.release_stream(a, peer.reuse_hash(), None);
    c.release_stream(b, peer.reuse_hash(), None);
    assert!(closed_by_proxy(&mut sa).await);
    // No room, and nothing of this peer to evict: the newcomer is closed.
    let (l2, peer2) = server().await;
    let (d, mut sd) = connect(&c, &l2, &peer2).await;
    c.release_stream(d, peer2.reuse_hash(), None);
    assert!(closed_by_proxy(&mut sd).await);
    assert_eq!(c.reused_stream(&peer).await.unwrap().id(), b_id);
}

#[tokio::test]
async fn dropping_the_connector_closes_its_idle_connections() {
    let c = TransportConnector::new(None);
    let (l, peer) = server().await;
    let (a, mut sa) = connect(&c, &l, &peer).await;
    c.release_stream(a, peer.reuse_hash(), None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The watcher task holds no strong reference: the pool goes with the connector.
    drop(c);
    assert!(closed_by_proxy(&mut sa).await);
}
