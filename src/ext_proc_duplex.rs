//! ext_proc FULL_DUPLEX_STREAMED bodies, both ways: every chunk goes to the processor as it
//! arrives, without waiting for an answer, and the processor streams the body back in
//! `streamed_response`s of its own sizes, the last with `end_of_stream`.
//!
//! What Envoy 1.40 does, and Sentinel with it (cases `ext_proc/*_full_duplex*`):
//! - the body goes on without `content-length` (chunked on HTTP/1), carrying what the
//!   processor streamed back;
//! - `message_timeout` does not apply: a slow processor delays the body, it does not fail it;
//! - a body answer that is not a `streamed_response` is a failure (500);
//! - an immediate response stops the request;
//! - a processor that ends its stream (gRPC OK) keeps the chunks it was sent: they are lost,
//!   and the rest goes on;
//! - a request body that trailers follow ends with a message without `end_of_stream`, then
//!   the trailers message; the processor streams the rest of the body back, then answers the
//!   trailers (case `ext_proc/request_trailers_full_duplex`).
//!
//! Sentinel forwards what the processor sent back whenever the next downstream chunk comes,
//! and waits for the rest at the end of the body, at most the connection manager's
//! `stream_idle_timeout` (Envoy's bound on a stalled stream, 5 minutes by default).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_response, HeaderMutation, ProcessingResponse,
};

use crate::ext_proc::{self, immediate_reply, Conversation, Failure};
use crate::ext_proc_body::{body_message, failure_reply, Direction, Stop};
use crate::ext_proc_trailers::trailers_message;
use crate::proxy::HttpHandler;

/// Envoy's default `stream_idle_timeout`.
const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// What one answer adds to the body.
enum Piece {
    Body(Bytes, bool),
    /// The answer to the request trailers: its mutation, if any.
    Trailers(Option<HeaderMutation>),
    Stop(Stop),
}

fn piece(resp: ProcessingResponse, conv: &Conversation, dir: Direction) -> Piece {
    use processing_response::Response as R;
    let body = match (resp.response, dir) {
        (Some(R::RequestTrailers(t)), Direction::Request) => {
            return Piece::Trailers(t.header_mutation)
        }
        (Some(R::ImmediateResponse(i)), _) if !conv.config.disable_immediate_response => {
            conv.stats.immediate_responses_sent.inc();
            return Piece::Stop(Stop::Reply(immediate_reply(i)));
        }
        (Some(R::RequestBody(b)), Direction::Request) => b,
        (Some(R::ResponseBody(b)), Direction::Response) => b,
        _ => return Piece::Stop(Stop::Status(500)),
    };
    match body.response.and_then(|c| c.body_mutation?.mutation) {
        Some(body_mutation::Mutation::StreamedResponse(s)) => {
            Piece::Body(Bytes::from(s.body), s.end_of_stream)
        }
        _ => Piece::Stop(Stop::Status(500)),
    }
}

impl HttpHandler {
    /// One downstream chunk through a full-duplex processor: what the processor has streamed
    /// back so far (all of it, at the end of the body), or a stop.
    pub(crate) async fn full_duplex(
        &self,
        conv: &mut Conversation,
        data: Bytes,
        end: bool,
    ) -> Result<Bytes, Stop> {
        if conv.request_body.done {
            return Ok(data);
        }
        let (out, finished) = self
            .duplex_exchange(conv, data, end, Direction::Request)
            .await?;
        conv.request_body.done |= finished;
        Ok(out)
    }

    /// One chunk of a body either way: sends it without waiting (when there is something to
    /// send), then takes what the processor streamed back: what is there already, or at the
    /// end of the body all of it up to its `end_of_stream`. Returns that and whether the
    /// processor is done (its `end_of_stream`, or its stream ended: the chunks it kept are
    /// lost, as in Envoy).
    pub(crate) async fn duplex_exchange(
        &self,
        conv: &mut Conversation,
        data: Bytes,
        end: bool,
        dir: Direction,
    ) -> Result<(Bytes, bool), Stop> {
        if !data.is_empty() || end {
            match conv
                .send_only(&self.clusters, body_message(data, end, dir))
                .await
            {
                Ok(()) => {}
                Err(Failure::Closed) => return Ok((Bytes::new(), true)),
                Err(f) => return Err(failure_reply(f)),
            }
        }
        let wait = if end {
            self.hcm.stream_idle_timeout.unwrap_or(DEFAULT_IDLE)
        } else {
            Duration::ZERO
        };
        let mut out = BytesMut::new();
        while let Some(answer) = conv.next_answer(wait).await {
            match answer.map(|r| piece(r, conv, dir)) {
                Ok(Piece::Body(b, last)) => {
                    out.extend_from_slice(&b);
                    if last {
                        return Ok((out.freeze(), true));
                    }
                }
                Ok(Piece::Stop(s)) => return Err(s),
                // A trailers answer before the body ended is an answer of the wrong kind.
                Ok(Piece::Trailers(_)) => return Err(Stop::Status(500)),
                Err(Failure::Closed) => return Ok((out.freeze(), true)),
                Err(f) => return Err(failure_reply(f)),
            }
        }
        Ok((out.freeze(), false))
    }

    /// The end of a request body that trailers follow: the trailers message goes after the
    /// body messages, and the processor streams back the rest of the body, then answers the
    /// trailers (its mutation changes them). Returns that rest of the body.
    pub(crate) async fn full_duplex_trailers(
        &self,
        conv: &mut Conversation,
        trailers: &mut HeaderMap,
    ) -> Result<Bytes, Stop> {
        let msg = trailers_message(trailers, Direction::Request);
        match conv.send_only(&self.clusters, msg).await {
            Ok(()) => {}
            Err(Failure::Closed) => return Ok(Bytes::new()),
            Err(f) => return Err(failure_reply(f)),
        }
        let wait = self.hcm.stream_idle_timeout.unwrap_or(DEFAULT_IDLE);
        let mut out = BytesMut::new();
        while let Some(answer) = conv.next_answer(wait).await {
            match answer.map(|r| piece(r, conv, Direction::Request)) {
                Ok(Piece::Body(b, _)) => out.extend_from_slice(&b),
                Ok(Piece::Trailers(m)) => {
                    conv.request_body.done = true;
                    if let Some(m) = m {
                        let rules = &conv.config.mutation_rules;
                        ext_proc::apply(&m, rules, trailers, &conv.stats).map_err(failure_reply)?;
                    }
                    return Ok(out.freeze());
                }
                Ok(Piece::Stop(s)) => return Err(s),
                Err(Failure::Closed) => break,
                Err(f) => return Err(failure_reply(f)),
            }
        }
        conv.request_body.done = true;
        Ok(out.freeze())
    }
}
