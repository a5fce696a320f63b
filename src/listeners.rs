//! Listeners that come and go with LDS.
//!
//! Pingora's own listeners are fixed at start, so each xDS listener gets its own tokio accept
//! loop that hands connections to Pingora's HTTP app. Every version of a listener is a
//! *generation*: its filter chains (one `HttpProxy` each) and one shutdown watch. An update
//! swaps in a new generation for new connections and drains the old one: its next responses
//! say `connection: close` (HTTP/1) or GOAWAY (HTTP/2), and after `--drain-time-s` whatever
//! is left is closed. A removed listener stops accepting at once and drains the same way.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::protocols::l4::listener::Listener as PingoraListener;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::GetSocketDigest;
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::HttpProxy;
use sentinel_xds::config::hcm::{Codec, HttpFilter};
use sentinel_xds::config::listener::{CidrRange, FilterChain, FilterChainMatch, SourceType};
use sentinel_xds::config::Listener;
use sentinel_xds::{Snapshot, SnapshotHandle};
use tokio::sync::watch;

use crate::proxy::{DrainState, HttpHandler};
use crate::stats::Registry;
use crate::upstream::ClusterManager;
use sentinel_xds::config::hcm::HttpConnectionManager;

type App = Arc<ChainApp>;

/// One filter chain's HTTP app. Pingora reads 24 bytes to look for an h2c preface, which
/// hangs an HTTP/1 request shorter than that; so the preface is sniffed here and the
/// connection goes to an app with h2c on or off. Each app is built on its first connection:
/// a Pingora `HttpProxy` carries its own upstream connector and pools, and a listener that
/// never sees HTTP/2 (or HTTP/1) should not pay for that one.
pub struct ChainApp {
    conf: Arc<ServerConf>,
    handler: HttpHandler,
    h1: OnceLock<Arc<HttpProxy<HttpHandler>>>,
    h2c: OnceLock<Arc<HttpProxy<HttpHandler>>>,
    codec: Codec,
    limits: crate::http1::Limits,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl ChainApp {
    fn new(conf: &Arc<ServerConf>, handler: HttpHandler, codec: Codec) -> Self {
        let limits = crate::http1::Limits::new(&handler.hcm, handler.stats.clone());
        Self {
            conf: conf.clone(),
            handler,
            h1: OnceLock::new(),
            h2c: OnceLock::new(),
            codec,
            limits,
        }
    }

    fn app(&self, h2c: bool) -> &Arc<HttpProxy<HttpHandler>> {
        let cell = if h2c { &self.h2c } else { &self.h1 };
        cell.get_or_init(|| {
            let mut proxy = pingora_proxy::http_proxy(&self.conf, self.handler.clone());
            let mut opts = HttpServerOptions::default();
            opts.h2c = h2c;
            // CONNECT reaches the router, which matches no route for it (404, as Envoy).
            opts.allow_connect_method_proxying = true;
            proxy.server_options = Some(opts);
            Arc::new(proxy)
        })
    }

    async fn serve(&self, mut stream: Stream, draining: &watch::Receiver<bool>) {
        let h2 = match self.codec {
            Codec::Http1 => false,
            Codec::Http2 => true,
            Codec::Auto => match sniff_h2c(&mut stream).await {
                Ok(h2) => h2,
                Err(_) => return,
            },
        };
        let stats = &self.limits.stats;
        stats.downstream_cx_total.inc();
        let stream = crate::downstream::Buffered::new(stream);
        if h2 {
            stats.downstream_cx_http2_total.inc();
            self.app(true).process_new(Box::new(stream), draining).await;
        } else {
            stats.downstream_cx_http1_total.inc();
            crate::http1::serve(self.app(false), stream, &self.limits, draining).await;
        }
    }

    async fn cleanup(&self) {
        for app in [self.h1.get(), self.h2c.get()].into_iter().flatten() {
            app.cleanup().await;
        }
    }
}

/// Reads only as far as needed to tell the HTTP/2 preface from HTTP/1, then unreads it.
async fn sniff_h2c(stream: &mut Stream) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 24];
    while buf.len() < H2_PREFACE.len() {
        let n = stream
            .read(&mut chunk[..H2_PREFACE.len() - buf.len()])
            .await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if !H2_PREFACE.starts_with(&buf) {
            break;
        }
    }
    stream.rewind(&buf);
    Ok(buf == H2_PREFACE)
}

