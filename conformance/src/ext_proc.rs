//! A scripted ext_proc server for cases: answers request and response headers as the case's
//! `ext_proc` script says (mutations, immediate responses, delays).

use std::time::Duration;

use sentinel_proto::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use sentinel_proto::pb::envoy::r#type::v3::HttpStatus;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request,
    processing_response::Response,
    CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ImmediateResponse,
    ProcessingRequest, ProcessingResponse,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::case::{ExtProcAnswer, ExtProcScript};

struct Scripted(ExtProcScript);

fn option(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pseudo(h: &HttpHeaders, name: &str) -> Option<String> {
    let headers = &h.headers.as_ref()?.headers;
    headers.iter().find(|v| v.key == name).map(|v| {
        if v.raw_value.is_empty() {
            v.value.clone()
        } else {
            String::from_utf8_lossy(&v.raw_value).into_owned()
        }
    })
}

/// The message for an answer, as a request- or response-headers reply.
async fn reply(answer: &ExtProcAnswer, request_phase: bool) -> Response {
    if let Some(ms) = answer.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(i) = &answer.immediate {
        return Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i.status as i32,
            }),
            headers: Some(HeaderMutation {
                set_headers: i.headers.iter().map(|(k, v)| option(k, v)).collect(),
                ..Default::default()
            }),
            body: i.body.as_bytes().to_vec(),
            ..Default::default()
        });
    }
    let common = CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers: answer.set.iter().map(|(k, v)| option(k, v)).collect(),
            remove_headers: answer.remove.clone(),
        }),
        clear_route_cache: answer.clear_route_cache,
        ..Default::default()
    };
    let headers = HeadersResponse {
        response: Some(common),
    };
    if request_phase {
        Response::RequestHeaders(headers)
    } else {
        Response::ResponseHeaders(headers)
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Scripted {
    type ProcessStream =
        tokio_stream::wrappers::ReceiverStream<Result<ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        req: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let script = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let response = match &msg.request {
                    Some(Request::RequestHeaders(h)) => {
                        let path = pseudo(h, ":path").unwrap_or_default();
                        let path = path.split('?').next().unwrap_or_default();
                        reply(script.paths.get(path).unwrap_or(&script.request), true).await
                    }
                    Some(Request::ResponseHeaders(_)) => reply(&script.response, false).await,
                    _ => continue,
                };
                let msg = ProcessingResponse {
                    response: Some(response),
                    ..Default::default()
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// Serves the script on `listener` until the task is aborted.
pub fn serve(listener: TcpListener, script: ExtProcScript) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(Scripted(script)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    })
}
