//! Sentinel: an Envoy-compatible L7 proxy on Pingora, configured only by xDS.
//!
//! Data flow: the bootstrap ([`sentinel_xds::bootstrap`]) starts the xDS client
//! ([`sentinel_xds::client`]), which publishes validated snapshots; the [`listeners`] manager
//! binds what LDS asks for and hands connections to the HTTP filter chain ([`proxy`]), whose
//! [`router`] picks a route and whose cluster manager ([`upstream`]) picks the upstream host.

pub mod admin;
pub mod cli;
mod ctx;
mod downstream;
mod ext_proc;
mod ext_proc_attributes;
mod ext_proc_body;
mod ext_proc_duplex;
mod ext_proc_observe;
mod ext_proc_request_trailers;
mod ext_proc_response_body;
mod ext_proc_trailers;
mod filters;
mod headers;
mod http1;
pub mod listeners;
mod local_reply;
pub mod memory;
pub mod mirror;
pub mod net;
pub mod proxy;
mod ratelimit;
mod request;
pub mod retry;
pub mod router;
pub mod stats;
mod timefmt;
pub mod upstream;
mod upstream_request;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use pingora_core::server::configuration::ServerConf;
use sentinel_xds::bootstrap::{Bootstrap, BootstrapError, Overrides};
use sentinel_xds::client::{ClientError, XdsClient};
use sentinel_xds::SnapshotHandle;
use tokio::sync::{mpsc, watch};

