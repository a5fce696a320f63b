//! ext_proc response body modes end to end, in process: what the conformance cases cannot
//! show against Envoy without a huge body or a second processor.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use sentinel::Running;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request::Request, processing_response::Response, BodyMutation,
    BodyResponse, CommonResponse, HeadersResponse,
};
use test_support::*;

/// A processor that appends `mark` to every response body message it gets; the returned
/// list records each message as (length, end_of_stream).
async fn processor(mark: &'static str) -> (SocketAddr, Bodies) {
    let bodies = Bodies::default();
    let seen = bodies.clone();
    let addr = ext_proc_processor(move |_: &mut (), request| {
        Reply::Send(match request {
            Request::RequestHeaders(_) => Response::RequestHeaders(HeadersResponse::default()),
            Request::ResponseHeaders(_) => Response::ResponseHeaders(HeadersResponse::default()),
            Request::ResponseBody(b) => {
                seen.lock().unwrap().push((b.body.len(), b.end_of_stream));
                let body = [b.body.as_slice(), mark.as_bytes()].concat();
                Response::ResponseBody(BodyResponse {
                    response: Some(CommonResponse {
                        body_mutation: Some(BodyMutation {
                            mutation: Some(body_mutation::Mutation::Body(body)),
                        }),
                        ..Default::default()
                    }),
                })
            }
            _ => return Reply::Skip,
        })
    })
    .await;
    (addr, bodies)
}

type Bodies = Arc<Mutex<Vec<(usize, bool)>>>;

/// The length of `/big`'s body: past the default buffer limit (1 MiB).
const BIG: usize = (1 << 20) + 100_000;

/// An upstream answering `/big` with `BIG` bytes of `x`, anything else with `hello`.
async fn body_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
                let body = match req.uri().path() {
                    "/big" => "x".repeat(BIG),
                    _ => "hello".to_string(),
                };
                async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
            );
        }
    });
    addr
}

fn ext_proc(name: &str, cluster: &str, mode: &str) -> String {
    format!(
        r#"{{ name: {name}, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, grpc_service: {{ envoy_grpc: {{ cluster_name: {cluster} }} }}, message_timeout: 2s, processing_mode: {{ response_body_mode: {mode} }} }} }}"#
    )
}

/// A proxy with one ext_proc filter per (mark, mode), in that order, before the router.
async fn setup(filters: &[(&'static str, &str)]) -> (Running, SocketAddr, Vec<Bodies>) {
    let up = body_upstream().await;
    let mut clusters = vec![static_cluster("up", &[up])];
    let mut chain = Vec::new();
    let mut procs = Vec::new();
    for (i, (mark, mode)) in filters.iter().enumerate() {
        let (addr, p) = processor(mark).await;
        let cluster = format!("proc{i}");
        clusters.push(h2_cluster(&cluster, addr));
        chain.push(ext_proc(&format!("ext_proc_{i}"), &cluster, mode));
        procs.push(p);
    }
    chain.push(r#"{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }"#.into());
    let hcm = format!("http_filters: [ {} ]", chain.join(", "));
    let (running, addr) = static_proxy_with(
        &hcm,
        "[ { match: { prefix: / }, route: { cluster: up } } ]",
        &format!("[ {} ]", clusters.join(", ")),
    )
    .await;
    (running, addr, procs)
}

/// Envoy encodes responses through its filters in reverse order: the filter next to the
/// router sees the upstream's body first, and the first filter has the last word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_see_the_response_body_in_reverse_filter_order() {
    let (_p, addr, procs) = setup(&[("A", "BUFFERED"), ("B", "STREAMED")]).await;
    let (s, h, b) = get(addr, "/x").await.unwrap();
    assert_eq!((s, dechunk(&b).as_str()), (200, "helloBA"), "{h}");
    assert!(!h.contains("content-length"), "STREAMED drops it: {h}");
    assert_eq!(*procs[1].lock().unwrap(), [(5, true)]);
    assert_eq!(*procs[0].lock().unwrap(), [(6, true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_partial_response_processes_the_first_part_only() {
    let (_p, addr, procs) = setup(&[("!", "BUFFERED_PARTIAL")]).await;
    let (s, _, b) = get(addr, "/big").await.unwrap();
    assert_eq!(s, 200);
    let chunks = procs[0].lock().unwrap().clone();
    assert_eq!(chunks.len(), 1, "one message");
    let (len, eos) = chunks[0];
    assert!(len > 1 << 20 && !eos, "{chunks:?}");
    // The mark follows the processed part; the rest comes after it, unprocessed.
    let body = dechunk(&b);
    assert_eq!(body.len(), BIG + 1);
    assert_eq!(
        body.find('!'),
        Some(len),
        "the mark after the first {len} bytes"
    );
}

/// A chunked HTTP/1 body's data.
fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        text = &rest[n + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_response_past_the_buffer_limit_is_500() {
    let (_p, addr, procs) = setup(&[("!", "BUFFERED")]).await;
    let (s, _, b) = get(addr, "/big").await.unwrap();
    assert_eq!((s, b.as_str()), (500, "Internal Server Error"));
    assert!(procs[0].lock().unwrap().is_empty(), "no body message");
}
