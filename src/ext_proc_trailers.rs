//! ext_proc trailers (`response_trailer_mode: SEND`, `request_trailer_mode: SEND`). Response
//! trailers (an HTTP/2 upstream's; Pingora reads none from HTTP/1 upstreams, and Envoy's
//! HTTP/1 codec drops them by default) go to each processor that asked, in reverse filter
//! order, and its `header_mutation` changes them. A response without trailers sends no
//! trailers message. Cases `ext_proc/response_trailers*` pass on Envoy 1.40 and Sentinel.
//! Request trailers go through the same exchange (`trailers_through`) at the end of the
//! request body (ext_proc_request_trailers.rs).
//!
//! The trailers go after the body messages of the same batch (ext_proc_response_body.rs). A
//! processor that fails or answers with an immediate response stops the response: the client
//! gets the answer when its headers are still in the same batch or held back by a body
//! processor (as Envoy, whose headers wait while the whole response arrives during the
//! headers' answer), and its stream is reset (HTTP/2) or its connection closed (HTTP/1)
//! when the headers went out already.

use http::HeaderMap;
use pingora_core::protocols::http::HttpTask;
use pingora_error::Result;
use pingora_proxy::Session;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, HttpTrailers, ProcessingRequest,
};

use crate::ctx::Ctx;
use crate::ext_proc::{self, Conversation, Failure};
use crate::ext_proc_body::{failure_reply, Direction, Stop};
use crate::proxy::HttpHandler;

pub(crate) fn trailers_message(trailers: &HeaderMap, dir: Direction) -> ProcessingRequest {
    let pairs = trailers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    let trailers = HttpTrailers {
        trailers: Some(ext_proc::header_map(pairs)),
    };
    ProcessingRequest {
        request: Some(match dir {
            Direction::Request => processing_request::Request::RequestTrailers(trailers),
            Direction::Response => processing_request::Request::ResponseTrailers(trailers),
        }),
        ..Default::default()
    }
}

impl HttpHandler {
    /// Runs a batch's response trailers through the processors that asked for them, after
    /// the batch's body went through the body processors (Envoy's order). A stop answers the
    /// client when its headers are still in this batch or held back, and resets its stream
    /// otherwise.
    pub(crate) async fn ext_proc_trailer_tasks(
        &self,
        session: &mut Session,
        mut tasks: Vec<HttpTask>,
        ctx: &mut Ctx,
    ) -> Result<Vec<HttpTask>> {
        if !ctx.ext_proc.iter().any(|c| c.mode.response_trailers) {
            return Ok(tasks);
        }
        let Some(at) = tasks
            .iter()
            .position(|t| matches!(t, HttpTask::Trailer(Some(_))))
        else {
            return Ok(tasks);
        };
        let mut convs = std::mem::take(&mut ctx.ext_proc);
        let mut stop = None;
        if let HttpTask::Trailer(Some(trailers)) = &mut tasks[at] {
            for conv in convs.iter_mut().rev() {
                if conv.mode.response_trailers {
                    let through = self.trailers_through(conv, trailers, Direction::Response);
                    if let Err(s) = through.await {
                        stop = Some(s);
                        break;
                    }
                }
            }
        }
        ctx.ext_proc = convs;
        let Some(stop) = stop else {
            return Ok(tasks);
        };
        tasks.truncate(at);
        let header_here = tasks
            .iter()
            .position(|t| matches!(t, HttpTask::Header(h, _) if !h.status.is_informational()));
        if let Some(i) = header_here {
            // Nothing reached the client yet: the answer replaces the whole response.
            if let Some(HttpTask::Header(h, _)) = tasks.drain(i..).next() {
                ctx.response_hold.hold_back(h);
            }
        }
        self.stop_response(session, stop, tasks, ctx)
    }

    /// One processor, either way: Err when the request or response must stop. A failure
    /// under `failure_mode_allow`, or a processor that ended its stream, leaves them as they
    /// are.
    pub(crate) async fn trailers_through(
        &self,
        conv: &mut Conversation,
        trailers: &mut HeaderMap,
        dir: Direction,
    ) -> std::result::Result<(), Stop> {
        let msg = trailers_message(trailers, dir);
        let config = conv.config.clone();
        let failed = |conv: &Conversation, f: Failure| {
            tracing::debug!("ext_proc failed on the trailers: {f:?}");
            if f == Failure::Closed {
                return Ok(());
            }
            if config.failure_mode_allow {
                conv.stats.failure_mode_allowed.inc();
                return Ok(());
            }
            Err(failure_reply(f))
        };
        if config.observability_mode {
            return match conv.observe(&self.clusters, msg).await {
                Ok(()) => Ok(()),
                Err(f) => failed(conv, f),
            };
        }
        use processing_response::Response as R;
        let answer = conv.exchange(&self.clusters, msg).await;
        match answer.map(|a| (a.response, dir)) {
            Ok((Some(R::ResponseTrailers(t)), Direction::Response))
            | Ok((Some(R::RequestTrailers(t)), Direction::Request)) => match t.header_mutation {
                Some(m) => match ext_proc::apply(&m, &config.mutation_rules, trailers, &conv.stats)
                {
                    Ok(_) => Ok(()),
                    Err(f) => failed(conv, f),
                },
                None => Ok(()),
            },
            Ok((Some(R::ImmediateResponse(i)), _)) if !config.disable_immediate_response => {
                conv.stats.immediate_responses_sent.inc();
                Err(Stop::Reply(ext_proc::immediate_reply(i)))
            }
            Ok(_) => failed(conv, Failure::Error),
            Err(f) => failed(conv, f),
        }
    }
}
