//! ext_proc request trailers (`request_trailer_mode: SEND`): the trailers an HTTP/2 client
//! sends after its request body go to each processor that asked, in filter order, after that
//! processor's body messages (whose last one then has no `end_of_stream`), and its
//! `header_mutation` changes them before they go upstream. An HTTP/2 upstream gets them; an
//! HTTP/1 upstream does not (Envoy's HTTP/1 codec drops request trailers by default), but the
//! processor sees them either way, as in Envoy.
//!
//! Pingora reads the trailers (vendor/pingora-core's patch) before its last call of
//! `request_body_filter`, so this runs there, at the end of the body, and changes them in the
//! downstream session, which the patched pingora-proxy sends upstream after the body. On a
//! retry they are not sent again to the processors: the session keeps the changed ones.
//!
//! A processor that stops the request on its trailers (immediate response, failure, timeout)
//! gets the client its answer as a stop on a body message does; under `failure_mode_allow`
//! the trailers go on unchanged; in observability mode they are sent and go on unchanged.
//! Cases `ext_proc/request_trailers*`.

use bytes::Bytes;
use http::HeaderMap;
use sentinel_xds::config::ext_proc::BodyMode;

use crate::ext_proc::Conversation;
use crate::ext_proc_body::{Direction, Stop};
use crate::proxy::HttpHandler;

impl HttpHandler {
    /// After a processor had the end of the body (`data`, what it made of it): the trailers
    /// through it, when there are trailers and it asked for them. For a FULL_DUPLEX_STREAMED
    /// body the processor streams the rest of the body back before it answers the trailers:
    /// that rest is added to `data`.
    pub(crate) async fn request_trailers_after(
        &self,
        conv: &mut Conversation,
        data: Bytes,
        trailers: Option<&mut HeaderMap>,
    ) -> Result<Bytes, Stop> {
        let Some(trailers) = trailers.filter(|_| conv.mode.request_trailers) else {
            return Ok(data);
        };
        let duplex = conv.mode.request_body == BodyMode::FullDuplexStreamed;
        if duplex && !conv.request_body.done && !conv.config.observability_mode {
            let rest = self.full_duplex_trailers(conv, trailers).await?;
            return Ok([data, rest].concat().into());
        }
        self.trailers_through(conv, trailers, Direction::Request)
            .await
            .map(|()| data)
    }
}
