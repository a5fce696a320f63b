//! `envoy.filters.http.ext_proc`, response bodies: each processor with a response body mode
//! gets the upstream's body as its mode says, and its answers replace what the client gets.
//!
//! This runs in Pingora's `response_tasks_filter` (a hook Sentinel's patched Pingora adds, see
//! `vendor/pingora-proxy/SENTINEL-PATCH.md`): it sees the response header and body chunks
//! before they are written, may keep them back while a processor answers, and may replace
//! them. What Envoy 1.40 does, and Sentinel with it (conformance cases
//! `ext_proc/response_body_*`):
//! - a processor that was sent the response headers keeps them back in BUFFERED and
//!   BUFFERED_PARTIAL until it answered the body message, so its answer may still change the
//!   headers or replace the whole response (an immediate response, 500, 504);
//! - a body that came whole with the headers goes in one message with `end_of_stream`, in
//!   any mode, and the headers wait for its answer (Envoy had it all before the headers
//!   answer came back);
//! - in STREAMED mode otherwise, and in any mode when the headers were not sent (SKIP), the
//!   headers go to the client at once: a processor that stops the response after that gets
//!   the client's stream reset;
//! - `content-length` is dropped (chunked on HTTP/1) in STREAMED and BUFFERED_PARTIAL mode,
//!   and in BUFFERED mode without a headers message; in BUFFERED mode with one it is kept,
//!   and a body mutation of another length is answered with 500;
//! - BUFFERED buffers up to the listener's `per_connection_buffer_limit_bytes`, past which
//!   the client gets 500; BUFFERED_PARTIAL sends what it has once past it.

use bytes::Bytes;
use pingora_core::protocols::http::HttpTask;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use sentinel_xds::config::ext_proc::BodyMode;

use crate::ctx::Ctx;
use crate::ext_proc::{self, Conversation, Failure};
use crate::ext_proc_body::{
    body_answer, body_message, failure_reply, mutated_body, mutates_headers, observe_chunk, Answer,
    Direction, Stop,
};
use crate::filters::FilterReply;
use crate::proxy::HttpHandler;

const RESPONSE: Direction = Direction::Response;

/// The response as the processors keep it back from the client.
#[derive(Default)]
pub(crate) struct Hold {
    /// The upstream's response header (after the other filters), not written yet.
    header: Option<Box<ResponseHeader>>,
    /// Envoy would have sent the header to the client by now: a processor that stops the
    /// response can only reset it.
    released: bool,
    /// Envoy drops `content-length` when a processor may change the body after the headers
    /// went on (decided before the headers answer, as Envoy does).
    strip_content_length: bool,
    /// The upstream body ended (a later `Done` is not another end).
    ended: bool,
    /// It ended with trailers: as in Envoy, no body message then has `end_of_stream`.
    trailers: bool,
    /// Nothing more to do: the rest passes as it is.
    done: bool,
    /// The upstream's response header came (the client may not have it yet).
    started: bool,
}

impl Hold {
    /// Whether the upstream's response reached the processors: too late to retry, even when
    /// the client has seen nothing yet (Envoy's router does not retry past that point).
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// Takes back a header not written yet (a later stage stopped the response).
    pub(crate) fn hold_back(&mut self, header: Box<ResponseHeader>) {
        self.header = Some(header);
        self.released = false;
    }
}

/// What kind of body message a processor answers, which decides what its answer may change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One STREAMED chunk: the headers are gone, only the chunk changes.
    Chunk,
    /// A whole body while the headers wait: a header mutation applies, and a body mutation
    /// must keep a `content-length` the headers still have.
    Whole,
    /// A BUFFERED_PARTIAL message while the headers wait: a header mutation applies.
    Partial,
}

fn takes_body(c: &Conversation) -> bool {
    c.mode.response_body != BodyMode::None && !c.response_body.done
}

/// Whether a processor keeps the headers until its body answer: in BUFFERED and
/// BUFFERED_PARTIAL mode after a headers message, and in any mode for a body that came whole
/// with the headers.
fn holds_header(c: &Conversation, whole_with_header: bool) -> bool {
    takes_body(c)
        && c.mode.response_headers
        && !c.config.observability_mode
        && (whole_with_header
            || matches!(
                c.mode.response_body,
                BodyMode::Buffered | BodyMode::BufferedPartial
            ))
}

