//! A scripted ext_proc server for cases: answers headers and bodies, both ways, as the case's
//! `ext_proc` script says (mutations, immediate responses, delays).

use std::collections::BTreeMap;
use std::time::Duration;

use sentinel_proto::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use sentinel_proto::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use sentinel_proto::pb::envoy::r#type::v3::HttpStatus;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    body_mutation,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request,
    processing_response::Response,
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    HttpTrailers, ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse,
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

/// What one stream's processor got so far, for `report`.
#[derive(Default)]
struct Seen {
    request_eos: Option<bool>,
    body: Vec<u8>,
    body_eos: Option<bool>,
    body_msgs: usize,
    /// The attributes each message carried, by message kind, as `kind{key=value;...}`.
    attributes: Vec<String>,
    /// The names in the response trailers message.
    trailers: Vec<String>,
    /// The names in the request trailers message.
    request_trailers: Vec<String>,
    /// The kinds of the messages so far, in order.
    kinds: Vec<&'static str>,
    response_body_msgs: usize,
}

/// A message's `attributes` (the ext_proc filter's Struct) as `key=value;...`, keys sorted.
fn attributes(msg: &ProcessingRequest) -> Option<String> {
    use sentinel_proto::pb::google::protobuf::value::Kind;
    let fields = &msg.attributes.get("envoy.filters.http.ext_proc")?.fields;
    let mut pairs: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let v = match &v.kind {
                Some(Kind::StringValue(s)) => format!("'{s}'"),
                Some(Kind::NumberValue(n)) => n.to_string(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                Some(Kind::NullValue(_)) => "null".into(),
                other => format!("{other:?}"),
            };
            format!("{k}={v}")
        })
        .collect();
    pairs.sort();
    Some(pairs.join(";"))
}

impl Seen {
    fn headers(&self) -> Vec<HeaderValueOption> {
        if !self.trailers.is_empty() {
            return vec![option("x-proc-trailers", &self.trailers.join(","))];
        }
        let flag = |b: Option<bool>| b.map_or("none".to_string(), |b| b.to_string());
        let mut out = Vec::new();
        if !self.request_trailers.is_empty() {
            out.push(option(
                "x-proc-request-trailers",
                &self.request_trailers.join(","),
            ));
            out.push(option("x-proc-messages", &self.kinds.join(",")));
        }
        out.extend([
            option("x-proc-request-eos", &flag(self.request_eos)),
            option("x-proc-body-eos", &flag(self.body_eos)),
            option("x-proc-body-msgs", &self.body_msgs.to_string()),
            option("x-proc-body-len", &self.body.len().to_string()),
        ]);
        if self.body.len() <= 1024 {
            out.push(option("x-proc-body", &String::from_utf8_lossy(&self.body)));
        }
        if !self.attributes.is_empty() {
            out.push(option("x-proc-attributes", &self.attributes.join(" ")));
        }
        out
    }
}

/// The names in a trailers message (`none` for an empty one).
fn trailer_names(t: &HttpTrailers) -> Vec<String> {
    let names = t.trailers.iter().flat_map(|m| &m.headers);
    let mut names: Vec<String> = names.map(|h| h.key.clone()).collect();
    if names.is_empty() {
        names.push("none".into());
    }
    names
}

/// A `mode_override` from field and value names; unknown names are left at their default.
fn mode_override(fields: &BTreeMap<String, String>) -> Option<ProcessingMode> {
    if fields.is_empty() {
        return None;
    }
    let header = |v: &str| match v {
        "SEND" => 1,
        "SKIP" => 2,
        _ => 0,
    };
    let body = |v: &str| match v {
        "STREAMED" => 1,
        "BUFFERED" => 2,
        "BUFFERED_PARTIAL" => 3,
        "FULL_DUPLEX_STREAMED" => 4,
        _ => 0,
    };
    let mut m = ProcessingMode::default();
    for (k, v) in fields {
        match k.as_str() {
            "request_header_mode" => m.request_header_mode = header(v),
            "response_header_mode" => m.response_header_mode = header(v),
            "request_trailer_mode" => m.request_trailer_mode = header(v),
            "response_trailer_mode" => m.response_trailer_mode = header(v),
            "request_body_mode" => m.request_body_mode = body(v),
            "response_body_mode" => m.response_body_mode = body(v),
            _ => {}
        }
    }
    Some(m)
}

/// Which message an answer replies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    RequestTrailers,
}

