//! The record of what clients said and what the server sent. Tests assert on it ("the proxy
//! ACKed version 2 of LDS", "it NACKed with this message"), so every request and response is
//! kept in order and can be awaited.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::watch;

/// What happened on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    /// A request that is not an ACK/NACK (the first of a type), or one that changed the
    /// subscription (recorded in addition to the ACK it may also be).
    Request,
    /// The client accepted the response named by `response_nonce`.
    Ack,
    /// The client rejected the response named by `response_nonce`; `error_detail` says why.
    Nack,
    /// The server sent a response (`response_nonce` is its nonce, `resource_names` what it
    /// carried, `removed` what delta removed).
    Response,
    /// The stream ended (client went away, or the control plane shut down).
    StreamClosed,
}

/// One request or response on an xDS stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XdsEvent {
    /// Position in the log, from 0, never reused (not even after [`clear`](crate::Controller::clear_events)).
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Which stream, unique within one control plane run.
    pub stream_id: u64,
    /// The gRPC service: `ads`, `lds`, `rds`, `cds` or `eds`.
    pub service: &'static str,
    /// True on the incremental (delta) protocol.
    pub delta: bool,
    /// The node id of the stream's first request (empty when it had none).
    pub node_id: String,
    /// The resource type; empty for [`EventKind::StreamClosed`] on a stream that never asked.
    pub type_url: String,
    pub kind: EventKind,
    /// The request's `version_info` (SotW); for a delta ACK/NACK the `system_version_info` of
    /// the response it answers; for a response the version sent.
    pub version_info: String,
    /// The request's `response_nonce`, or the nonce of a response.
    pub response_nonce: String,
    /// The NACK's `error_detail.message`.
    pub error_detail: Option<String>,
    /// SotW: the requested names (or the names sent). Delta: `resource_names_subscribe` (or
    /// the names sent).
    pub resource_names: Vec<String>,
    /// Delta: `resource_names_unsubscribe`, or a response's `removed_resources`.
    pub removed: Vec<String>,
}

impl XdsEvent {
    /// True for an event of this kind about this type URL.
    pub fn is(&self, kind: EventKind, type_url: &str) -> bool {
        self.kind == kind && self.type_url == type_url
    }
}

/// The ordered, awaitable event log of one control plane.
#[derive(Debug)]
pub(crate) struct EventLog {
    events: Mutex<Vec<XdsEvent>>,
    /// The next sequence number; waiters watch it to learn that something was added.
    next_seq: watch::Sender<u64>,
}

impl EventLog {
    pub fn new() -> Self {
        EventLog {
            events: Mutex::new(Vec::new()),
            next_seq: watch::Sender::new(0),
        }
    }

    /// Appends an event, assigning its sequence number and timestamp.
    pub fn record(&self, mut event: XdsEvent) {
        event.unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        match event.kind {
            EventKind::Nack => tracing::warn!(
                node = %event.node_id, type_url = %event.type_url, nonce = %event.response_nonce,
                error = event.error_detail.as_deref().unwrap_or(""), "NACK"
            ),
            EventKind::Ack => tracing::info!(
                node = %event.node_id, type_url = %event.type_url, version = %event.version_info, "ACK"
            ),
            _ => tracing::debug!(?event, "xDS event"),
        }
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        self.next_seq.send_modify(|seq| {
            event.seq = *seq;
            *seq += 1;
        });
        events.push(event);
    }

    pub fn all(&self) -> Vec<XdsEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn since(&self, seq: u64) -> Vec<XdsEvent> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().filter(|e| e.seq >= seq).cloned().collect()
    }

    pub fn next_seq(&self) -> u64 {
        *self.next_seq.borrow()
    }

    pub fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The first event with `seq >= from` that matches, waiting up to `timeout` for one to be
    /// recorded. Past events count, so a test cannot miss an event that raced ahead of it.
    pub async fn wait_for(
        &self,
        from: u64,
        pred: impl Fn(&XdsEvent) -> bool,
        timeout: Duration,
    ) -> Option<XdsEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.next_seq.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(found) = self
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|e| e.seq >= from && pred(e))
            {
                return Some(found.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}