/// Before the response headers go to the processors: whether Envoy drops `content-length`
/// (its `shouldRemoveContentLength`, with the mode the headers message is sent with).
pub(crate) fn framing_mode(ctx: &mut Ctx) {
    ctx.response_hold.strip_content_length = ctx.ext_proc.iter().any(|c| {
        let may_change = match c.mode.response_body {
            BodyMode::Streamed | BodyMode::BufferedPartial | BodyMode::FullDuplexStreamed => true,
            BodyMode::Buffered => !c.mode.response_headers,
            BodyMode::None => false,
        };
        // In observability mode Envoy sends the headers and returns before the removal.
        may_change && !(c.config.observability_mode && c.mode.response_headers)
    });
}

/// Drops `content-length` where Envoy does; HTTP/1 then goes chunked, as Envoy's codec does.
fn frame(session: &Session, hold: &Hold, h: &mut ResponseHeader, end: bool) {
    if !hold.strip_content_length {
        return;
    }
    h.remove_header(&http::header::CONTENT_LENGTH);
    let head = session.req_header().method == http::Method::HEAD;
    if matches!(h.status.as_u16(), 204 | 304)
        || session.is_http2()
        || h.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        return;
    }
    // What Envoy's HTTP/1 codec writes without content-length: `content-length: 0` for a
    // response that ends with its headers, else chunked (an answer to HEAD too).
    if end && !head {
        let _ = h.insert_header(http::header::CONTENT_LENGTH, "0");
    } else {
        let _ = h.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
}

/// Envoy's answer to a response body past the buffer limit while the headers are held.
fn too_large() -> FilterReply {
    FilterReply {
        status: 500,
        body: "Internal Server Error".into(),
        headers: vec![],
        grpc_status: None,
    }
}

fn concat(chunks: Vec<(Bytes, bool)>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().map(|c| c.0).unwrap_or_default(),
        _ => chunks.iter().flat_map(|c| c.0.iter().copied()).collect(),
    }
}

impl HttpHandler {
    /// The response tasks of one batch through every processor that asked for the response
    /// body, in reverse filter order (as Envoy encodes). Returns what goes to the client now.
    pub(crate) async fn ext_proc_response_tasks(
        &self,
        session: &mut Session,
        tasks: Vec<HttpTask>,
        ctx: &mut Ctx,
    ) -> Result<Vec<HttpTask>> {
        if ctx.ext_proc.is_empty() {
            return Ok(tasks);
        }
        let hold = &mut ctx.response_hold;
        let wanted = ctx.ext_proc.iter().any(takes_body);
        if hold.done || ctx.replace_body.is_some() || (!wanted && hold.header.is_none()) {
            return Ok(tasks);
        }
        let mut out = Vec::with_capacity(tasks.len() + 1);
        let mut chunks: Vec<(Bytes, bool)> = Vec::new();
        let mut tail = Vec::new();
        let mut header_batch = false;
        for task in tasks {
            match task {
                HttpTask::Header(mut h, end) if !h.status.is_informational() => {
                    hold.started = true;
                    frame(session, hold, &mut h, end);
                    if end {
                        // No body: no body message (Envoy's headers carry end_of_stream).
                        hold.done = true;
                        out.push(HttpTask::Header(h, true));
                    } else {
                        hold.header = Some(h);
                        header_batch = true;
                    }
                }
                HttpTask::Body(data, end) => {
                    hold.ended |= end;
                    chunks.push((data.unwrap_or_default(), end));
                }
                HttpTask::Failed(e) => {
                    // The upstream failed: Pingora answers (or resets) as without processors.
                    hold.header = None;
                    hold.done = true;
                    out.push(HttpTask::Failed(e));
                    return Ok(out);
                }
                HttpTask::Trailer(_) | HttpTask::Done => {
                    hold.trailers |= matches!(task, HttpTask::Trailer(_));
                    if !hold.ended {
                        hold.ended = true;
                        chunks.push((Bytes::new(), true));
                    }
                    tail.push(task);
                }
                other => out.push(other),
            }
        }
        if hold.done {
            out.extend(tail);
            return Ok(out);
        }
        let whole_with_header = header_batch && chunks.last().is_some_and(|c| c.1);
        if header_batch {
            hold.released = !ctx
                .ext_proc
                .iter()
                .any(|c| holds_header(c, whole_with_header));
        }
        let mut convs = std::mem::take(&mut ctx.ext_proc);
        let mut stop = None;
        for conv in convs.iter_mut().rev() {
            let step = self.feed_response(conv, &mut ctx.response_hold, chunks, whole_with_header);
            match step.await {
                Ok(next) => chunks = next,
                Err(s) => {
                    stop = Some(s);
                    chunks = Vec::new();
                    break;
                }
            }
        }
        let still_held = convs.iter().any(|c| holds_header(c, false));
        ctx.ext_proc = convs;
        if let Some(stop) = stop {
            return self.stop_response(session, stop, out, ctx);
        }
        let hold = &mut ctx.response_hold;
        if !still_held {
            if let Some(h) = hold.header.take() {
                hold.released = true;
                out.push(HttpTask::Header(h, false));
            }
        }
        let open_tail = tail.is_empty();
        for (data, eos) in chunks {
            hold.done |= eos;
            let end = eos && open_tail;
            if !data.is_empty() || end {
                out.push(HttpTask::Body((!data.is_empty()).then_some(data), end));
            }
        }
        out.extend(tail);
        Ok(out)
    }

