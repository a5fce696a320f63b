//! ext_proc FULL_DUPLEX_STREAMED request bodies end to end, in process: the processor's
//! answers need not match the chunks it was sent, in number or in size.

use std::net::SocketAddr;

use sentinel::Running;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    body_mutation, external_processor_server::ExternalProcessor,
    external_processor_server::ExternalProcessorServer, processing_request::Request,
    processing_response::Response, BodyMutation, BodyResponse, CommonResponse, HeadersResponse,
    ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
};
use test_support::*;

/// Keeps the whole body and answers once, at its end, with the body upper-cased in pieces
/// of 1000 bytes: fewer answers than chunks, and of other sizes.
#[derive(Clone, Default)]
struct Regrouping;

fn streamed(body: &[u8], end_of_stream: bool) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestBody(BodyResponse {
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
        })),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Regrouping {
    type ProcessStream =
        tokio_stream::wrappers::ReceiverStream<Result<ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        req: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut body = Vec::new();
            while let Ok(Some(msg)) = inbound.message().await {
                let answers = match msg.request {
                    Some(Request::RequestHeaders(_)) => vec![ProcessingResponse {
                        response: Some(Response::RequestHeaders(HeadersResponse::default())),
                        ..Default::default()
                    }],
                    Some(Request::RequestBody(b)) => {
                        body.extend_from_slice(&b.body);
                        if !b.end_of_stream {
                            continue;
                        }
                        let upper = body.to_ascii_uppercase();
                        let pieces: Vec<&[u8]> = upper.chunks(1000).collect();
                        let n = pieces.len();
                        pieces
                            .iter()
                            .enumerate()
                            .map(|(i, p)| streamed(p, i + 1 == n))
                            .collect()
                    }
                    Some(Request::ResponseHeaders(_)) => vec![ProcessingResponse {
                        response: Some(Response::ResponseHeaders(HeadersResponse::default())),
                        ..Default::default()
                    }],
                    _ => continue,
                };
                for a in answers {
                    if tx.send(Ok(a)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

async fn setup() -> (Running, SocketAddr, Seen) {
    let (up, seen) = scripted_upstream("up", |_| 200).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proc_addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(Regrouping))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
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
