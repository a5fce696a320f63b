//! Errors of the library. Each says what input was wrong and where, because the usual reader
//! is a test author staring at a snapshot file.

use std::{io, net::SocketAddr, path::PathBuf};

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The text is not YAML/JSON, or a resource does not fit its message type.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: sentinel_proto::JsonError,
    },
    /// The document is valid YAML/JSON but not a snapshot (or config_dump) shape.
    #[error("{0}")]
    Shape(String),
    /// A resource has no name and none could be derived from it.
    #[error("resource {index} ({type_url}) has no name; give one with {{name, resource}}")]
    MissingName { index: usize, type_url: String },
}

/// Why the control plane or one of its HTTP servers could not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The address could not be bound (in use, or not local).
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Any other socket error while setting up a listener.
    #[error("socket error on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}