    /// One batch's chunks through one processor: what goes on (possibly nothing yet), or a stop.
    async fn feed_response(
        &self,
        conv: &mut Conversation,
        hold: &mut Hold,
        chunks: Vec<(Bytes, bool)>,
        whole_with_header: bool,
    ) -> Result<Vec<(Bytes, bool)>, Stop> {
        if !takes_body(conv) {
            return Ok(chunks);
        }
        let mode = conv.mode.response_body;
        if conv.config.observability_mode {
            for (data, eos) in &chunks {
                let eos = *eos && !hold.trailers;
                observe_chunk(conv, &self.clusters, data, eos, RESPONSE).await?;
            }
            return Ok(chunks);
        }
        if mode == BodyMode::FullDuplexStreamed {
            return self.full_duplex_response(conv, hold, chunks).await;
        }
        let limit = self.buffer_limit as usize;
        if whole_with_header && conv.mode.response_headers {
            conv.response_body.done = true;
            let body = concat(chunks);
            if mode == BodyMode::Buffered && body.len() > limit {
                // Envoy: even a body that came whole is too large for BUFFERED past the limit
                // (STREAMED and BUFFERED_PARTIAL send it all in one message).
                return Err(Stop::Reply(too_large()));
            }
            return Ok(vec![(
                self.answer(conv, hold, body, true, Kind::Whole).await?,
                true,
            )]);
        }
        let mut out = Vec::new();
        for (data, eos) in chunks {
            if !takes_body(conv) {
                out.push((data, eos));
                continue;
            }
            match mode {
                BodyMode::None | BodyMode::FullDuplexStreamed => out.push((data, eos)),
                BodyMode::Streamed => {
                    if !data.is_empty() || (eos && !hold.trailers) {
                        out.push((self.answer(conv, hold, data, eos, Kind::Chunk).await?, eos));
                    } else {
                        out.push((data, eos));
                    }
                }
                BodyMode::Buffered => {
                    if conv.response_body.push(&data) > limit {
                        // Envoy: the response is too large for the buffer (`rs_too_large`).
                        return Err(Stop::Reply(too_large()));
                    }
                    if eos {
                        conv.response_body.done = true;
                        let body = conv.response_body.take();
                        out.push((
                            self.answer(conv, hold, body, true, Kind::Whole).await?,
                            true,
                        ));
                    }
                }
                BodyMode::BufferedPartial => {
                    if conv.response_body.push(&data) > limit || eos {
                        conv.response_body.done = true;
                        let body = conv.response_body.take();
                        let kind = Kind::Partial;
                        out.push((self.answer(conv, hold, body, eos, kind).await?, eos));
                    }
                }
            }
        }
        Ok(out)
    }

    /// One batch's chunks through a full-duplex processor (ext_proc_duplex.rs). The last chunk
    /// goes with `end_of_stream` unless trailers follow; the body ends when the processor's
    /// does.
    async fn full_duplex_response(
        &self,
        conv: &mut Conversation,
        hold: &Hold,
        chunks: Vec<(Bytes, bool)>,
    ) -> Result<Vec<(Bytes, bool)>, Stop> {
        let mut out = Vec::with_capacity(chunks.len());
        for (data, eos) in chunks {
            let end = eos && !hold.trailers;
            let (back, finished) = self.duplex_exchange(conv, data, end, RESPONSE).await?;
            conv.response_body.done |= finished;
            out.push((back, finished || eos));
            if conv.response_body.done {
                break;
            }
        }
        Ok(out)
    }

