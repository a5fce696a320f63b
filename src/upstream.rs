//! The cluster manager: per-cluster runtime state (hosts and load-balancer counters).
//!
//! Rebuilt from each snapshot, reusing a cluster's state when neither its config nor its
//! hosts changed, so round-robin position and in-flight counts survive unrelated updates.
//! Pingora pools upstream connections by peer address, so pools survive endpoint updates.
//! DNS clusters resolve asynchronously (never on a worker's hot path) and are re-resolved
//! every `dns_refresh_rate`. Reading it on the request path is one `ArcSwap` load.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sentinel_xds::config::cluster::{Discovery, LbPolicy};
use sentinel_xds::config::endpoint::{ClusterLoadAssignment, EndpointAddress, Health};
use sentinel_xds::config::Cluster;
use sentinel_xds::Snapshot;

use crate::stats::{ClusterStats, Registry};

pub struct Host {
    pub addr: SocketAddr,
    /// The endpoint's `hostname`, for `auto_host_rewrite`.
    pub hostname: Option<String>,
    pub weight: u32,
    /// Requests in flight, for LEAST_REQUEST.
    pub active: AtomicUsize,
    /// A gRPC channel to this host, made on first use (for filters that call a service).
    grpc: std::sync::OnceLock<tonic::transport::Channel>,
}

impl Host {
    /// The host's gRPC channel (HTTP/2, reconnecting by itself).
    pub fn grpc_channel(&self) -> tonic::transport::Channel {
        self.grpc
            .get_or_init(|| {
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                    .expect("a socket address is a valid URI")
                    .connect_lazy()
            })
            .clone()
    }
}

pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    pub stats: Arc<ClusterStats>,
    endpoints: Option<Arc<ClusterLoadAssignment>>,
    /// Healthy hosts of the highest-priority level that has any.
    hosts: Vec<Arc<Host>>,
    next: AtomicUsize,
}

/// A DNS name with its port, as endpoints carry them.
type Name = (String, u16);

/// Resolved names, and when each was last resolved.
#[derive(Default)]
struct DnsCache {
    entries: HashMap<Name, (Vec<SocketAddr>, Instant)>,
    /// The DNS names of the last snapshot's clusters, with their refresh rates, so the
    /// periodic refresh does not walk every cluster.
    names: Vec<(Name, Duration)>,
    /// The cluster and endpoint maps the runtime state was last built from: a snapshot that
    /// shares both (only listeners or routes changed) needs no rebuild.
    built_from: Option<BuiltFrom>,
}

type BuiltFrom = (
    Arc<HashMap<String, Arc<Cluster>>>,
    Arc<HashMap<String, Arc<ClusterLoadAssignment>>>,
);

impl ClusterRuntime {
    fn build(
        config: Arc<Cluster>,
        endpoints: Option<Arc<ClusterLoadAssignment>>,
        dns: &DnsCache,
        stats: &Registry,
    ) -> Self {
        let mut hosts: Vec<(u32, Arc<Host>)> = Vec::new();
        if let Some(la) = &endpoints {
            for e in la
                .endpoints
                .iter()
                .filter(|e| e.health != Health::Unhealthy)
            {
                let addrs = match &e.address {
                    EndpointAddress::Ip(a) => vec![*a],
                    EndpointAddress::Dns { host, port } => {
                        let resolved = dns
                            .entries
                            .get(&(host.clone(), *port))
                            .map(|(a, _)| a.clone())
                            .unwrap_or_default();
                        let resolved = config.dns_family.select(resolved);
                        if config.discovery == Discovery::LogicalDns {
                            resolved.into_iter().take(1).collect()
                        } else {
                            resolved
                        }
                    }
                };
                for addr in addrs {
                    let host = Host {
                        addr,
                        hostname: e.hostname.clone(),
                        grpc: std::sync::OnceLock::new(),
                        weight: e.weight,
                        active: AtomicUsize::new(0),
                    };
                    hosts.push((e.priority, Arc::new(host)));
                }
            }
        }
        let top = hosts.iter().map(|(p, _)| *p).min();
        let hosts: Vec<Arc<Host>> = hosts
            .into_iter()
            .filter(|(p, _)| Some(*p) == top)
            .map(|(_, h)| h)
            .collect();
        let stats = stats.cluster(&config.name);
        stats.membership_total.set(hosts.len() as i64);
        Self {
            stats,
            config,
            endpoints,
            hosts,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks a host, or None when the cluster has no healthy host.
    pub fn pick(&self) -> Option<Arc<Host>> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.config.lb_policy {
            LbPolicy::RoundRobin => Some(self.hosts[i % n].clone()),
            LbPolicy::LeastRequest { choice_count } => {
                // Power of N choices over in-flight requests.
                let mut best = &self.hosts[i % n];
                for k in 1..choice_count as usize {
                    let c = &self.hosts[(i.wrapping_mul(7919).wrapping_add(k * 104_729)) % n];
                    if c.active.load(Ordering::Relaxed) < best.active.load(Ordering::Relaxed) {
                        best = c;
                    }
                }
                Some(best.clone())
            }
        }
    }

    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    fn same_hosts(&self, other: &ClusterRuntime) -> bool {
        self.hosts.len() == other.hosts.len()
            && self
                .hosts
                .iter()
                .zip(&other.hosts)
                .all(|(a, b)| a.addr == b.addr && a.weight == b.weight)
    }
}

/// The DNS names a cluster's endpoints carry, with its refresh rate.
fn dns_names(c: &Cluster, la: Option<&ClusterLoadAssignment>) -> Vec<(Name, Duration)> {
    la.into_iter()
        .flat_map(|la| &la.endpoints)
        .filter_map(|e| match &e.address {
            EndpointAddress::Dns { host, port } => {
                Some(((host.clone(), *port), c.dns_refresh_rate))
            }
            EndpointAddress::Ip(_) => None,
        })
        .collect()
}

async fn resolve(name: &Name) -> Vec<SocketAddr> {
    let lookup = tokio::net::lookup_host((name.0.as_str(), name.1));
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            tracing::warn!(host = %name.0, "DNS resolution failed: {e}");
            vec![]
        }
        Err(_) => {
            tracing::warn!(host = %name.0, "DNS resolution timed out");
            vec![]
        }
    }
}

