//! State shared by every stream of one control plane, and the task that drives one stream.
//!
//! Each gRPC stream gets one task that owns the stream's protocol state, so a stream never
//! needs a lock on its own state: requests, snapshot changes and shutdown are handled one at a
//! time by `select!`. Snapshot changes are announced by bumping one generation counter; each
//! stream then recomputes what its client should have and sends only what differs.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use futures::StreamExt;
use sentinel_proto::pb::envoy::config::core::v3::{ControlPlane, Node};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};

use crate::{
    events::{EventKind, EventLog, XdsEvent},
    Snapshot,
};

/// The node id whose snapshot is served to nodes that have none of their own.
pub const DEFAULT_NODE: &str = "*";

/// What one control plane instance shares between its streams and its controller.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
    /// Bumped on every snapshot change; every stream watches it.
    generation: watch::Sender<u64>,
    pub events: EventLog,
    /// Set once, when the control plane shuts down: every stream then ends with UNAVAILABLE.
    pub shutdown: watch::Sender<bool>,
    next_nonce: AtomicU64,
    next_stream: AtomicU64,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            snapshots: Mutex::new(HashMap::new()),
            generation: watch::Sender::new(0),
            events: EventLog::new(),
            shutdown: watch::Sender::new(false),
            next_nonce: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Snapshot>>> {
        self.snapshots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's own snapshot, else the default one.
    pub fn snapshot_for(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        let snapshots = self.lock();
        snapshots
            .get(node_id)
            .or_else(|| snapshots.get(DEFAULT_NODE))
            .cloned()
    }

    /// The node's own snapshot, without falling back to the default.
    pub fn exact_snapshot(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        self.lock().get(node_id).cloned()
    }

    pub fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Changes one node's snapshot under the lock and wakes every stream.
    pub fn update<R>(&self, f: impl FnOnce(&mut HashMap<String, Arc<Snapshot>>) -> R) -> R {
        let result = f(&mut self.lock());
        self.generation.send_modify(|g| *g += 1);
        result
    }

    pub fn nonce(&self) -> String {
        self.next_nonce.fetch_add(1, Ordering::Relaxed).to_string()
    }
}

/// Who a stream is: its id, service and node, and the helpers its protocol needs.
pub(crate) struct StreamCtx {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub service: &'static str,
    pub delta: bool,
    /// The type URL of a per-type service (LDS, RDS...); `None` on ADS.
    fixed_type: Option<&'static str>,
    node_id: Option<String>,
}

impl StreamCtx {
    pub fn new(
        shared: Arc<Shared>,
        service: &'static str,
        delta: bool,
        fixed_type: Option<&'static str>,
    ) -> Self {
        let id = shared.next_stream.fetch_add(1, Ordering::Relaxed);
        StreamCtx {
            shared,
            id,
            service,
            delta,
            fixed_type,
            node_id: None,
        }
    }

    /// The type a request is about: the service's own type, else the request's `type_url`
    /// (`None` for an ADS request without one, which the protocol does not allow).
    pub fn type_url(&self, requested: &str) -> Option<String> {
        match self.fixed_type {
            Some(fixed) => Some(fixed.to_string()),
            None if requested.is_empty() => {
                tracing::warn!(stream = self.id, "ADS request without type_url ignored");
                None
            }
            None => Some(requested.to_string()),
        }
    }

    /// Remembers the node of the first request: only the first is sure to carry it.
    pub fn learn_node(&mut self, node: Option<&Node>) {
        if self.node_id.is_none() {
            let id = node.map(|n| n.id.clone()).unwrap_or_default();
            tracing::info!(stream = self.id, service = self.service, delta = self.delta, node = %id, "stream opened");
            self.node_id = Some(id);
        }
    }

    /// The snapshot this stream's node should see; `None` until the node is known or while
    /// there is no snapshot for it (the client then simply waits, as with go-control-plane).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.shared.snapshot_for(self.node_id.as_deref()?)
    }

    pub fn control_plane(&self) -> Option<ControlPlane> {
        Some(ControlPlane {
            identifier: "control-plane-mock".into(),
        })
    }

    /// An event about this stream with every request-specific field empty.
    pub fn event(&self, kind: EventKind, type_url: &str) -> XdsEvent {
        XdsEvent {
            seq: 0,
            unix_ms: 0,
            stream_id: self.id,
            service: self.service,
            delta: self.delta,
            node_id: self.node_id.clone().unwrap_or_default(),
            type_url: type_url.to_string(),
            kind,
            version_info: String::new(),
            response_nonce: String::new(),
            error_detail: None,
            resource_names: Vec::new(),
            removed: Vec::new(),
        }
    }

    pub fn record(&self, event: XdsEvent) {
        self.shared.events.record(event);
    }
}

/// One side of the xDS protocol (SotW or delta) for one stream.
pub(crate) trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// Handles a client request; returns the responses to send, in order.
    fn on_request(&mut self, ctx: &mut StreamCtx, request: Self::Request) -> Vec<Self::Response>;
    /// Handles a snapshot change; returns the responses to send, in order.
    fn on_snapshot(&mut self, ctx: &mut StreamCtx) -> Vec<Self::Response>;
}

/// The response stream tonic sends to the client.
pub(crate) type ResponseStream<T> = UnboundedReceiverStream<Result<T, Status>>;

/// Spawns the task that drives one stream and returns its response stream. The channel is
/// unbounded so the task never blocks on a slow client and always sees shutdown promptly;
/// a mock's responses are few.
pub(crate) fn spawn<P: Protocol>(
    mut ctx: StreamCtx,
    mut protocol: P,
    mut requests: Streaming<P::Request>,
) -> ResponseStream<P::Response> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut shutdown = ctx.shared.shutdown.subscribe();
    let mut generation = ctx.shared.generation.subscribe();
    tokio::spawn(async move {
        let reason = loop {
            let responses = tokio::select! {
                _ = shutdown.wait_for(|down| *down) => {
                    let _ = tx.send(Err(Status::unavailable("control plane shut down")));
                    break "control plane shut down";
                }
                _ = tx.closed() => break "client went away",
                message = requests.next() => match message {
                    Some(Ok(request)) => protocol.on_request(&mut ctx, request),
                    Some(Err(status)) => {
                        tracing::debug!(stream = ctx.id, %status, "request stream failed");
                        break "request stream failed";
                    }
                    None => break "client closed the stream",
                },
                changed = generation.changed() => match changed {
                    Ok(()) => protocol.on_snapshot(&mut ctx),
                    Err(_) => break "control plane dropped",
                },
            };
            if responses
                .into_iter()
                .any(|response| tx.send(Ok(response)).is_err())
            {
                break "client went away";
            }
        };
        tracing::info!(
            stream = ctx.id,
            service = ctx.service,
            reason,
            "stream closed"
        );
        let mut event = ctx.event(EventKind::StreamClosed, "");
        event.error_detail = Some(reason.to_string());
        ctx.record(event);
    });
    UnboundedReceiverStream::new(rx)
}
