//! External processing (ext_proc) end to end, in process, with a scripted processor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sentinel_proto::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, processing_response::Response, CommonResponse, HeaderMutation,
    HeadersResponse, ImmediateResponse,
};
use test_support::*;

/// Looks at `:path`: /blocked gets a 403, /slow is answered too late, anything else gets
/// its path rewritten to /rewritten, an added header, and a try at changing `host` (which the
/// default mutation rules refuse). Response headers get `x-resp-proc`.
#[derive(Clone, Default)]
struct Processor {
    calls: Arc<AtomicUsize>,
}

fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn header(
    req: &sentinel_proto::pb::envoy::service::ext_proc::v3::HttpHeaders,
    name: &str,
) -> Option<String> {
    req.headers
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

/// The answer to one message (see [`Processor`]).
fn answer(request: Request) -> Reply {
    let response = match request {
        Request::RequestHeaders(h) => match header(&h, ":path").as_deref() {
            Some("/blocked") => Response::ImmediateResponse(ImmediateResponse {
                status: Some(sentinel_proto::pb::envoy::r#type::v3::HttpStatus { code: 403 }),
                headers: Some(HeaderMutation {
                    set_headers: vec![set("x-why", "policy")],
                    ..Default::default()
                }),
                body: b"denied".to_vec(),
                ..Default::default()
            }),
            Some("/slow") => {
                let late = Response::RequestHeaders(HeadersResponse::default());
                return Reply::After(Duration::from_millis(500), late);
            }
            _ => Response::RequestHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: vec![
                            set(":path", "/rewritten"),
                            set("x-added", "1"),
                            set("host", "evil.example"),
                        ],
                        remove_headers: vec!["x-secret".into()],
                    }),
                    ..Default::default()
                }),
            }),
        },
        Request::ResponseHeaders(_) => Response::ResponseHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers: vec![set("x-resp-proc", "1")],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        _ => return Reply::Skip,
    };
    Reply::Send(response)
}

/// An upstream, a processor, and the clusters for both.
async fn setup() -> (SocketAddr, Processor, String) {
    let up = upstream("up").await;
    let (proc_addr, p) = processor().await;
    let clusters = format!(
        "[ {}, {} ]",
        static_cluster("up", &[up]),
        h2_cluster("proc", proc_addr)
    );
    (up, p, clusters)
}

async fn processor() -> (SocketAddr, Processor) {
    let p = Processor::default();
    let calls = p.calls.clone();
    let addr = ext_proc_processor(move |_: &mut (), request| {
        calls.fetch_add(1, Ordering::SeqCst);
        answer(request)
    })
    .await;
    (addr, p)
}

fn filter(allow_failure: bool) -> String {
    format!(
        r#"http_filters: [ {{ name: envoy.filters.http.ext_proc, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, grpc_service: {{ envoy_grpc: {{ cluster_name: proc }} }}, failure_mode_allow: {allow_failure}, message_timeout: 0.2s }} }}, {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }} ]"#
    )
}

const ROUTES: &str = r#"[
  { match: { prefix: /noproc }, route: { cluster: up }, typed_per_filter_config: { envoy.filters.http.ext_proc: { "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true } } },
  { match: { prefix: / }, route: { cluster: up } }
]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_mutates_headers_both_ways_within_the_rules() {
    let (_, _, clusters) = setup().await;
    let (_p, addr) = static_proxy_with(&filter(false), ROUTES, &clusters).await;
    let (s, h, b) = get(addr, "/original").await.unwrap();
    assert_eq!((s, b.as_str()), (200, "up"));
    assert!(
        h.contains("x-seen-path: /rewritten"),
        "the processor's :path applies: {h}"
    );
    assert!(
        h.contains("x-seen-host: test.local"),
        "host is not the processor's to change: {h}"
    );
    assert!(
        h.contains("x-resp-proc: 1"),
        "response headers were processed: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_response_and_per_route_disable() {
    let (_, p, clusters) = setup().await;
    let (_p, addr) = static_proxy_with(&filter(false), ROUTES, &clusters).await;
    let (s, h, b) = get(addr, "/blocked").await.unwrap();
    assert_eq!((s, b.as_str()), (403, "denied"));
    assert!(h.contains("x-why: policy"), "{h}");
    let before = p.calls.load(Ordering::SeqCst);
    let (s, h, _) = get(addr, "/noproc").await.unwrap();
    assert_eq!(s, 200);
    assert!(h.contains("x-seen-path: /noproc"), "{h}");
    assert_eq!(
        p.calls.load(Ordering::SeqCst),
        before,
        "a disabled route never reaches the processor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_timeout_follows_failure_mode_allow() {
    let (up, _, clusters) = setup().await;
    let (_p, strict) = static_proxy_with(&filter(false), ROUTES, &clusters).await;
    assert_eq!(get(strict, "/slow").await.unwrap().0, 504);
    let (_q, lenient) = static_proxy_with(&filter(true), ROUTES, &clusters).await;
    assert_eq!(get(lenient, "/slow").await.unwrap().0, 200);
    // A processor that is not there at all: 500, or pass with failure_mode_allow.
    let gone = format!(
        "[ {}, {} ]",
        static_cluster("up", &[up]),
        h2_cluster("proc", dead_port())
    );
    let (_r, strict) = static_proxy_with(&filter(false), ROUTES, &gone).await;
    assert_eq!(get(strict, "/x").await.unwrap().0, 500);
}