pub struct ClusterManager {
    clusters: ArcSwap<HashMap<String, Arc<ClusterRuntime>>>,
    /// Only the config task touches it (never the request path).
    dns: Mutex<DnsCache>,
    stats: Arc<Registry>,
}

impl ClusterManager {
    pub fn new(stats: Arc<Registry>) -> Self {
        Self {
            clusters: ArcSwap::default(),
            dns: Mutex::default(),
            stats,
        }
    }
    pub fn get(&self, name: &str) -> Option<Arc<ClusterRuntime>> {
        self.clusters.load().get(name).cloned()
    }

    pub fn all(&self) -> Arc<HashMap<String, Arc<ClusterRuntime>>> {
        self.clusters.load_full()
    }

    /// Brings the runtime state in line with a snapshot, resolving DNS names not seen yet.
    pub async fn update(&self, snap: &Snapshot) {
        let unknown: Vec<Name> = {
            let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((clusters, endpoints)) = &dns.built_from {
                if Arc::ptr_eq(clusters, &snap.clusters) && Arc::ptr_eq(endpoints, &snap.endpoints)
                {
                    return;
                }
            }
            dns.names = snap
                .clusters
                .values()
                .flat_map(|c| dns_names(c, snap.endpoints_of(c).map(|a| a.as_ref())))
                .collect();
            dns.names
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !dns.entries.contains_key(n))
                .collect()
        };
        self.resolve_into_cache(unknown).await;
        self.rebuild(snap);
    }

    /// Re-resolves DNS names whose refresh time has come; rebuilds clusters whose hosts moved.
    pub async fn refresh_dns(&self, snap: &Snapshot) {
        let now = Instant::now();
        let due: Vec<Name> = {
            let dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            dns.names
                .iter()
                .filter(|(n, rate)| {
                    dns.entries
                        .get(n)
                        .is_none_or(|(_, at)| now.duration_since(*at) >= *rate)
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
        if !due.is_empty() {
            self.resolve_into_cache(due).await;
            self.rebuild(snap);
        }
    }

    async fn resolve_into_cache(&self, names: Vec<Name>) {
        for name in names {
            let addrs = resolve(&name).await;
            let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            dns.entries.insert(name, (addrs, Instant::now()));
        }
    }

    fn rebuild(&self, snap: &Snapshot) {
        let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        dns.built_from = Some((snap.clusters.clone(), snap.endpoints.clone()));
        let old = self.clusters.load();
        let mut next = HashMap::with_capacity(snap.clusters.len());
        for (name, config) in snap.clusters.iter() {
            let endpoints = snap.endpoints_of(config).cloned();
            let same_config = |rt: &ClusterRuntime| {
                Arc::ptr_eq(&rt.config, config)
                    && match (&rt.endpoints, &endpoints) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                        (None, None) => true,
                        _ => false,
                    }
            };
            let is_dns = matches!(
                config.discovery,
                Discovery::StrictDns | Discovery::LogicalDns
            );
            let rt = match old.get(name).filter(|rt| same_config(rt)) {
                Some(rt) if !is_dns => rt.clone(),
                Some(rt) => {
                    let fresh = ClusterRuntime::build(config.clone(), endpoints, &dns, &self.stats);
                    if rt.same_hosts(&fresh) {
                        rt.clone()
                    } else {
                        Arc::new(fresh)
                    }
                }
                None => Arc::new(ClusterRuntime::build(
                    config.clone(),
                    endpoints,
                    &dns,
                    &self.stats,
                )),
            };
            next.insert(name.clone(), rt);
        }
        self.clusters.store(Arc::new(next));
    }
}