pub use cli::Options;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Config(#[from] ClientError),
    #[error("cannot start the xDS thread: {0}")]
    Thread(String),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot bind admin address {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A proxy built from a bootstrap, ready to run.
pub struct SentinelApp {
    bootstrap: Bootstrap,
    options: Options,
}

/// A started proxy: what tests and `main` need to observe and stop it.
pub struct Running {
    pub snapshots: SnapshotHandle,
    /// The bound admin address (port 0 in the bootstrap gives a real port here).
    pub admin: Option<SocketAddr>,
    /// Listener names and addresses, as bound.
    pub listeners: Arc<arc_swap::ArcSwap<Vec<(String, SocketAddr)>>>,
    /// Resolves when `/quitquitquit` was called.
    pub quit: mpsc::UnboundedReceiver<()>,
    stop: watch::Sender<bool>,
    /// Stops the xDS thread (so does dropping it).
    stop_xds: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Serve the listeners; dropped (and stopped) last.
    _workers: workers::Workers,
}

impl Running {
    /// Stops accepting, lets connections finish for at most the drain time, then stops.
    pub async fn shutdown(self, drain: std::time::Duration) {
        self.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + drain;
        while self.connections.load(std::sync::atomic::Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for t in self.tasks {
            t.abort();
        }
        self.stop_xds.send_replace(true);
    }
}

impl SentinelApp {
    /// Reads the bootstrap at `path` with default options.
    pub fn from_bootstrap(path: impl AsRef<std::path::Path>) -> Result<Self, AppError> {
        let options = Options {
            config_path: Some(path.as_ref().to_path_buf()),
            ..Options::default()
        };
        Self::new(options)
    }

    pub fn new(options: Options) -> Result<Self, AppError> {
        let overrides = Overrides {
            node_id: options.service_node.clone(),
            cluster: options.service_cluster.clone(),
            zone: options.service_zone.clone(),
        };
        let bootstrap = Bootstrap::load(
            options.config_path.as_deref(),
            options.config_yaml.as_deref(),
            &overrides,
        )?;
        Ok(Self { bootstrap, options })
    }

    /// `--mode validate`: the bootstrap and its static resources are valid.
    pub fn validate(&self) -> Result<(), AppError> {
        Ok(XdsClient::validate(&self.bootstrap)?)
    }

    /// Starts the xDS client (its own thread), the admin listener and the listener manager
    /// (on the current tokio runtime) and the `--concurrency` workers
    /// that serve the listeners.
    pub async fn start(self) -> Result<Running, AppError> {
        let snapshots = SnapshotHandle::new();
        let stash = Arc::new(listeners::SocketStash::default());
        // The xDS client validates and applies config on its own thread (Envoy's main thread),
        // so a large update never takes a data-plane worker away from requests.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (bootstrap, handle, binder) =
            (self.bootstrap.clone(), snapshots.clone(), stash.clone());
        let (stop_xds, mut stop_xds_rx) = watch::channel(false);
        std::thread::Builder::new()
            .name("sentinel-xds".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the xDS thread's runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client = match XdsClient::new(&bootstrap, handle, Some(binder)) {
                        Ok(c) => {
                            let _ = ready_tx.send(Ok(()));
                            c
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    tokio::select! {
                        _ = client.run() => {}
                        _ = listeners::flipped(&mut stop_xds_rx) => {}
                    }
                });
            })
            .map_err(|e| AppError::Thread(e.to_string()))?;
        ready_rx
            .await
            .map_err(|_| AppError::Thread("the xDS thread ended".into()))??;
        let mut tasks = Vec::new();
        let stats = Arc::new(stats::Registry::default());
        let clusters = Arc::new(upstream::ClusterManager::new(stats.clone()));
        let conf = Arc::new(ServerConf {
            threads: self.options.concurrency,
            // Attempts per request; route retry policies decide how many are used.
            max_retries: 16,
            ..ServerConf::default()
        });
        let shared = listeners::Shared {
            snapshots: snapshots.clone(),
            clusters: clusters.clone(),
            conf,
            stats: stats.clone(),
            local_cluster: self.bootstrap.node.cluster.as_str().into(),
            stash,
        };
        let workers =
            workers::Workers::start(self.options.concurrency).map_err(AppError::Workers)?;
        let mut manager = listeners::ListenerManager::new(
            shared,
            workers.handles().to_vec(),
            self.options.drain_time,
        );
        let connections = manager.connections.clone();
        let bound = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
        let (stop, mut stop_rx) = watch::channel(false);
        let mut changes = snapshots.subscribe();
        let bound_w = bound.clone();
        tasks.push(tokio::spawn(async move {
            let mut dns_tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                manager.sync().await;
                bound_w.store(Arc::new(manager.addresses()));
                // Rebuilding listeners and clusters freed the previous ones on this thread.
                memory::collect_thread_heap();
                loop {
                    tokio::select! {
                        r = changes.changed() => if r.is_err() { return } else { break },
                        _ = dns_tick.tick() => manager.refresh_dns().await,
                        _ = listeners::flipped(&mut stop_rx) => {
                            manager.drain_all();
                            return;
                        }
                    }
                }
            }
        }));
        let (quit_tx, quit) = mpsc::unbounded_channel();
        let mut admin = None;
        if let Some(addr) = self.bootstrap.admin {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Admin { addr, source })?;
            admin = l.local_addr().ok();
            let o = &self.options;
            let state = Arc::new(admin::AdminState {
                snapshots: snapshots.clone(),
                clusters,
                stats,
                listeners: bound.clone(),
                bootstrap: self.bootstrap.json.clone(),
                node: sentinel_proto::to_json(&self.bootstrap.node_proto),
                options: serde_json::json!({
                    "concurrency": o.concurrency,
                    "config_path": o.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    "config_yaml": o.config_yaml.clone().unwrap_or_default(),
                    "log_level": o.log_level,
                    "service_cluster": o.service_cluster.clone().unwrap_or_default(),
                    "service_node": o.service_node.clone().unwrap_or_default(),
                    "service_zone": o.service_zone.clone().unwrap_or_default(),
                    "drain_time": format!("{}s", o.drain_time.as_secs()),
                    "parent_shutdown_time": format!("{}s", o.parent_shutdown_time.as_secs()),
                    "mode": if o.mode == cli::Mode::Validate { "Validate" } else { "Serve" },
                    "base_id": o.base_id.to_string(),
                }),
                started: SystemTime::now(),
                quit: quit_tx,
            });
            tasks.push(tokio::spawn(admin::serve(l, state)));
        }
        Ok(Running {
            snapshots,
            admin,
            listeners: bound,
            quit,
            stop,
            stop_xds,
            tasks,
            connections,
            _workers: workers,
        })
    }
}
