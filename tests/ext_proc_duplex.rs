//! ext_proc FULL_DUPLEX_STREAMED request bodies end to end, in process: the processor's
//! answers need not match the chunks it was sent, in number or in size.

use std::net::SocketAddr;

use sentinel::Running;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request::Request, processing_response::Response, BodyMutation,
    BodyResponse, CommonResponse, HeadersResponse, StreamedBodyResponse,
};
use test_support::*;

fn streamed(body: &[u8], end_of_stream: bool) -> Response {
    Response::RequestBody(BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body: body.to_vec(),
                        end_of_stream,
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        }),
    })
}

/// A processor that keeps the whole body and answers once, at its end, with the body
/// upper-cased in pieces of 1000 bytes: fewer answers than chunks, and of other sizes.
async fn regrouping() -> SocketAddr {
    ext_proc_processor(|body: &mut Vec<u8>, request| match request {
        Request::RequestHeaders(_) => {
            Reply::Send(Response::RequestHeaders(HeadersResponse::default()))
        }
        Request::RequestBody(b) => {
            body.extend_from_slice(&b.body);
            if !b.end_of_stream {
                return Reply::Skip;
            }
            let upper = body.to_ascii_uppercase();
            let pieces: Vec<&[u8]> = upper.chunks(1000).collect();
            let n = pieces.len();
            let answers = pieces
                .iter()
                .enumerate()
                .map(|(i, p)| streamed(p, i + 1 == n));
            Reply::Many(answers.collect())
        }
        Request::ResponseHeaders(_) => {
            Reply::Send(Response::ResponseHeaders(HeadersResponse::default()))
        }
        _ => Reply::Skip,
    })
    .await
}

async fn setup() -> (Running, SocketAddr, Seen) {
    let (up, seen) = scripted_upstream("up", |_| 200).await;
    let proc_addr = regrouping().await;
    let clusters = format!(
        "[ {}, {} ]",
        static_cluster("up", &[up]),
        h2_cluster("proc", proc_addr)
    );
    let hcm = r#"http_filters: [ { name: envoy.filters.http.ext_proc, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, grpc_service: { envoy_grpc: { cluster_name: proc } }, processing_mode: { request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND } } }, { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } } ]"#;
    let (running, addr) = static_proxy_with(
        hcm,
        "[ { match: { prefix: / }, route: { cluster: up } } ]",
        &clusters,
    )
    .await;
    (running, addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_body_comes_back_regrouped_and_whole() {
    let (_p, addr, seen) = setup().await;
    let body: String = (0..300_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let (s, _, b) = send(addr, "POST", "/x", &body).await.unwrap();
    assert_eq!((s, b.as_str()), (200, "up"));
    let got = seen.lock().unwrap()[0].3.clone();
    assert_eq!(got.len(), body.len());
    assert!(
        got == body.to_ascii_uppercase(),
        "the processed body, in order"
    );
}
