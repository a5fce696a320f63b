//! ext_proc request body modes end to end, in process, with a scripted processor.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sentinel::Running;
use sentinel_proto::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request::Request, processing_response::Response, BodyMutation,
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
};
use test_support::*;

/// Per stream, by the request's `:path`: `/same` upper-cases the body, `/grow` appends `!` to
/// every chunk, `/deny` answers the body with a 403, `/bye` ends the stream instead. It records every body message it gets as
/// (length, end_of_stream).
#[derive(Clone, Default)]
struct BodyProcessor {
    bodies: Arc<Mutex<Vec<(usize, bool)>>>,
}

fn path_of(h: &sentinel_proto::pb::envoy::service::ext_proc::v3::HttpHeaders) -> String {
    h.headers
        .as_ref()
        .and_then(|m| m.headers.iter().find(|v| v.key == ":path"))
        .map(|v| String::from_utf8_lossy(&v.raw_value).into_owned())
        .unwrap_or_default()
}

fn body_answer(path: &str, body: &[u8]) -> Response {
    let replaced = match path {
        "/same" => body.to_ascii_uppercase(),
        "/grow" => [body, b"!"].concat(),
        "/deny" => {
            return Response::ImmediateResponse(ImmediateResponse {
                status: Some(sentinel_proto::pb::envoy::r#type::v3::HttpStatus { code: 403 }),
                headers: Some(HeaderMutation {
                    set_headers: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "x-why".into(),
                            raw_value: b"body".to_vec(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                body: b"body denied".to_vec(),
                ..Default::default()
            })
        }
        _ => body.to_vec(),
    };
    Response::RequestBody(BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::Body(replaced)),
            }),
            ..Default::default()
        }),
    })
}

impl BodyProcessor {
    /// Serves it; the stream's state is the request's `:path`.
    async fn serve(&self) -> SocketAddr {
        let bodies = self.bodies.clone();
        ext_proc_processor(move |path: &mut String, request| {
            Reply::Send(match request {
                Request::RequestHeaders(h) => {
                    *path = path_of(&h);
                    Response::RequestHeaders(HeadersResponse::default())
                }
                Request::RequestBody(_) if path == "/bye" => return Reply::End,
                Request::RequestBody(b) => {
                    bodies.lock().unwrap().push((b.body.len(), b.end_of_stream));
                    body_answer(path, &b.body)
                }
                Request::ResponseHeaders(_) => {
                    Response::ResponseHeaders(HeadersResponse::default())
                }
                _ => return Reply::Skip,
            })
        })
        .await
    }
}

/// A proxy whose ext_proc filter sends request bodies as `mode` says, a recording upstream,
/// and the processor.
async fn setup(mode: &str) -> (Running, SocketAddr, Seen, BodyProcessor) {
    setup_with(mode, "").await
}

/// Like [`setup`], with more ExternalProcessor fields (`, key: value`).
async fn setup_with(mode: &str, extra: &str) -> (Running, SocketAddr, Seen, BodyProcessor) {
    let (up, seen) = scripted_upstream("up", |_| 200).await;
    let p = BodyProcessor::default();
    let proc_addr = p.serve().await;
    let clusters = format!(
        "[ {}, {} ]",
        static_cluster("up", &[up]),
        h2_cluster("proc", proc_addr)
    );
    let hcm = format!(
        r#"http_filters: [ {{ name: envoy.filters.http.ext_proc, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, grpc_service: {{ envoy_grpc: {{ cluster_name: proc }} }}, message_timeout: 1s, processing_mode: {{ request_body_mode: {mode} }}{extra} }} }}, {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }} ]"#
    );
    let (running, addr) = static_proxy_with(
        &hcm,
        "[ { match: { prefix: / }, route: { cluster: up } } ]",
        &clusters,
    )
    .await;
    (running, addr, seen, p)
}

