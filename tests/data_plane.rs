//! The data plane end to end, in process: static bootstrap → Sentinel → hyper upstreams.

use std::time::Duration;

use test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_a_503_under_gateway_error() {
    // First answer 503, then 200.
    let (up, seen) = scripted_upstream("flaky", |n| if n == 0 { 503 } else { 200 }).await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c, retry_policy: { retry_on: gateway-error, num_retries: 2 } } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", static_cluster("c", &[up]))).await;
    let (status, _, body) = send(addr, "POST", "/x", "payload").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "flaky"));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].3, "payload", "the retried attempt carries the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_num_retries_and_pass_the_last_answer() {
    let (up, seen) = scripted_upstream("down", |_| 503).await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c, retry_policy: { retry_on: 5xx, num_retries: 2 } } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", static_cluster("c", &[up]))).await;
    let (status, _, body) = get(addr, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "down"));
    assert_eq!(seen.lock().unwrap().len(), 3, "one try and two retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_policy_means_one_attempt() {
    let (up, seen) = scripted_upstream("down", |_| 503).await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", static_cluster("c", &[up]))).await;
    assert_eq!(get(addr, "/").await.unwrap().0, 503);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_host() {
    let (up, _) = scripted_upstream("alive", |_| 200).await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c, retry_policy: { retry_on: connect-failure, num_retries: 1 } } } ]";
    let (_p, addr) = static_proxy(
        routes,
        &format!("[ {} ]", static_cluster("c", &[dead_port(), up])),
    )
    .await;
    for _ in 0..4 {
        let (status, _, body) = get(addr, "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "alive"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_shadow_copy_with_the_body() {
    let (main, _) = scripted_upstream("main", |_| 200).await;
    let (shadow, seen) = scripted_upstream("shadow", |_| 500).await;
    let routes = "[ { match: { prefix: / }, route: { cluster: main, request_mirror_policies: [ { cluster: shadow } ] } } ]";
    let clusters = format!(
        "[ {}, {} ]",
        static_cluster("main", &[main]),
        static_cluster("shadow", &[shadow])
    );
    let (_p, addr) = static_proxy(routes, &clusters).await;
    let (status, _, body) = send(addr, "POST", "/m", "copy me").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "main"),
        "the shadow's 500 does not matter"
    );
    let got = eventually("the shadow request", async || {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        got,
        (
            "POST".into(),
            "test.local-shadow".into(),
            "/m".into(),
            "copy me".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_match_envoy() {
    let (up, _) = scripted_upstream("up", |_| 200).await;
    let routes = r#"[
      { match: { path: /direct }, direct_response: { status: 418, body: { inline_string: "teapot" } } },
      { match: { prefix: /old }, redirect: { prefix_rewrite: /new, response_code: PERMANENT_REDIRECT } },
      { match: { prefix: /missing }, route: { cluster: nope } },
      { match: { prefix: /dead }, route: { cluster: dead } },
      { match: { prefix: /empty }, route: { cluster: empty } },
      { match: { prefix: /slow }, route: { cluster: c, timeout: 0.2s } },
      { match: { prefix: /ok }, route: { cluster: c } }
    ]"#;
    let clusters = format!(
        "[ {}, {}, {{ name: empty, type: STATIC, connect_timeout: 1s }} ]",
        static_cluster("c", &[up]),
        static_cluster("dead", &[dead_port()])
    );
    let (_p, addr) = static_proxy(routes, &clusters).await;
    let (s, h, b) = get(addr, "/direct").await.unwrap();
    assert_eq!((s, b.as_str()), (418, "teapot"));
    assert!(h.contains("server: envoy"), "{h}");
    let (s, h, _) = get(addr, "/old/x?q=1").await.unwrap();
    assert_eq!(s, 308);
    assert!(h.contains("location: http://test.local/new/x?q=1"), "{h}");
    assert_eq!(get(addr, "/nothing-matches-this").await.unwrap().0, 404);
    assert_eq!(get(addr, "/missing").await.unwrap().0, 503);
    let (s, _, b) = get(addr, "/empty").await.unwrap();
    assert_eq!((s, b.as_str()), (503, "no healthy upstream"));
    let (s, _, b) = get(addr, "/dead").await.unwrap();
    assert_eq!(s, 503);
    assert!(
        b.starts_with("upstream connect error or disconnect/reset before headers"),
        "{b}"
    );
    let (s, h, _) = get(addr, "/ok").await.unwrap();
    assert_eq!(s, 200);
    assert!(h.contains("x-envoy-upstream-service-time:"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_504() {
    let stall = stalling_upstream().await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c, timeout: 0.3s } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", static_cluster("c", &[stall]))).await;
    let start = std::time::Instant::now();
    let (s, _, b) = get(addr, "/").await.unwrap();
    assert_eq!((s, b.as_str()), (504, "upstream request timeout"));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (up, _) = scripted_upstream("up", |_| 200).await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", static_cluster("c", &[up]))).await;
    let big = "a".repeat(70 * 1024);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&buf[..40.min(buf.len())])
    );
}

/// An upstream that accepts connections and never answers.
async fn stalling_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_spans_all_retries() {
    let stall = stalling_upstream().await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c, timeout: 0.6s, retry_policy: { retry_on: 5xx, num_retries: 5, per_try_timeout: 0.25s } } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", static_cluster("c", &[stall]))).await;
    let start = std::time::Instant::now();
    let (s, _, b) = get(addr, "/").await.unwrap();
    assert_eq!((s, b.as_str()), (504, "upstream request timeout"));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1400),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_408() {
    let (up, _) = scripted_upstream("up", |_| 200).await;
    let routes = "[ { match: { prefix: / }, route: { cluster: c } } ]";
    let (_p, addr) = static_proxy_with(
        "request_timeout: 0.3s",
        routes,
        &format!("[ {} ]", static_cluster("c", &[up])),
    )
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.ends_with("request timeout"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_clusters_resolve_names() {
    let (up, _) = scripted_upstream("by-name", |_| 200).await;
    let cluster = |name: &str, kind: &str| {
        format!(
            "{{ name: {name}, type: {kind}, dns_lookup_family: V4_ONLY, dns_refresh_rate: 1s, connect_timeout: 1s, load_assignment: {{ cluster_name: {name}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {} }} }} }} }} ] }} ] }} }}",
            up.port()
        )
    };
    let routes = "[ { match: { prefix: /strict }, route: { cluster: strict } }, { match: { prefix: /logical }, route: { cluster: logical } } ]";
    let clusters = format!(
        "[ {}, {} ]",
        cluster("strict", "STRICT_DNS"),
        cluster("logical", "LOGICAL_DNS")
    );
    let (_p, addr) = static_proxy(routes, &clusters).await;
    for path in ["/strict", "/logical"] {
        let (s, _, b) = get(addr, path).await.unwrap();
        assert_eq!((s, b.as_str()), (200, "by-name"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_requests_under_envoy_names() {
    let (up, _) = scripted_upstream("up", |n| if n == 0 { 503 } else { 200 }).await;
    let routes = "[ { match: { prefix: /r }, route: { cluster: c, retry_policy: { retry_on: 5xx } } }, { match: { prefix: /dead }, route: { cluster: dead } } ]";
    let clusters = format!(
        "[ {}, {} ]",
        static_cluster("c", &[up]),
        static_cluster("dead", &[dead_port()])
    );
    let (p, addr) = static_proxy(routes, &clusters).await;
    assert_eq!(get(addr, "/r").await.unwrap().0, 200);
    assert_eq!(get(addr, "/dead").await.unwrap().0, 503);
    assert_eq!(get(addr, "/none").await.unwrap().0, 404);
    // Refused by the codec checks: still requests, and a protocol error.
    assert_eq!(
        raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
        )
        .await,
        "HTTP/1.1 501 Not Implemented"
    );
    let (_, stats) = admin(&p, "/stats").await;
    for line in [
        "http.t.downstream_rq_total: 4",
        "http.t.downstream_rq_http1_total: 4",
        "http.t.downstream_cx_total: 4",
        "http.t.downstream_cx_http1_total: 4",
        "http.t.downstream_cx_protocol_error: 1",
        "http.t.downstream_rq_2xx: 1",
        "http.t.downstream_rq_4xx: 1",
        "http.t.downstream_rq_5xx: 2",
        "http.t.no_route: 1",
        "cluster.c.upstream_rq_total: 2",
        "cluster.c.upstream_rq_retry: 1",
        "cluster.c.upstream_rq_5xx: 1",
        "cluster.c.upstream_rq_2xx: 1",
        "cluster.dead.upstream_cx_connect_fail: 1",
        "cluster.c.membership_total: 1",
    ] {
        assert!(
            stats.contains(&format!("{line}\n")),
            "{line} missing in\n{stats}"
        );
    }
    let (_, prom) = admin(&p, "/stats/prometheus").await;
    assert!(
        prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"c\"} 2"),
        "{prom}"
    );
}

/// Sends raw bytes, returns the status line.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_envoys_status_codes() {
    let routes = r#"[ { match: { prefix: / }, direct_response: { status: 200, body: { inline_string: ok } } } ]"#;
    let (_p, addr) = static_proxy(routes, "[]").await;
    // Shorter than the HTTP/2 preface: must not wait for more bytes.
    assert_eq!(
        raw(addr, b"GET / HTTP/1.1\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        raw(addr, b"GET / HTTP/1.0\r\n\r\n").await,
        "HTTP/1.1 426 Upgrade Required"
    );
    assert_eq!(
        raw(addr, b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        raw(addr, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").await,
        "HTTP/1.1 404 Not Found"
    );
    let many: Vec<u8> = (0..150)
        .flat_map(|i| format!("x-h{i}: v\r\n").into_bytes())
        .collect();
    let req = [b"GET / HTTP/1.1\r\nHost: x\r\n".as_slice(), &many, b"\r\n"].concat();
    assert_eq!(
        raw(addr, &req).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_is_served_with_accept_http_10() {
    let routes = r#"[ { match: { prefix: / }, direct_response: { status: 200, body: { inline_string: ok } } } ]"#;
    let (_p, addr) = static_proxy_with(
        "http_protocol_options: { accept_http_10: true }",
        routes,
        "[]",
    )
    .await;
    let status = raw(addr, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(status.ends_with(" 200 OK"), "{status}");
}

/// Reads from `s` until `n` complete responses (content-length framed) have arrived.
async fn read_responses(s: &mut tokio::net::TcpStream, n: usize) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let complete = |out: &[u8]| {
        let text = String::from_utf8_lossy(out);
        text.matches("HTTP/1.1 ").count() >= n && text.ends_with("ok")
    };
    while !complete(&out) {
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the responses in time")
            .unwrap();
        if read == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_keep_alive_requests_are_each_answered() {
    use tokio::io::AsyncWriteExt;
    let routes = r#"[ { match: { prefix: / }, direct_response: { status: 200, body: { inline_string: ok } } } ]"#;
    let (_p, addr) = static_proxy(routes, "[]").await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Two requests in one write: the second must not be lost with the first's read.
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let both = read_responses(&mut s, 2).await;
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
    // A direct response to a POST whose body was not read closes the connection, as in Envoy.
    let mut post = tokio::net::TcpStream::connect(addr).await.unwrap();
    post.write_all(b"POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let third = read_responses(&mut post, 1).await;
    assert!(third.starts_with("HTTP/1.1 200 OK"), "{third}");
    assert!(third.contains("onnection: close\r\n"), "{third}");
    // A bad head after good ones gets the codec's answer, and the connection closes.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the close in time")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{rest}");
    assert!(
        rest.ends_with("connection: close\r\n\r\nBad Request"),
        "{rest}"
    );
}

/// Envoy's HTTP/1 codec writes every header name lowercase, whatever case the client or the
/// upstream used, and the standard reason phrase; so does Sentinel (its Pingora keeps neither:
/// vendor/pingora-core/SENTINEL-PATCH.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_are_written_lowercase() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the proxy closed before a whole head");
            head.extend_from_slice(&chunk[..n]);
        }
        let _ = seen_tx.send(String::from_utf8_lossy(&head).into_owned());
        let answer = b"HTTP/1.1 200 Fine\r\nX-Upstream-Header: a\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        s.write_all(answer).await.unwrap();
        let _ = s.read(&mut chunk).await;
    });
    let routes = "[ { match: { prefix: / }, route: { cluster: c } } ]";
    let (_p, addr) = static_proxy(routes, &format!("[ {} ]", static_cluster("c", &[up]))).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: h.example\r\nX-Client-Header: b\r\nUser-Agent: t\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = read_responses(&mut s, 1).await;
    let seen = tokio::time::timeout(Duration::from_secs(5), seen_rx)
        .await
        .expect("the upstream saw a request")
        .unwrap();
    let names = |head: &str| -> Vec<String> {
        head.split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
            .collect()
    };
    for (what, head) in [("upstream request", &seen), ("response", &resp)] {
        let names = names(head);
        assert!(names.len() >= 3, "{what}: {head}");
        assert!(
            names.iter().all(|n| *n == n.to_ascii_lowercase()),
            "{what}: {names:?}"
        );
    }
    assert!(seen.contains("\r\nx-client-header: b\r\n"), "{seen}");
    assert!(resp.contains("\r\nx-upstream-header: a\r\n"), "{resp}");
    assert!(resp.contains("\r\ncontent-length: 2\r\n"), "{resp}");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
}
