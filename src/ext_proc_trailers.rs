//! ext_proc response trailers (`response_trailer_mode: SEND`): the trailers of a response
//! that has them (an HTTP/2 upstream's; Pingora reads none from HTTP/1 upstreams, and Envoy's
//! HTTP/1 codec drops them by default) go to each processor that asked, in reverse filter
//! order, and its `header_mutation` changes them. A response without trailers sends no
//! trailers message. Cases `ext_proc/response_trailers*` pass on Envoy 1.40 and Sentinel.
//!
//! By the time trailers arrive, the response headers and body have gone to the client, so a
//! processor that fails or answers with an immediate response gets the stream reset (HTTP/2)
//! or the connection closed (HTTP/1), as Envoy does when its headers were sent. (Envoy answers
//! with a clean local reply instead when the whole response reached it while it still waited
//! on the response headers' answer; Pingora always writes the headers first.)

use http::HeaderMap;
use pingora_proxy::Session;
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, HttpTrailers, ProcessingRequest,
};

use crate::ext_proc::{self, Conversation, Failure};
use crate::proxy::{Ctx, HttpHandler};

fn trailers_message(trailers: &HeaderMap) -> ProcessingRequest {
    let pairs = trailers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseTrailers(
            HttpTrailers {
                trailers: Some(ext_proc::header_map(pairs)),
            },
        )),
        ..Default::default()
    }
}

impl HttpHandler {
    /// Runs the response trailers through the processors that asked for them.
    pub(crate) async fn ext_proc_response_trailers(
        &self,
        session: &mut Session,
        trailers: &mut HeaderMap,
        ctx: &mut Ctx,
    ) {
        let mut convs = std::mem::take(&mut ctx.ext_proc);
        let mut stopped = false;
        for conv in convs.iter_mut().rev() {
            if conv.mode.response_trailers && !self.trailers_through(conv, trailers).await {
                stopped = true;
                break;
            }
        }
        ctx.ext_proc = convs;
        if stopped {
            // The headers are out: all that is left is to end the stream abruptly.
            session.as_downstream_mut().shutdown().await;
        }
    }

    /// One processor: false when the response must stop.
    async fn trailers_through(&self, conv: &mut Conversation, trailers: &mut HeaderMap) -> bool {
        let msg = trailers_message(trailers);
        let config = conv.config.clone();
        let failed = |conv: &Conversation, f: Failure| {
            tracing::debug!("ext_proc failed on the response trailers: {f:?}");
            if f == Failure::Closed {
                return true;
            }
            if config.failure_mode_allow {
                conv.stats.failure_mode_allowed.inc();
            }
            config.failure_mode_allow
        };
        if config.observability_mode {
            return match conv.observe(&self.clusters, msg).await {
                Ok(()) => true,
                Err(f) => failed(conv, f),
            };
        }
        use processing_response::Response as R;
        let answer = conv.exchange(&self.clusters, msg).await;
        match answer.map(|a| a.response) {
            Ok(Some(R::ResponseTrailers(t))) => match t.header_mutation {
                Some(m) => match ext_proc::apply(&m, &config.mutation_rules, trailers, &conv.stats)
                {
                    Ok(_) => true,
                    Err(f) => failed(conv, f),
                },
                None => true,
            },
            Ok(Some(R::ImmediateResponse(_))) if !config.disable_immediate_response => {
                conv.stats.immediate_responses_sent.inc();
                false
            }
            Ok(_) => failed(conv, Failure::Error),
            Err(f) => failed(conv, f),
        }
    }
}
