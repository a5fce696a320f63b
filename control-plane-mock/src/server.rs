//! Starting and stopping the control plane, and the [`Controller`] tests drive it with.

use std::{collections::HashMap, net::SocketAddr, ops::Deref, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::{
    net::{TcpListener, TcpSocket},
    task::JoinHandle,
};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    error::MockError,
    events::{EventKind, XdsEvent},
    service,
    stream::Shared,
    Snapshot,
};

/// How long [`MockHandle::shutdown`] waits for connections to close before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Binds a TCP listener with `SO_REUSEADDR`, so a test can stop a server and start another
/// on the same port at once, without waiting out TIME_WAIT. Port 0 picks a free port.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, MockError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| MockError::Socket { addr, source })?;
    socket
        .set_reuseaddr(true)
        .map_err(|source| MockError::Socket { addr, source })?;
    socket
        .bind(addr)
        .map_err(|source| MockError::Bind { addr, source })?;
    socket
        .listen(1024)
        .map_err(|source| MockError::Bind { addr, source })
}

/// The xDS control plane: ADS (SotW and delta) and LDS/RDS/CDS/EDS over gRPC (HTTP/2
/// plaintext), serving per-node [`Snapshot`]s.
#[derive(Debug)]
pub struct MockControlPlane;

impl MockControlPlane {
    /// Binds `addr` (port 0 picks one; see [`MockHandle::xds_addr`]) and serves until the
    /// handle is shut down or dropped. Must be called inside a Tokio runtime.
    pub async fn start(addr: SocketAddr) -> Result<MockHandle, MockError> {
        let listener = bind(addr)?;
        Self::start_on(listener)
    }

    /// Serves on an already bound listener.
    pub fn start_on(listener: TcpListener) -> Result<MockHandle, MockError> {
        let addr = listener.local_addr().map_err(|source| MockError::Socket {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let shared = Arc::new(Shared::new());
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            conn.inspect(|stream| {
                // xDS is request/response: Nagle only adds latency.
                let _ = stream.set_nodelay(true);
            })
        });
        let mut down = shared.shutdown.subscribe();
        let router = service::router(shared.clone());
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = down.wait_for(|d| *d).await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(error = %e, "xDS server failed");
            }
        });
        tracing::info!(%addr, "xDS control plane listening");
        Ok(MockHandle {
            controller: Controller {
                shared,
                xds_addr: addr,
            },
            task: Some(task),
        })
    }
}

/// A running control plane. Dereferences to its [`Controller`]. Dropping it stops serving,
/// like [`MockHandle::shutdown`] but without waiting.
#[derive(Debug)]
pub struct MockHandle {
    controller: Controller,
    task: Option<JoinHandle<()>>,
}

impl MockHandle {
    /// A cloneable controller for other tasks (the HTTP API, a directory watcher).
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    /// Stops the control plane the way a crash looks to clients: every open stream ends
    /// with UNAVAILABLE, connections are closed (cut after a few seconds if a client
    /// lingers) and the port is released, so `start` on the same address works right after.
    pub async fn shutdown(mut self) {
        self.controller.shared.shutdown.send_replace(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("xDS server did not drain in time; aborting it");
                task.abort();
                let _ = task.await;
            }
        }
        tracing::info!(addr = %self.controller.xds_addr, "xDS control plane stopped");
    }
}

impl Deref for MockHandle {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        &self.controller
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.controller.shared.shutdown.send_replace(true);
    }
}

/// Controls a control plane: its snapshots and its event log. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Controller {
    shared: Arc<Shared>,
    xds_addr: SocketAddr,
}

impl Controller {
    /// The address the xDS gRPC server listens on.
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    /// Sets a node's snapshot (use [`DEFAULT_NODE`](crate::DEFAULT_NODE), `"*"`, for every
    /// node without its own) and pushes the changes to every open stream.
    pub fn set_snapshot(&self, node_id: &str, snapshot: Snapshot) {
        tracing::info!(
            node = node_id,
            version = snapshot.version(),
            resources = snapshot.len(),
            "snapshot set"
        );
        self.shared.update(|map| {
            map.insert(node_id.to_string(), Arc::new(snapshot));
        });
    }