/// The message for an answer, as a reply of the message's kind; `body` is the body message's
/// (number, end_of_stream, body), for `echo_body` and `streamed`.
async fn reply(
    answer: &ExtProcAnswer,
    phase: Phase,
    seen: &Seen,
    body: Option<(usize, bool, &[u8])>,
) -> Response {
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
    let mut set_headers: Vec<HeaderValueOption> =
        answer.set.iter().map(|(k, v)| option(k, v)).collect();
    if answer.report {
        set_headers.extend(seen.headers());
    }
    let body_mutation = match (&answer.body, answer.clear_body, body) {
        (_, _, Some((_, end_of_stream, b))) if answer.streamed => Some(
            body_mutation::Mutation::StreamedResponse(StreamedBodyResponse {
                body: b.to_ascii_uppercase(),
                end_of_stream,
                ..Default::default()
            }),
        ),
        (Some(b), _, _) => Some(body_mutation::Mutation::Body(b.as_bytes().to_vec())),
        (None, true, _) => Some(body_mutation::Mutation::ClearBody(true)),
        (None, false, Some((n, eos, b))) if answer.echo_body => {
            let echo = format!("[{n}:{eos}:{}]", String::from_utf8_lossy(b));
            Some(body_mutation::Mutation::Body(echo.into_bytes()))
        }
        (None, false, _) => None,
    };
    let common = CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers,
            remove_headers: answer.remove.clone(),
        }),
        body_mutation: body_mutation.map(|m| BodyMutation { mutation: Some(m) }),
        clear_route_cache: answer.clear_route_cache,
        ..Default::default()
    };
    let phase = match (answer.wrong_kind, phase) {
        (false, p) => p,
        (true, Phase::ResponseHeaders | Phase::ResponseTrailers | Phase::RequestTrailers) => {
            Phase::RequestHeaders
        }
        (true, _) => Phase::ResponseHeaders,
    };
    match phase {
        Phase::RequestHeaders => Response::RequestHeaders(HeadersResponse {
            response: Some(common),
        }),
        Phase::ResponseHeaders => Response::ResponseHeaders(HeadersResponse {
            response: Some(common),
        }),
        Phase::RequestBody => Response::RequestBody(BodyResponse {
            response: Some(common),
        }),
        Phase::ResponseBody => Response::ResponseBody(BodyResponse {
            response: Some(common),
        }),
        Phase::ResponseTrailers => Response::ResponseTrailers(TrailersResponse {
            header_mutation: common.header_mutation,
        }),
        Phase::RequestTrailers => Response::RequestTrailers(TrailersResponse {
            header_mutation: common.header_mutation,
        }),
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
            let mut seen = Seen::default();
            while let Ok(Some(msg)) = inbound.message().await {
                let kind = match &msg.request {
                    Some(Request::RequestHeaders(_)) => "request_headers",
                    Some(Request::RequestBody(_)) => "request_body",
                    Some(Request::RequestTrailers(_)) => "request_trailers",
                    Some(Request::ResponseHeaders(_)) => "response_headers",
                    Some(Request::ResponseBody(_)) => "response_body",
                    Some(Request::ResponseTrailers(_)) => "response_trailers",
                    None => "none",
                };
                seen.kinds.push(kind);
                if let Some(attrs) = attributes(&msg) {
                    seen.attributes.push(format!("{kind}{{{attrs}}}"));
                }
                let (response, answer) = match &msg.request {
                    Some(Request::RequestHeaders(h)) => {
                        seen.request_eos = Some(h.end_of_stream);
                        let path = pseudo(h, ":path").unwrap_or_default();
                        let path = path.split('?').next().unwrap_or_default();
                        let answer = script.paths.get(path).unwrap_or(&script.request);
                        (
                            reply(answer, Phase::RequestHeaders, &seen, None).await,
                            answer,
                        )
                    }
                    Some(Request::RequestBody(b)) => {
                        seen.body.extend_from_slice(&b.body);
                        seen.body_eos = Some(b.end_of_stream);
                        seen.body_msgs += 1;
                        let answer = &script.request_body;
                        let body = Some((seen.body_msgs, b.end_of_stream, b.body.as_slice()));
                        (reply(answer, Phase::RequestBody, &seen, body).await, answer)
                    }
                    Some(Request::ResponseBody(b)) => {
                        seen.response_body_msgs += 1;
                        let n = seen.response_body_msgs;
                        let answer = script.response_body_nth.get(&n);
                        let answer = answer.unwrap_or(&script.response_body);
                        let body = Some((n, b.end_of_stream, b.body.as_slice()));
                        (
                            reply(answer, Phase::ResponseBody, &seen, body).await,
                            answer,
                        )
                    }
                    Some(Request::ResponseHeaders(_)) => {
                        let answer = &script.response;
                        (
                            reply(answer, Phase::ResponseHeaders, &seen, None).await,
                            answer,
                        )
                    }
                    Some(Request::ResponseTrailers(t)) => {
                        seen.trailers = trailer_names(t);
                        let answer = &script.response_trailers;
                        let response = reply(answer, Phase::ResponseTrailers, &seen, None).await;
                        (response, answer)
                    }
                    Some(Request::RequestTrailers(t)) => {
                        seen.request_trailers = trailer_names(t);
                        let answer = &script.request_trailers;
                        let response = reply(answer, Phase::RequestTrailers, &seen, None).await;
                        (response, answer)
                    }
                    _ => continue,
                };
                if answer.close {
                    return;
                }
                let msg = ProcessingResponse {
                    response: Some(response),
                    mode_override: mode_override(&answer.mode_override),
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