fn upstream_bodies(seen: &Seen) -> Vec<String> {
    seen.lock().unwrap().iter().map(|s| s.3.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_body_is_replaced_once_and_a_length_change_is_500() {
    let (_p, addr, seen, p) = setup("BUFFERED").await;
    let (s, _, b) = send(addr, "POST", "/same", "hello").await.unwrap();
    assert_eq!((s, b.as_str()), (200, "up"));
    assert_eq!(upstream_bodies(&seen), ["HELLO"]);
    assert_eq!(*p.bodies.lock().unwrap(), [(5, true)]);
    // The processor grows a body that had content-length: 5.
    let (s, _, _) = send(addr, "POST", "/grow", "hello").await.unwrap();
    assert_eq!(s, 500);
    // Pingora sent the headers upstream before the body (Envoy holds them); the request is
    // cut there, so no body arrives.
    assert!(
        upstream_bodies(&seen)[1..].iter().all(|b| b.is_empty()),
        "no second body upstream"
    );
    // A request without a body sends no body message.
    let (s, _, _) = get(addr, "/same").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(p.bodies.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_may_change_length() {
    let (_p, addr, seen, p) = setup("STREAMED").await;
    let (s, _, _) = send(addr, "POST", "/grow", "hello").await.unwrap();
    assert_eq!(s, 200);
    let bodies = upstream_bodies(&seen);
    let chunks = p.bodies.lock().unwrap().clone();
    // Each chunk grew by one `!`; the last message ends the stream.
    let bangs = bodies[0].matches('!').count();
    assert_eq!(bodies[0].replace('!', ""), "hello");
    assert_eq!(bangs, chunks.len());
    assert!(chunks.last().unwrap().1, "{chunks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_answered_immediately_and_over_the_buffer_limit() {
    let (_p, addr, seen, _) = setup("BUFFERED").await;
    let (s, h, b) = send(addr, "POST", "/deny", "hello").await.unwrap();
    assert_eq!((s, b.as_str()), (403, "body denied"));
    assert!(h.contains("x-why: body"), "{h}");
    let big = "x".repeat((1 << 20) + 1);
    let (s, _, _) = send(addr, "POST", "/same", &big).await.unwrap();
    assert_eq!(s, 413);
    assert!(
        upstream_bodies(&seen).iter().all(|b| b.is_empty()),
        "no processed body went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_partial_processes_the_first_part_only() {
    let (_p, addr, seen, p) = setup("BUFFERED_PARTIAL").await;
    let big = "x".repeat((1 << 20) + 100_000);
    let (s, _, _) = send(addr, "POST", "/grow", &big).await.unwrap();
    assert_eq!(s, 200);
    let chunks = p.bodies.lock().unwrap().clone();
    assert_eq!(chunks.len(), 1, "one message");
    assert!(chunks[0].0 >= 1 << 20 && !chunks[0].1, "{chunks:?}");
    // The `!` follows the processed part; the rest comes after it, unprocessed.
    let (head, tail) = big.split_at(chunks[0].0);
    assert_eq!(upstream_bodies(&seen), [format!("{head}!{tail}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_mode_sends_the_body_and_ignores_the_answers() {
    let (_p, addr, seen, p) = setup_with("STREAMED", ", observability_mode: true").await;
    let (s, _, _) = send(addr, "POST", "/deny", "hello").await.unwrap();
    assert_eq!(s, 200, "the immediate response is ignored");
    let (s, _, _) = send(addr, "POST", "/grow", "hello").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        upstream_bodies(&seen),
        ["hello", "hello"],
        "no mutation applies"
    );
    // The processor got every body (its answers come after the request went on).
    let got = eventually("the processor saw both bodies", async || {
        let b = p.bodies.lock().unwrap().clone();
        (b.iter().map(|c| c.0).sum::<usize>() == 10).then_some(b)
    })
    .await;
    assert!(got.iter().filter(|c| c.1).count() == 2, "{got:?}");
}

/// Envoy 1.40's counters for the same exchanges (two bodies and a GET, BUFFERED): 3 streams
/// started and closed, 8 messages each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_streams_and_messages_as_envoy() {
    let (p, addr, _, _) = setup_with("BUFFERED", ", stat_prefix: myproc").await;
    assert_eq!(send(addr, "POST", "/same", "hello").await.unwrap().0, 200);
    assert_eq!(send(addr, "POST", "/x", "hello").await.unwrap().0, 200);
    assert_eq!(get(addr, "/x").await.unwrap().0, 200);
    let want = [
        "http.t.ext_proc.myproc.streams_started: 3\n",
        "http.t.ext_proc.myproc.streams_closed: 3\n",
        "http.t.ext_proc.myproc.stream_msgs_sent: 8\n",
        "http.t.ext_proc.myproc.stream_msgs_received: 8\n",
        "http.t.ext_proc.myproc.streams_failed: 0\n",
        "http.t.ext_proc.myproc.message_timeouts: 0\n",
    ];
    eventually("ext_proc stats as Envoy's", async || {
        let (_, text) = admin(&p, "/stats").await;
        want.iter().all(|w| text.contains(w)).then_some(())
    })
    .await;
    assert_eq!(send(addr, "POST", "/deny", "hello").await.unwrap().0, 403);
    let (_, text) = admin(&p, "/stats").await;
    assert!(
        text.contains("http.t.ext_proc.myproc.immediate_responses_sent: 1\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_ends_its_stream_lets_the_body_through() {
    let (_p, addr, seen, _) = setup("BUFFERED").await;
    let (s, _, _) = send(addr, "POST", "/bye", "hello").await.unwrap();
    assert_eq!(s, 200, "ending the stream is not a failure (as Envoy)");
    assert_eq!(upstream_bodies(&seen), ["hello"]);
}