    /// The node's own snapshot (no fallback to the default).
    pub fn snapshot(&self, node_id: &str) -> Option<Snapshot> {
        self.shared.exact_snapshot(node_id).map(|s| (*s).clone())
    }

    /// Every node id that has a snapshot, sorted.
    pub fn node_ids(&self) -> Vec<String> {
        self.shared.node_ids()
    }

    /// Every snapshot by node id, e.g. to carry them over to a restarted control plane.
    pub fn snapshots(&self) -> HashMap<String, Snapshot> {
        self.node_ids()
            .into_iter()
            .filter_map(|id| self.snapshot(&id).map(|s| (id, s)))
            .collect()
    }

    /// Removes a node's snapshot. Streams keep what they have (nothing is pushed) until a
    /// snapshot applies again.
    pub fn remove_snapshot(&self, node_id: &str) -> Option<Snapshot> {
        self.shared
            .update(|map| map.remove(node_id))
            .map(|s| (*s).clone())
    }

    /// Edits a node's snapshot in place (starting from an empty one) and pushes the result.
    /// When the edit leaves the version unchanged, the version becomes the content hash, so
    /// a change is never served under an old version.
    pub fn update_snapshot(&self, node_id: &str, edit: impl FnOnce(&mut Snapshot)) {
        self.shared.update(|map| {
            let mut snapshot = map.get(node_id).map(|s| (**s).clone()).unwrap_or_default();
            let before = snapshot.clone();
            edit(&mut snapshot);
            if snapshot.version() == before.version() && snapshot != before {
                let version = snapshot.content_hash();
                snapshot.set_version(version);
            }
            map.insert(node_id.to_string(), Arc::new(snapshot));
        });
    }

    /// Removes one resource from a node's snapshot and pushes the change (a new version);
    /// false when it was not there.
    pub fn remove_resource(&self, node_id: &str, type_url: &str, name: &str) -> bool {
        let mut removed = false;
        self.update_snapshot(node_id, |s| removed = s.remove(type_url, name));
        removed
    }

    /// Every recorded event, oldest first.
    pub fn events(&self) -> Vec<XdsEvent> {
        self.shared.events.all()
    }

    /// The events with `seq >= seq`.
    pub fn events_since(&self, seq: u64) -> Vec<XdsEvent> {
        self.shared.events.since(seq)
    }

    /// The `seq` the next event will get: take it before an action, then wait for events
    /// since it to ignore everything that happened earlier.
    pub fn next_event_seq(&self) -> u64 {
        self.shared.events.next_seq()
    }

    /// Forgets recorded events (sequence numbers keep counting).
    pub fn clear_events(&self) {
        self.shared.events.clear()
    }

    /// The first recorded event (past or future) that matches, or `None` after `timeout`.
    pub async fn wait_for_event(
        &self,
        pred: impl Fn(&XdsEvent) -> bool,
        timeout: Duration,
    ) -> Option<XdsEvent> {
        self.shared.events.wait_for(0, pred, timeout).await
    }

    /// Like [`wait_for_event`](Self::wait_for_event), ignoring events before `seq`.
    pub async fn wait_for_event_since(
        &self,
        seq: u64,
        pred: impl Fn(&XdsEvent) -> bool,
        timeout: Duration,
    ) -> Option<XdsEvent> {
        self.shared.events.wait_for(seq, pred, timeout).await
    }

    /// Waits for an ACK of `type_url` at `version`.
    pub async fn wait_for_ack(
        &self,
        type_url: &str,
        version: &str,
        timeout: Duration,
    ) -> Option<XdsEvent> {
        self.wait_for_event(
            |e| e.is(EventKind::Ack, type_url) && e.version_info == version,
            timeout,
        )
        .await
    }
}
