//! `envoy.filters.http.ext_proc`, request bodies: each processor with a request body mode
//! gets the body as its mode says, and its body mutations replace what goes upstream.
//!
//! What Envoy 1.40 does, and Sentinel with it (found by the conformance cases):
//! - STREAMED: every chunk goes to the processor as it arrives and its answer replaces that
//!   chunk; the request goes upstream without `content-length` (chunked on HTTP/1).
//! - BUFFERED: the whole body in one message with `end_of_stream`, within the listener's
//!   `per_connection_buffer_limit_bytes` (413 past it). `content-length` is kept, so a
//!   mutation that changes the length of a body that had one is answered with 500.
//! - BUFFERED_PARTIAL: the body up to the buffer limit in one message (the rest passes
//!   unprocessed); the request goes upstream without `content-length`.
//! - A request without a body sends no body message (its headers carry `end_of_stream`).
//! - A body that trailers follow (HTTP/2) sends no message with `end_of_stream`: the trailers
//!   message comes after the body messages, for processors with `request_trailer_mode: SEND`
//!   (ext_proc_request_trailers.rs).
//!
//! One difference remains: Envoy holds the request headers while it buffers, so a body
//! answer's header mutation still reaches the upstream. Pingora sends the request headers
//! before the body, so Sentinel cannot apply it; it is dropped (logged at debug).

use bytes::{Bytes, BytesMut};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request, processing_response, CommonResponse, HttpBody,
    ProcessingRequest, ProcessingResponse,
};
use sentinel_xds::config::cluster::UpstreamProtocol;
use sentinel_xds::config::ext_proc::{BodyMode, ExtProc};

use crate::ctx::Ctx;
use crate::ext_proc::{immediate_reply, Conversation, Failure};
use crate::filters::FilterReply;
use crate::proxy::HttpHandler;
use crate::upstream::ClusterManager;

/// The request body's progress through one processor.
#[derive(Default)]
pub(crate) struct BodyState {
    /// The request's `content-length`, when it had one.
    pub content_length: Option<u64>,
    buffered: BytesMut,
    /// Done with the processor: the rest of the body passes unchanged (BUFFERED_PARTIAL
    /// after its message, a failure under `failure_mode_allow`, or a request without a body).
    pub done: bool,
}

/// The processed request body sent so far, for retries. Pingora replays the downstream body
/// it kept to the next attempt; the upstream must get what the processors made of it, and the
/// processors must not see it twice (as Envoy, whose router retries after the filters).
#[derive(Default)]
pub(crate) struct Replay {
    /// The attempt the body went to.
    attempt: u32,
    sent: BytesMut,
    /// More was sent than is kept: no replay is possible.
    truncated: bool,
    /// The request trailers went through the processors (they stay changed in the session).
    trailers_done: bool,
}

const REQUEST: Direction = Direction::Request;

/// Why a body cannot go on: the answer the client gets instead.
pub(crate) enum Stop {
    Reply(FilterReply),
    Status(u16),
}

/// Which way a body goes: it names the body message and the answer expected.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Request,
    Response,
}

pub(crate) fn body_message(body: Bytes, end_of_stream: bool, dir: Direction) -> ProcessingRequest {
    let body = HttpBody {
        body: body.to_vec(),
        end_of_stream,
        ..Default::default()
    };
    ProcessingRequest {
        request: Some(match dir {
            Direction::Request => processing_request::Request::RequestBody(body),
            Direction::Response => processing_request::Request::ResponseBody(body),
        }),
        ..Default::default()
    }
}

/// The processor's answer to a body message of `dir`: its common response, or a stop (an
/// answer of another kind is a failure, as in Envoy).
pub(crate) fn body_answer(
    resp: ProcessingResponse,
    config: &ExtProc,
    dir: Direction,
) -> Result<CommonResponse, Answer> {
    use processing_response::Response as R;
    match (resp.response, dir) {
        (Some(R::ImmediateResponse(i)), _) if !config.disable_immediate_response => {
            Err(Answer::Immediate(immediate_reply(i)))
        }
        (Some(R::RequestBody(b)), Direction::Request)
        | (Some(R::ResponseBody(b)), Direction::Response) => Ok(b.response.unwrap_or_default()),
        _ => Err(Answer::Failed(Failure::Error)),
    }
}

/// The body after an answer's body mutation (`body` replaces it, `clear_body` empties it).
pub(crate) fn mutated_body(common: &CommonResponse, body: Bytes) -> Bytes {
    match common
        .body_mutation
        .as_ref()
        .and_then(|m| m.mutation.as_ref())
    {
        Some(body_mutation::Mutation::Body(b)) => Bytes::from(b.clone()),
        Some(body_mutation::Mutation::ClearBody(true)) => Bytes::new(),
        _ => body,
    }
}