/// One version of a listener's filter chains.
struct Generation {
    chains: Vec<(FilterChainMatch, App)>,
    /// Each chain's HTTP connection manager and drain state.
    drains: Vec<(Arc<HttpConnectionManager>, Arc<DrainState>)>,
    default_chain: Option<App>,
    /// Flips to true when this generation starts draining.
    draining: watch::Sender<bool>,
    /// Flips to true when the drain time is over: remaining connections are closed.
    closed: watch::Sender<bool>,
}

impl Generation {
    /// Envoy's filter chain selection: at each level the most specific match wins.
    fn select(&self, local: SocketAddr, peer: SocketAddr) -> Option<&App> {
        let mut cands: Vec<&(FilterChainMatch, App)> = self.chains.iter().collect();
        narrow(&mut cands, |m| {
            m.destination_port.map(|p| (p == local.port()).then_some(1))
        });
        narrow(&mut cands, |m| best_cidr(&m.prefix_ranges, local.ip()));
        narrow(&mut cands, |m| {
            best_cidr(&m.direct_source_prefix_ranges, peer.ip())
        });
        let local_src = peer.ip().is_loopback() || peer.ip() == local.ip();
        narrow(&mut cands, |m| match m.source_type {
            SourceType::Any => None,
            SourceType::SameIpOrLoopback => Some(local_src.then_some(1)),
            SourceType::External => Some((!local_src).then_some(1)),
        });
        narrow(&mut cands, |m| {
            best_cidr(&m.source_prefix_ranges, peer.ip())
        });
        narrow(&mut cands, |m| {
            (!m.source_ports.is_empty()).then(|| m.source_ports.contains(&peer.port()).then_some(1))
        });
        match cands.as_slice() {
            [one] => Some(&one.1),
            _ => self.default_chain.as_ref(),
        }
    }

    /// Starts draining: routes are pinned as they were in `prev` (the snapshot this
    /// generation served from), new requests get `connection: close`.
    fn drain(&self, drain_time: Duration, apps: Vec<App>, prev: &Snapshot) {
        for (hcm, drain) in &self.drains {
            drain.start(hcm, prev);
        }
        self.draining.send_replace(true);
        let closed = self.closed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain_time).await;
            for app in apps {
                app.cleanup().await;
            }
            closed.send_replace(true);
        });
    }

    fn apps(&self) -> Vec<App> {
        self.chains
            .iter()
            .map(|(_, a)| a.clone())
            .chain(self.default_chain.clone())
            .collect()
    }
}

/// Keeps the chains whose criterion is the most specific: `rank` gives None when the chain
/// does not constrain this level, Some(None) when it constrains it and fails, and
/// Some(Some(n)) when it matches with specificity n.
fn narrow(
    cands: &mut Vec<&(FilterChainMatch, App)>,
    rank: impl Fn(&FilterChainMatch) -> Option<Option<u32>>,
) {
    let best = cands.iter().filter_map(|(m, _)| rank(m).flatten()).max();
    match best {
        Some(b) => cands.retain(|(m, _)| rank(m) == Some(Some(b))),
        None => cands.retain(|(m, _)| rank(m).is_none()),
    }
}

fn best_cidr(ranges: &[CidrRange], ip: IpAddr) -> Option<Option<u32>> {
    if ranges.is_empty() {
        return None;
    }
    Some(
        ranges
            .iter()
            .filter(|r| r.contains(ip))
            .map(|r| r.len as u32 + 1)
            .max(),
    )
}

/// Listener sockets bound while LDS is validated (see `ListenerBinder`), waiting for the
/// listener manager to take them. Touched only when config changes, never per request.
#[derive(Default)]
pub struct SocketStash {
    /// Bound, not yet listening: a warming listener refuses connections, as in Envoy.
    sockets: std::sync::Mutex<HashMap<String, socket2::Socket>>,
}

impl SocketStash {
    /// The bound socket for this listener, now listening.
    fn take(&self, name: &str, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        let s = sockets.remove(name)?;
        let local = s.local_addr().ok()?.as_socket()?;
        let same = local.ip() == addr.ip() && (addr.port() == 0 || addr.port() == local.port());
        (same && s.listen(1024).is_ok()).then(|| s.into())
    }
}

