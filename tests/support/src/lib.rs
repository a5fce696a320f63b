//! Helpers for Sentinel's in-process end-to-end tests (`tests/*.rs`): hyper upstreams, the
//! mock control plane, and the proxy started from a bootstrap.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use control_plane_mock::{MockControlPlane, MockHandle, Snapshot};
use http_body_util::Full;
use sentinel::{Options, Running, SentinelApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod ext_proc;
pub use ext_proc::{ext_proc_processor, Reply};

/// An upstream that answers 200 with its name, and echoes the path and host it saw.
pub async fn upstream(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let resp = hyper::Response::builder()
                            .header("x-upstream", name)
                            .header(
                                "x-seen-path",
                                req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
                            )
                            .header("x-seen-host", host)
                            .body(Full::new(Bytes::from(name)))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A snapshot: a listener (port 0) with RDS route `route_name`, that route sending `/` to
/// `cluster`, the EDS cluster, and its endpoints at `upstream`.
pub fn snapshot(version: &str, route_name: &str, cluster: &str, upstream: SocketAddr) -> Snapshot {
    Snapshot::from_text(&format!(
        r#"
version: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: listener_0
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress
        rds: {{ route_config_name: {route_name}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
        http_filters: [ {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }} ]
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: {route_name}
  virtual_hosts: [ {{ name: all, domains: ["*"], routes: [ {{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }} ] }} ]
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {cluster}
  type: EDS
  connect_timeout: 1s
  eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: {cluster}
  endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ] }} ]
"#,
        port = upstream.port()
    ))
    .expect("test snapshot parses")
}

pub async fn control_plane() -> MockHandle {
    MockControlPlane::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Starts the proxy against a control plane, ADS SotW or delta, admin on port 0.
pub async fn proxy(xds: SocketAddr, node: &str, delta: bool) -> Running {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    let yaml = format!(
        r#"
node: {{ id: {node}, cluster: test }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
dynamic_resources:
  ads_config: {{ api_type: {api}, transport_api_version: V3, grpc_services: [ {{ envoy_grpc: {{ cluster_name: xds_cluster }} }} ] }}
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
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ] }} ]
"#,
        port = xds.port()
    );
    let options = Options {
        config_yaml: Some(yaml),
        drain_time: Duration::from_secs(1),
        ..Options::default()
    };
    SentinelApp::new(options).unwrap().start().await.unwrap()
}

/// Polls until `f` gives Some, for at most 10 s.
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bound address of a listener, once it serves.
pub async fn listener_addr(p: &Running, name: &str) -> SocketAddr {
    eventually("listener to bind", async || {
        p.listeners
            .load()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    })
    .await
}

/// A plain HTTP/1.1 GET; returns (status, headers text, body).
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    send(addr, "GET", path, "").await
}

/// An admin endpoint's status and body.
pub async fn admin(p: &Running, path: &str) -> (u16, String) {
    let (status, _, body) = get(p.admin.unwrap(), path).await.unwrap();
    (status, body)
}

/// What a scripted upstream saw: (method, host, path, body).
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, String)>>>;

/// An upstream whose status for the n-th request (0-based) is `status(n)`; it records what
/// it saw.
pub async fn scripted_upstream(name: &'static str, status: fn(usize) -> u16) -> (SocketAddr, Seen) {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Default::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = {
                                let mut v = seen.lock().unwrap();
                                v.push((
                                    parts.method.to_string(),
                                    parts
                                        .headers
                                        .get("host")
                                        .and_then(|h| h.to_str().ok())
                                        .unwrap_or("")
                                        .to_string(),
                                    parts.uri.path().to_string(),
                                    String::from_utf8_lossy(&body).into_owned(),
                                ));
                                v.len() - 1
                            };
                            let resp = hyper::Response::builder()
                                .status(status(n))
                                .header("x-upstream", name)
                                .body(Full::new(Bytes::from(name)))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Starts the proxy from a static bootstrap (listener on port 0, admin on port 0): `routes`
/// is the YAML list of the virtual host's routes, `clusters` the YAML list of clusters.
pub async fn static_proxy(routes: &str, clusters: &str) -> (Running, SocketAddr) {
    static_proxy_with("", routes, clusters).await
}

/// Like [`static_proxy`], with more HTTP connection manager fields (`key: value`, one line).
pub async fn static_proxy_with(hcm: &str, routes: &str, clusters: &str) -> (Running, SocketAddr) {
    // The router alone, unless the caller gives its own filter chain.
    let router = r#"http_filters: [ { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } } ]"#;
    let filters = if hcm.contains("http_filters:") {
        ""
    } else {
        router
    };
    let yaml = format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          {hcm}
          route_config: {{ name: r, virtual_hosts: [ {{ name: v, domains: ["*"], routes: {routes} }} ] }}
          {filters}
  clusters: {clusters}
"#
    );
    let options = Options {
        config_yaml: Some(yaml),
        drain_time: Duration::from_secs(1),
        ..Options::default()
    };
    let p = SentinelApp::new(options).unwrap().start().await.unwrap();
    let addr = listener_addr(&p, "l").await;
    (p, addr)
}

/// A STATIC cluster's YAML with these endpoints.
pub fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}", a.port()))
        .collect();
    format!(
        "{{ name: {name}, type: STATIC, connect_timeout: 0.5s, load_assignment: {{ cluster_name: {name}, endpoints: [ {{ lb_endpoints: [ {} ] }} ] }} }}",
        eps.join(", ")
    )
}

/// A free loopback port with nothing listening on it.
pub fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTP/1.1 request with a body; returns (status, headers text, body).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    send_with(addr, method, path, &[], body).await
}

/// `send` with extra request headers.
pub async fn send_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}", body.len())
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

/// An upstream that answers 200 with its name after `delay`.
pub async fn slow_upstream(name: &'static str, delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A STATIC cluster whose one endpoint speaks HTTP/2 (gRPC services).
pub fn h2_cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        "{{ name: {name}, type: STATIC, connect_timeout: 1s, typed_extension_protocol_options: {{ envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{ \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {{ http2_protocol_options: {{}} }} }} }}, load_assignment: {{ cluster_name: {name}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }} ] }} ] }} }}",
        addr.port()
    )
}