/// Whether an answer carries a header mutation that changes anything.
pub(crate) fn mutates_headers(common: &CommonResponse) -> bool {
    common
        .header_mutation
        .as_ref()
        .is_some_and(|m| !m.set_headers.is_empty() || !m.remove_headers.is_empty())
}

pub(crate) enum Answer {
    Immediate(FilterReply),
    Failed(Failure),
}

/// `observability_mode`: a chunk goes to the processor without waiting, in STREAMED mode
/// only (Envoy sends nothing in the other body modes); the data goes on unchanged. Only a
/// stream that cannot be opened stops the body (unless `failure_mode_allow`).
pub(crate) async fn observe_chunk(
    conv: &mut Conversation,
    clusters: &ClusterManager,
    data: &Bytes,
    end: bool,
    dir: Direction,
) -> Result<(), Stop> {
    let mode = match dir {
        Direction::Request => conv.mode.request_body,
        Direction::Response => conv.mode.response_body,
    };
    if mode != BodyMode::Streamed || (data.is_empty() && !end) {
        return Ok(());
    }
    if let Err(f) = conv
        .observe(clusters, body_message(data.clone(), end, dir))
        .await
    {
        if !conv.config.failure_mode_allow {
            return Err(failure_reply(f));
        }
        conv.stats.failure_mode_allowed.inc();
    }
    Ok(())
}

pub(crate) fn failure_reply(f: Failure) -> Stop {
    Stop::Status(f.status())
}

impl BodyState {
    pub(crate) fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buffered).freeze()
    }

    /// Buffers a chunk; returns how much is buffered.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        self.buffered.extend_from_slice(data);
        self.buffered.len()
    }
}

