//! A mock xDS control plane for Sentinel's tests, conformance runs and demos.
//!
//! It serves per-node [`Snapshot`]s over ADS (state-of-the-world and delta) and the per-type
//! LDS/RDS/CDS/EDS services, the way go-control-plane's snapshot cache does, and records
//! every request, ACK, NACK and response as an [`XdsEvent`] that tests can await. It never
//! interprets resources beyond their name, so a snapshot may carry resources the proxy must
//! reject: that is how NACK paths are tested.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use control_plane_mock::{MockControlPlane, Snapshot, EventKind, resource};
//! use std::time::Duration;
//! let cp = MockControlPlane::start("127.0.0.1:0".parse()?).await?;
//! cp.set_snapshot("node-1", Snapshot::from_file("examples/snapshots/sentinel-demo.yaml")?);
//! // ... point the proxy at cp.xds_addr() ...
//! let ack = cp.wait_for_event(|e| e.is(EventKind::Ack, resource::LISTENER), Duration::from_secs(5)).await;
//! cp.shutdown().await;
//! # Ok(()) }
//! ```

mod config_dump;
mod delta;
mod error;
mod events;
mod http_api;
mod peers;
pub mod resource;
mod server;
mod service;
mod snapshot;
mod sotw;
mod stream;
mod upstream;
mod watch;

pub use error::{MockError, SnapshotError};
pub use events::{EventKind, XdsEvent};
pub use http_api::serve_http_api;
pub use peers::{serve_ext_proc, serve_rls};
pub use server::{bind, Controller, MockControlPlane, MockHandle};
pub use snapshot::Snapshot;
pub use stream::DEFAULT_NODE;
pub use upstream::serve_demo_upstream;
pub use watch::DirWatcher;