impl sentinel_xds::store::ListenerBinder for SocketStash {
    fn bind(&self, name: &str, addr: SocketAddr) -> Result<(), String> {
        let socket = bind(addr).map_err(|e| e.to_string())?;
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), socket);
        Ok(())
    }

    fn release(&self, name: &str) {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

/// A bound, non-blocking socket with SO_REUSEADDR.
fn bind(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A listening socket with Envoy's default backlog (1024).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = bind(addr)?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Resolves once the watch holds true (or its sender is gone).
pub(crate) async fn flipped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// One worker's accept loop for one listener: each connection is served on this worker.
async fn accept(
    listener: PingoraListener,
    local: SocketAddr,
    gens: Arc<ArcSwap<Generation>>,
    stats: Arc<crate::stats::ListenerStats>,
    mut stop_rx: watch::Receiver<bool>,
    connections: Arc<AtomicUsize>,
) {
    loop {
        let mut stream = tokio::select! {
            _ = flipped(&mut stop_rx) => return,
            res = listener.accept() => match res {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let g = gens.load_full();
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let Some(peer) = peer else { continue };
        // Pingora's own listeners set this; without it a response written in two
        // parts waits for the client's delayed ACK (40 ms).
        if let Err(e) = stream.set_nodelay() {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        stats.downstream_cx_total.inc();
        let Some(app) = g.select(local, peer).cloned() else {
            stats.no_filter_chain_match.inc();
            tracing::debug!(%peer, "no filter chain matches; closing");
            continue;
        };
        let draining = g.draining.subscribe();
        let mut closed = g.closed.subscribe();
        let connections = connections.clone();
        let stats = stats.clone();
        connections.fetch_add(1, Ordering::Relaxed);
        stats.downstream_cx_active.inc();
        tokio::spawn(async move {
            tokio::select! {
                _ = app.serve(stream, &draining) => {}
                _ = flipped(&mut closed) => {}
            }
            stats.downstream_cx_active.dec();
            connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

struct Running {
    config: Arc<Listener>,
    local: SocketAddr,
    current: Arc<ArcSwap<Generation>>,
    stop_accept: watch::Sender<bool>,
}

/// What every filter chain's handler shares.
#[derive(Clone)]
pub struct Shared {
    pub snapshots: SnapshotHandle,
    pub clusters: Arc<ClusterManager>,
    pub conf: Arc<ServerConf>,
    pub stats: Arc<Registry>,
    /// The node's cluster, for `source_cluster` rate limit descriptors.
    pub local_cluster: Arc<str>,
    /// Sockets bound during validation.
    pub stash: Arc<SocketStash>,
}

pub struct ListenerManager {
    shared: Shared,
    /// The worker event loops every listener accepts on.
    workers: Vec<tokio::runtime::Handle>,
    drain_time: Duration,
    running: HashMap<String, Running>,
    /// Open downstream connections, for a graceful exit.
    pub connections: Arc<AtomicUsize>,
    /// The snapshot of the last sync: what draining generations keep serving from.
    prev: Arc<Snapshot>,
}

impl ListenerManager {
    pub fn new(shared: Shared, workers: Vec<tokio::runtime::Handle>, drain_time: Duration) -> Self {
        Self {
            shared,
            workers,
            drain_time,
            running: HashMap::new(),
            connections: Arc::new(AtomicUsize::new(0)),
            prev: Arc::new(Snapshot::default()),
        }
    }

    /// Re-resolves DNS clusters that are due.
    pub async fn refresh_dns(&self) {
        let snap = self.shared.snapshots.load();
        self.shared.clusters.refresh_dns(&snap).await;
    }

    /// Addresses actually bound (port 0 resolved), by listener name, sorted by name.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut out: Vec<_> = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.local))
            .collect();
        out.sort();
        out
    }

    fn generation(shared: &Shared, l: &Listener) -> Generation {
        let mut drains = Vec::new();
        let mut build = |fc: &FilterChain| -> App {
            let hcm = Arc::new(fc.hcm.clone());
            let drain = Arc::new(DrainState::default());
            drains.push((hcm.clone(), drain.clone()));
            let ext_proc_stats = Arc::new(
                hcm.http_filters
                    .iter()
                    .filter_map(|f| match f {
                        HttpFilter::ExtProc { name, config } => Some((
                            name.clone(),
                            shared.stats.ext_proc(&hcm.stat_prefix, &config.stat_prefix),
                        )),
                        _ => None,
                    })
                    .collect(),
            );
            let handler = HttpHandler {
                ext_proc_stats,
                filter_chain: fc.name.as_str().into(),
                stats: shared.stats.http(&hcm.stat_prefix),
                hcm,
                snapshots: shared.snapshots.clone(),
                clusters: shared.clusters.clone(),
                local_cluster: shared.local_cluster.clone(),
                buffer_limit: l.buffer_limit,
                drain,
            };
            Arc::new(ChainApp::new(&shared.conf, handler, fc.hcm.codec))
        };
        let chains = l
            .filter_chains
            .iter()
            .map(|fc| (fc.matcher.clone(), build(fc)))
            .collect();
        let default_chain = l.default_filter_chain.as_ref().map(&mut build);
        Generation {
            chains,
            drains,
            default_chain,
            draining: watch::channel(false).0,
            closed: watch::channel(false).0,
        }
    }

    /// Brings the running listeners in line with the current snapshot.
    pub async fn sync(&mut self) {
        let snap = self.shared.snapshots.load();
        self.shared.clusters.update(&snap).await;
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !snap.listeners.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let r = self.running.remove(&name).expect("listed above");
            tracing::info!(listener = %name, "removing listener; draining");
            r.stop_accept.send_replace(true);
            let g = r.current.load();
            g.drain(self.drain_time, g.apps(), &self.prev);
        }
        for (name, config) in snap.listeners.iter() {
            match self.running.get_mut(name) {
                Some(r) if Arc::ptr_eq(&r.config, config) => {}
                Some(r) if r.config.address == config.address => {
                    tracing::info!(listener = %name, "updating listener; draining the old filter chains");
                    let next = Arc::new(Self::generation(&self.shared, config));
                    let old = r.current.swap(next);
                    r.config = config.clone();
                    old.drain(self.drain_time, old.apps(), &self.prev);
                }
                _ => {
                    if let Some(old) = self.running.remove(name) {
                        old.stop_accept.send_replace(true);
                        let g = old.current.load();
                        g.drain(self.drain_time, g.apps(), &self.prev);
                    }
                    match self.start(config).await {
                        Ok(r) => {
                            self.running.insert(name.clone(), r);
                        }
                        Err(e) => {
                            tracing::error!(listener = %name, address = %config.address, "cannot bind: {e}")
                        }
                    }
                }
            }
        }
        self.prev = snap;
    }

    async fn start(&self, config: &Arc<Listener>) -> std::io::Result<Running> {
        let socket = match self.shared.stash.take(&config.name, config.address) {
            Some(s) => s,
            None => listen(config.address)?,
        };
        let local = socket.local_addr()?;
        tracing::info!(listener = %config.name, address = %local, "listening");
        let current = Arc::new(ArcSwap::from_pointee(Self::generation(
            &self.shared,
            config,
        )));
        let stats = self.shared.stats.listener(local);
        let (stop_accept, stop_rx) = watch::channel(false);
        // Every worker accepts from the same socket, registered with its own event loop.
        for worker in self.workers.iter() {
            let tcp = {
                let _runtime = worker.enter();
                tokio::net::TcpListener::from_std(socket.try_clone()?)?
            };
            worker.spawn(accept(
                PingoraListener::from(tcp),
                local,
                current.clone(),
                stats.clone(),
                stop_rx.clone(),
                self.connections.clone(),
            ));
        }
        Ok(Running {
            config: config.clone(),
            local,
            current,
            stop_accept,
        })
    }

    /// Drains every listener (SIGTERM): stop accepting, close connections as they finish.
    pub fn drain_all(&mut self) {
        for (_, r) in self.running.drain() {
            r.stop_accept.send_replace(true);
            let g = r.current.load();
            g.drain(self.drain_time, g.apps(), &self.prev);
        }
    }
}