impl HttpHandler {
    /// Runs one request body chunk through every processor that asked for the body, in filter
    /// order. On a stop, the client gets its answer and the request ends with an error.
    pub(crate) async fn ext_proc_request_body(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Pingora read the trailers (if any) before it calls with `end`.
        let mut trailers = match end {
            true => session.downstream_session.request_trailers().cloned(),
            false => None,
        };
        let bodies = ctx
            .ext_proc
            .iter()
            .any(|c| c.mode.request_body != BodyMode::None);
        if ctx.ext_proc_replay.trailers_done
            || !ctx.ext_proc.iter().any(|c| c.mode.request_trailers)
        {
            trailers = None;
        }
        if !bodies && trailers.is_none() {
            return Ok(());
        }
        // Without body processors the raw body Pingora replays is the one to send.
        let replay = &mut ctx.ext_proc_replay;
        if bodies && replay.attempt == 0 {
            replay.attempt = ctx.attempts;
        } else if bodies && replay.attempt != ctx.attempts {
            // A retry: Pingora replays the raw body read so far; send the processed one.
            replay.attempt = ctx.attempts;
            if replay.truncated {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(500),
                    "the processed request body is too large to retry",
                ));
            }
            *body = Some(replay.sent.clone().freeze());
            return Ok(());
        }
        let mut data = body.take().unwrap_or_default();
        let mut convs = std::mem::take(&mut ctx.ext_proc);
        // Attributes not sent yet go with a body message: Envoy evaluates them when it sends,
        // so by now the upstream is known. A BUFFERED body sends only at its end.
        let may_send = |c: &Conversation| end || c.mode.request_body != BodyMode::Buffered;
        let pending = |c: &&mut Conversation| c.request_attributes.is_some() && may_send(c);
        for conv in convs.iter_mut().filter(pending) {
            let attributes = &conv.config.request_attributes;
            conv.request_attributes = self.attributes(attributes, session.req_header(), None, ctx);
        }
        let mut stop = None;
        // The body ends with its last message's `end_of_stream` only without trailers.
        let eos = end && session.downstream_session.request_trailers().is_none();
        for conv in convs.iter_mut() {
            let fed = match self.feed(conv, data, end, eos).await {
                Ok(out) => {
                    self.request_trailers_after(conv, out, trailers.as_mut())
                        .await
                }
                Err(s) => Err(s),
            };
            match fed {
                Ok(out) => data = out,
                Err(s) => {
                    stop = Some(s);
                    data = Bytes::new();
                    break;
                }
            }
        }
        ctx.ext_proc = convs;
        if let (Some(t), Some(mine)) = (session.downstream_session.request_trailers_mut(), trailers)
        {
            *t = mine;
            ctx.ext_proc_replay.trailers_done = true;
        }
        let replay = &mut ctx.ext_proc_replay;
        if replay.sent.len() + data.len() <= self.buffer_limit as usize {
            replay.sent.extend_from_slice(&data);
        } else {
            replay.truncated = true;
        }
        *body = Some(data);
        let Some(stop) = stop else {
            return Ok(());
        };
        let (status, text, headers) = match stop {
            Stop::Reply(r) => {
                ctx.grpc_status = r.grpc_status;
                (r.status, r.body, r.headers)
            }
            Stop::Status(s) => (s, String::new(), vec![]),
        };
        if session.response_written().is_none() {
            let extra: Vec<(&str, String)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            self.send_local(session, status, Bytes::from(text), &extra, ctx)
                .await?;
        }
        Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "ext_proc stopped the request body",
        ))
    }

    /// One chunk through one processor: what goes on (possibly nothing yet), or a stop. `end`
    /// is the end of the body, `eos` the `end_of_stream` its last message carries (false when
    /// trailers follow).
    async fn feed(
        &self,
        conv: &mut Conversation,
        data: Bytes,
        end: bool,
        eos: bool,
    ) -> Result<Bytes, Stop> {
        let mode = conv.mode.request_body;
        if mode == BodyMode::None || conv.request_body.done {
            return Ok(data);
        }
        if conv.config.observability_mode {
            observe_chunk(conv, &self.clusters, &data, eos, REQUEST).await?;
            return Ok(data);
        }
        if mode == BodyMode::FullDuplexStreamed {
            return self.full_duplex(conv, data, eos).await;
        }
        let limit = self.buffer_limit as usize;
        let (message, eos) = match mode {
            BodyMode::None | BodyMode::FullDuplexStreamed => unreachable!("handled above"),
            BodyMode::Streamed => {
                if data.is_empty() && !eos {
                    return Ok(data);
                }
                (data, eos)
            }
            BodyMode::Buffered => {
                conv.request_body.buffered.extend_from_slice(&data);
                if conv.request_body.buffered.len() > limit {
                    // Envoy: "buffer exceeded", 413 on the request path.
                    return Err(Stop::Status(413));
                }
                if !end {
                    return Ok(Bytes::new());
                }
                (conv.request_body.take(), eos)
            }
            BodyMode::BufferedPartial => {
                conv.request_body.buffered.extend_from_slice(&data);
                if !end && conv.request_body.buffered.len() < limit {
                    return Ok(Bytes::new());
                }
                conv.request_body.done = true;
                (conv.request_body.take(), eos)
            }
        };
        let config = conv.config.clone();
        let answer = conv
            .exchange(&self.clusters, body_message(message.clone(), eos, REQUEST))
            .await
            .map_err(Answer::Failed)
            .and_then(|r| body_answer(r, &config, REQUEST))
            .map(|common| {
                if mutates_headers(&common) {
                    tracing::debug!("ext_proc: header mutation in a request body answer dropped");
                }
                mutated_body(&common, message.clone())
            });
        match answer {
            Ok(out) => {
                let cl = conv.request_body.content_length;
                if mode == BodyMode::Buffered && cl.is_some_and(|cl| cl != out.len() as u64) {
                    // Envoy: "mismatch between content length and the length of the mutated
                    // body", a 500.
                    return Err(Stop::Status(500));
                }
                Ok(out)
            }
            Err(Answer::Immediate(r)) => {
                conv.stats.immediate_responses_sent.inc();
                Err(Stop::Reply(r))
            }
            Err(Answer::Failed(Failure::Closed)) => {
                // The processor is done with this request: the body goes on unchanged.
                conv.request_body.done = true;
                Ok(message)
            }
            Err(Answer::Failed(f)) => {
                tracing::debug!("ext_proc failed on the request body: {f:?}");
                if config.failure_mode_allow {
                    conv.stats.failure_mode_allowed.inc();
                    conv.request_body.done = true;
                    Ok(message)
                } else {
                    Err(failure_reply(f))
                }
            }
        }
    }
}

/// When a processor may change the request body's length as it streams (STREAMED,
/// BUFFERED_PARTIAL and FULL_DUPLEX_STREAMED), the request goes upstream without `content-length`, as in Envoy:
/// chunked on HTTP/1.
pub(crate) fn upstream_framing(ctx: &Ctx, upstream: &mut RequestHeader) {
    let streams = ctx.ext_proc.iter().any(|c| {
        matches!(
            c.mode.request_body,
            BodyMode::Streamed | BodyMode::BufferedPartial | BodyMode::FullDuplexStreamed
        )
    });
    if !streams || ctx.request_end_of_stream {
        return;
    }
    upstream.remove_header(&http::header::CONTENT_LENGTH);
    let h2 = ctx
        .cluster
        .as_ref()
        .is_some_and(|c| c.config.protocol == UpstreamProtocol::Http2);
    if !h2 {
        let _ = upstream.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
}
