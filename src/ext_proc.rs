//! `envoy.filters.http.ext_proc`, the data plane side: one `Process` stream per request,
//! header messages out, mutations and immediate responses back.

use std::sync::Arc;

use pingora_http::{RequestHeader, ResponseHeader};
use sentinel_proto::pb::envoy::config::core::v3::{
    header_value_option, HeaderMap, HeaderValue, HeaderValueOption,
};
use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    external_processor_client::ExternalProcessorClient, processing_request, processing_response,
    HeaderMutation, HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse,
};
use sentinel_proto::pb::google::protobuf::Struct;
use sentinel_xds::config::ext_proc::{ExtProc, MutationRules, ProcessingMode};
use tokio::sync::mpsc;

use crate::filters::FilterReply;
use crate::headers::Headers;
use crate::stats::ExtProcStats;
use crate::upstream::ClusterManager;

/// Why talking to the processor failed: Envoy answers 504 for a timeout, 500 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Timeout,
    Error,
    /// The processor ended the stream (gRPC OK) instead of answering: as Envoy, the request
    /// goes on unchanged and the processor gets no more messages.
    Closed,
}

impl Failure {
    pub(crate) fn status(self) -> u16 {
        match self {
            Failure::Timeout => 504,
            // `Closed` is not a failure: callers go on without the processor.
            Failure::Error | Failure::Closed => 500,
        }
    }
}

/// One request's conversation with one processor.
pub(crate) struct Conversation {
    pub config: Arc<ExtProc>,
    /// The processing mode in effect (the route's override, else the filter's).
    pub mode: ProcessingMode,
    /// The request body as it goes through this processor.
    pub request_body: crate::ext_proc_body::BodyState,
    /// The response body as it goes through this processor.
    pub response_body: crate::ext_proc_body::BodyState,
    /// The stream of an `observability_mode` conversation.
    pub(crate) observer: Option<crate::ext_proc_observe::Observer>,
    pub stats: Arc<ExtProcStats>,
    /// The processor ended the stream: it gets no more messages.
    closed: bool,
    /// `request_attributes` and `response_attributes`, evaluated and waiting for the first
    /// message of their direction.
    pub(crate) request_attributes: Option<Attributes>,
    pub(crate) response_attributes: Option<Attributes>,
    stream: Option<(
        mpsc::Sender<ProcessingRequest>,
        tonic::Streaming<ProcessingResponse>,
    )>,
}

/// A message's `attributes`.
pub(crate) type Attributes = std::collections::HashMap<String, Struct>;

/// What the processor said about a set of headers.
pub(crate) enum Outcome {
    Continue {
        mutation: Option<HeaderMutation>,
        clear_route_cache: bool,
    },
    Immediate(ImmediateResponse),
}

pub(crate) fn header_map<'a>(pairs: impl Iterator<Item = (&'a str, &'a [u8])>) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.to_vec(),
                ..Default::default()
            })
            .collect(),
    }
}

/// The request headers as Envoy sends them: pseudo-headers first.
pub(crate) fn request_headers(req: &RequestHeader, end_of_stream: bool) -> ProcessingRequest {
    let authority = crate::request::host_of(req);
    let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let pseudo = [
        (":authority", authority.as_bytes()),
        (":path", path.as_bytes()),
        (":method", req.method.as_str().as_bytes()),
        (":scheme", b"http".as_slice()),
    ];
    let regular = req
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::HOST)
        .map(|(k, v)| (k.as_str(), v.as_bytes()));
    ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(header_map(pseudo.into_iter().chain(regular))),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) fn response_headers(resp: &ResponseHeader) -> ProcessingRequest {
    let status = resp.status.as_str().to_string();
    let pseudo = [(":status", status.as_bytes())];
    let regular = resp.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseHeaders(HttpHeaders {
            headers: Some(header_map(pseudo.into_iter().chain(regular))),
            ..Default::default()
        })),
        ..Default::default()
    }
}

impl Conversation {
    pub(crate) fn new(
        config: Arc<ExtProc>,
        mode: ProcessingMode,
        stats: Arc<ExtProcStats>,
    ) -> Self {
        Self {
            config,
            mode,
            stats,
            request_body: Default::default(),
            response_body: Default::default(),
            observer: None,
            closed: false,
            request_attributes: None,
            response_attributes: None,
            stream: None,
        }
    }

