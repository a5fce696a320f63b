//! The cluster manager: per-cluster runtime state (hosts and load-balancer counters).
//!
//! Rebuilt from each snapshot, reusing a cluster's state when neither its config nor its
//! endpoints changed, so round-robin position and in-flight counts survive unrelated
//! updates. Pingora pools upstream connections by peer, so pools survive endpoint updates.
//! Reading it on the request path is one `ArcSwap` load.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sentinel_xds::config::cluster::{Discovery, LbPolicy};
use sentinel_xds::config::endpoint::{ClusterLoadAssignment, EndpointAddress, Health};
use sentinel_xds::config::Cluster;
use sentinel_xds::Snapshot;

pub struct Host {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Requests in flight, for LEAST_REQUEST.
    pub active: AtomicUsize,
}

pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    endpoints: Option<Arc<ClusterLoadAssignment>>,
    /// Healthy hosts of the highest-priority level that has any.
    hosts: Vec<Arc<Host>>,
    next: AtomicUsize,
}

impl ClusterRuntime {
    fn build(config: Arc<Cluster>, endpoints: Option<Arc<ClusterLoadAssignment>>) -> Self {
        let mut hosts: Vec<(u32, Arc<Host>)> = Vec::new();
        if let Some(la) = &endpoints {
            for e in la
                .endpoints
                .iter()
                .filter(|e| e.health != Health::Unhealthy)
            {
                let addrs: Vec<SocketAddr> = match &e.address {
                    EndpointAddress::Ip(a) => vec![*a],
                    EndpointAddress::Dns { host, port } => {
                        let resolved = (host.as_str(), *port)
                            .to_socket_addrs()
                            .map(|a| a.collect::<Vec<_>>());
                        match resolved.map(|v| config.dns_family.select(v)) {
                            Ok(v) if config.discovery == Discovery::LogicalDns => {
                                v.into_iter().take(1).collect()
                            }
                            Ok(v) => v,
                            Err(err) => {
                                tracing::warn!(cluster = %config.name, %host, "DNS resolution failed: {err}");
                                vec![]
                            }
                        }
                    }
                };
                for addr in addrs {
                    hosts.push((
                        e.priority,
                        Arc::new(Host {
                            addr,
                            weight: e.weight,
                            active: AtomicUsize::new(0),
                        }),
                    ));
                }
            }
        }
        let top = hosts.iter().map(|(p, _)| *p).min();
        let hosts = hosts
            .into_iter()
            .filter(|(p, _)| Some(*p) == top)
            .map(|(_, h)| h)
            .collect();
        Self {
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
}

#[derive(Default)]
pub struct ClusterManager {
    clusters: ArcSwap<HashMap<String, Arc<ClusterRuntime>>>,
}

impl ClusterManager {
    pub fn get(&self, name: &str) -> Option<Arc<ClusterRuntime>> {
        self.clusters.load().get(name).cloned()
    }

    pub fn all(&self) -> Arc<HashMap<String, Arc<ClusterRuntime>>> {
        self.clusters.load_full()
    }

    /// Brings the runtime state in line with a snapshot.
    pub fn update(&self, snap: &Snapshot) {
        let old = self.clusters.load();
        let mut next = HashMap::with_capacity(snap.clusters.len());
        for (name, config) in &snap.clusters {
            let endpoints = snap.endpoints_of(config).cloned();
            let reuse = old.get(name).filter(|rt| {
                Arc::ptr_eq(&rt.config, config)
                    && match (&rt.endpoints, &endpoints) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                        (None, None) => true,
                        _ => false,
                    }
            });
            let rt = match reuse {
                Some(rt) => rt.clone(),
                None => Arc::new(ClusterRuntime::build(config.clone(), endpoints)),
            };
            next.insert(name.clone(), rt);
        }
        self.clusters.store(Arc::new(next));
    }
}