    /// Sends one body message and applies its answer: the body that goes on, or a stop.
    async fn answer(
        &self,
        conv: &mut Conversation,
        hold: &mut Hold,
        body: Bytes,
        eos: bool,
        kind: Kind,
    ) -> Result<Bytes, Stop> {
        let config = conv.config.clone();
        let message = body_message(body.clone(), eos && !hold.trailers, RESPONSE);
        let answer = conv
            .exchange(&self.clusters, message)
            .await
            .map_err(Answer::Failed)
            .and_then(|r| body_answer(r, &config, RESPONSE));
        let failed = match answer {
            Ok(common) => {
                // Only headers still held from the client can change (Envoy: the ones it
                // keeps while a buffered body message is out).
                let held = kind != Kind::Chunk && !hold.released;
                let header = hold.header.as_deref_mut().filter(|_| held);
                let mutated = match (header, &common.header_mutation) {
                    (Some(h), Some(m)) if mutates_headers(&common) => {
                        self.mutate_held(conv, h, m, hold.strip_content_length)
                    }
                    _ => Ok(()),
                };
                match mutated {
                    Ok(()) => {
                        let out = mutated_body(&common, body.clone());
                        let length = hold
                            .header
                            .as_ref()
                            .filter(|_| held && kind == Kind::Whole)
                            .filter(|_| common.body_mutation.is_some())
                            .and_then(|h| h.headers.get(http::header::CONTENT_LENGTH))
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        if length.is_some_and(|l| l != out.len() as u64) {
                            // Envoy: "mismatch between content length and the length of the
                            // mutated body", a 500.
                            return Err(Stop::Status(500));
                        }
                        return Ok(out);
                    }
                    Err(f) => f,
                }
            }
            Err(Answer::Immediate(r)) => {
                conv.stats.immediate_responses_sent.inc();
                conv.response_body.done = true;
                return Err(Stop::Reply(r));
            }
            Err(Answer::Failed(f)) => f,
        };
        conv.response_body.done = true;
        if failed == Failure::Closed {
            // The processor is done with this request: the body goes on unchanged.
            return Ok(body);
        }
        tracing::debug!("ext_proc failed on the response body: {failed:?}");
        if config.failure_mode_allow {
            conv.stats.failure_mode_allowed.inc();
            return Ok(body);
        }
        Err(failure_reply(failed))
    }

    /// A body answer's header mutation on the headers still held back.
    fn mutate_held(
        &self,
        conv: &Conversation,
        header: &mut ResponseHeader,
        m: &sentinel_proto::pb::envoy::service::ext_proc::v3::HeaderMutation,
        strip_content_length: bool,
    ) -> Result<(), Failure> {
        let pseudo = ext_proc::apply(m, &conv.config.mutation_rules, header, &conv.stats)?;
        for (k, v) in pseudo {
            if let (":status", Ok(code)) = (k.as_str(), v.parse::<u16>()) {
                let _ = header.set_status(code);
            }
        }
        if strip_content_length {
            header.remove_header(&http::header::CONTENT_LENGTH);
        }
        Ok(())
    }

    /// A processor stopped the response: the client gets the answer instead when it has not
    /// had the headers yet, else its stream is reset (as Envoy, which can no longer answer).
    pub(crate) fn stop_response(
        &self,
        session: &Session,
        stop: Stop,
        mut out: Vec<HttpTask>,
        ctx: &mut Ctx,
    ) -> Result<Vec<HttpTask>> {
        let hold = &mut ctx.response_hold;
        hold.done = true;
        let (status, body, headers, grpc_status) = match stop {
            Stop::Reply(r) => (r.status, r.body, r.headers, r.grpc_status),
            Stop::Status(s) => (s, String::new(), vec![], None),
        };
        if hold.released || hold.header.is_none() {
            out.extend(hold.header.take().map(|h| HttpTask::Header(h, false)));
            let why = "ext_proc stopped the response after its headers were sent";
            out.push(HttpTask::Failed(Error::explain(
                ErrorType::HTTPStatus(status),
                why,
            )));
            return Ok(out);
        }
        hold.header = None;
        ctx.grpc_status = grpc_status;
        let extra: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let req = session.req_header();
        let (resp, body) = self.local_response(req, status, Bytes::from(body), &extra, ctx)?;
        out.push(HttpTask::Header(resp, body.is_none()));
        out.extend(body.map(|b| HttpTask::Body(Some(b), true)));
        Ok(out)
    }
}