    /// Takes the processor's `mode_override` from an answer to headers, when the filter has
    /// `allow_mode_override` (as Envoy: the new mode applies to the rest of the request and
    /// to the response). An override whose mode a config would be refused for
    /// (FULL_DUPLEX_STREAMED without trailers SEND) is ignored whole and logged.
    pub(crate) fn mode_override(&mut self, mut resp: ProcessingResponse) -> ProcessingResponse {
        if let (true, Some(m)) = (self.config.allow_mode_override, resp.mode_override.take()) {
            match ProcessingMode::overridden(&m) {
                Ok(mode) => self.mode = mode,
                Err(e) => tracing::warn!("ext_proc: mode_override ignored: {e}"),
            }
        }
        resp
    }

    /// Puts the attributes still pending for the message's direction on it: Envoy sends them
    /// with the first message the processor gets for the request, and for the response.
    pub(crate) fn stamp(&mut self, msg: &mut ProcessingRequest) {
        use processing_request::Request as R;
        let pending = match &msg.request {
            Some(R::RequestHeaders(_) | R::RequestBody(_) | R::RequestTrailers(_)) => {
                &mut self.request_attributes
            }
            Some(_) => &mut self.response_attributes,
            None => return,
        };
        if let Some(a) = pending.take() {
            msg.attributes = a;
        }
    }

    /// Sends one message and waits (at most `message_timeout`) for its answer.
    pub(crate) async fn exchange(
        &mut self,
        clusters: &ClusterManager,
        msg: ProcessingRequest,
    ) -> Result<ProcessingResponse, Failure> {
        let timeout = self.config.message_timeout;
        let work = async {
            self.send(clusters, msg).await?;
            self.receive().await
        };
        let result = tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(Failure::Timeout));
        self.settle(result)
    }

    /// Sends one message without waiting for its answer (FULL_DUPLEX_STREAMED); the first
    /// one opens the stream.
    pub(crate) async fn send_only(
        &mut self,
        clusters: &ClusterManager,
        msg: ProcessingRequest,
    ) -> Result<(), Failure> {
        let result = self.send(clusters, msg).await;
        self.settle(result)
    }

    /// The next answer, waiting at most `wait`; with a zero `wait`, only one already there.
    pub(crate) async fn next_answer(
        &mut self,
        wait: std::time::Duration,
    ) -> Option<Result<ProcessingResponse, Failure>> {
        let result = if wait.is_zero() {
            futures::FutureExt::now_or_never(self.receive())?
        } else {
            tokio::time::timeout(wait, self.receive())
                .await
                .unwrap_or(Err(Failure::Timeout))
        };
        Some(self.settle(result))
    }

    async fn send(
        &mut self,
        clusters: &ClusterManager,
        mut msg: ProcessingRequest,
    ) -> Result<(), Failure> {
        if self.closed {
            return Err(Failure::Closed);
        }
        self.stamp(&mut msg);
        match &mut self.stream {
            Some((tx, _)) => tx.send(msg).await.map_err(|_| Failure::Error)?,
            None => {
                self.stats.streams_started.inc();
                let host = clusters
                    .get(&self.config.cluster)
                    .and_then(|c| c.pick())
                    .ok_or(Failure::Error)?;
                let (tx, rx) = mpsc::channel(4);
                // Queue the first message before the call: some servers answer the
                // call's headers only with their first message.
                tx.send(msg).await.map_err(|_| Failure::Error)?;
                let mut client = ExternalProcessorClient::new(host.grpc_channel());
                let call = client.process(tokio_stream::wrappers::ReceiverStream::new(rx));
                let responses = call.await.map_err(|_| Failure::Error)?.into_inner();
                self.stream = Some((tx, responses));
            }
        }
        self.stats.stream_msgs_sent.inc();
        Ok(())
    }

    /// Reads one answer (cancel-safe: tonic's `message` is).
    async fn receive(&mut self) -> Result<ProcessingResponse, Failure> {
        if self.closed {
            return Err(Failure::Closed);
        }
        let (_, responses) = self.stream.as_mut().ok_or(Failure::Error)?;
        match responses.message().await {
            Ok(Some(a)) => {
                self.stats.stream_msgs_received.inc();
                Ok(a)
            }
            Ok(None) => Err(Failure::Closed),
            Err(_) => Err(Failure::Error),
        }
    }

    /// Counts a failure and leaves the stream as it says.
    fn settle<T>(&mut self, result: Result<T, Failure>) -> Result<T, Failure> {
        match &result {
            Err(Failure::Timeout) => self.stats.message_timeouts.inc(),
            Err(Failure::Error) => {
                self.stats.streams_failed.inc();
                // A failed stream is not closed normally.
                self.stream = None;
            }
            Err(Failure::Closed) => self.closed = true,
            Ok(_) => {}
        }
        result
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        if self.stream.is_some() || self.observer.is_some() {
            self.stats.streams_closed.inc();
        }
    }
}

