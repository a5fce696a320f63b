//! Sentinel's control-plane side: the Envoy bootstrap, the xDS client, and the validated
//! config snapshot that the data plane reads.
//!
//! Data flow: [`bootstrap`] reads the file Envoy would read; [`client`] subscribes over ADS
//! (or per-type streams, or files) and feeds each response to [`store`], which validates the
//! resources into [`config`] types, tracks warming, and publishes an immutable [`Snapshot`].

pub mod bootstrap;
pub mod client;
pub mod config;
pub mod snapshot;
pub mod store;
pub mod types;

pub use snapshot::{Snapshot, SnapshotHandle};