/// Reads the processor's answer to a headers message of the expected kind.
pub(crate) fn outcome(
    resp: ProcessingResponse,
    request_phase: bool,
    config: &ExtProc,
) -> Result<Outcome, Failure> {
    use processing_response::Response as R;
    match resp.response {
        Some(R::ImmediateResponse(i)) if !config.disable_immediate_response => {
            Ok(Outcome::Immediate(i))
        }
        Some(R::RequestHeaders(h)) if request_phase => Ok(continued(h.response)),
        Some(R::ResponseHeaders(h)) if !request_phase => Ok(continued(h.response)),
        _ => Err(Failure::Error),
    }
}

pub(crate) fn continued(
    r: Option<sentinel_proto::pb::envoy::service::ext_proc::v3::CommonResponse>,
) -> Outcome {
    let r = r.unwrap_or_default();
    Outcome::Continue {
        mutation: r.header_mutation,
        clear_route_cache: r.clear_route_cache,
    }
}

/// A header value from a processor: Envoy reads `raw_value` only (a `value`-only header is
/// set empty), and so does Sentinel.
fn value_of(h: &HeaderValue) -> String {
    String::from_utf8_lossy(&h.raw_value).into_owned()
}

/// Applies a header mutation within the rules. A pseudo-header the caller handles (`:path`,
/// `:status`) comes back to it; a refused mutation is skipped, or an error under
/// `disallow_is_error`.
pub(crate) fn apply(
    mutation: &HeaderMutation,
    rules: &MutationRules,
    target: &mut impl Headers,
    stats: &ExtProcStats,
) -> Result<Vec<(String, String)>, Failure> {
    let mut pseudo = Vec::new();
    let refuse = || {
        stats.rejected_header_mutations.inc();
        if rules.disallow_is_error {
            Err(Failure::Error)
        } else {
            Ok(())
        }
    };
    for opt in &mutation.set_headers {
        let Some(h) = &opt.header else { continue };
        let name = h.key.to_ascii_lowercase();
        if !rules.allows(&name) {
            refuse()?;
            continue;
        }
        let value = value_of(h);
        if name.starts_with(':') {
            pseudo.push((name, value));
            continue;
        }
        let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name),
            http::HeaderValue::try_from(value),
        ) else {
            refuse()?;
            continue;
        };
        if appends(opt) && target.has(&name) {
            target.append(name, value);
        } else {
            target.insert(name, value);
        }
    }
    for name in &mutation.remove_headers {
        let name = name.to_ascii_lowercase();
        if name.starts_with(':') || !rules.allows(&name) {
            refuse()?;
            continue;
        }
        target.remove(&name);
    }
    Ok(pseudo)
}

#[allow(deprecated)] // `append` is deprecated, but processors still send it.
fn appends(opt: &HeaderValueOption) -> bool {
    match opt.append.as_ref() {
        Some(b) => b.value,
        None => {
            opt.append_action == header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32
        }
    }
}

/// An immediate response as the filter's own answer.
pub(crate) fn immediate_reply(i: ImmediateResponse) -> FilterReply {
    let status = i
        .status
        .as_ref()
        .map_or(200, |s| s.code as u16)
        .clamp(200, 599);
    let headers = i
        .headers
        .iter()
        .flat_map(|m| &m.set_headers)
        .filter_map(|o| o.header.as_ref())
        .filter_map(|h| {
            http::HeaderName::try_from(h.key.to_ascii_lowercase())
                .ok()
                .map(|k| (k, value_of(h)))
        })
        .collect();
    FilterReply {
        status,
        body: String::from_utf8_lossy(&i.body).into_owned(),
        headers,
        grpc_status: i.grpc_status.map(|g| g.status),
    }
}
