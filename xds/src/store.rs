//! The resource store: validates xDS updates, tracks warming, publishes snapshots.
//!
//! One task owns the store (the xDS client's actor), so it needs no locks. Each update is
//! validated resource by resource: the valid ones are applied, the invalid ones keep their
//! last good version, and the update as a whole is NACKed with every rejected resource named
//! (as Envoy does). Listeners wait for their routes and EDS clusters for their endpoints
//! before they replace what is serving (warming), bounded by `initial_fetch_timeout`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prost::Message;
use sentinel_proto::pb::envoy::config::{
    cluster::v3 as cds, endpoint::v3 as eds, listener::v3 as lds, route::v3 as rds,
};
use sentinel_proto::pb::google::protobuf::Any;

use crate::config::fields;
use crate::config::listener::ConfigSourceRef;
use crate::config::{Cluster, ClusterLoadAssignment, ConfigError, Listener, RouteConfig};
use crate::snapshot::{DumpEntry, DumpState, Snapshot, SnapshotHandle, TypeDump, UpdateFailure};
use crate::types;

/// One resource of an update: delta responses carry the name and a per-resource version.
pub struct Incoming {
    pub name: Option<String>,
    pub version: Option<String>,
    pub resource: Any,
}

/// An update for one type, from a SotW or delta response or a file.
pub struct Update {
    pub type_url: String,
    pub version_info: String,
    pub resources: Vec<Incoming>,
    pub removed: Vec<String>,
    /// SotW LDS/CDS: resources absent from the update are removed.
    pub full_state: bool,
}

impl Update {
    /// A state-of-the-world update (or a file): LDS/CDS are the full set, RDS/EDS partial.
    pub fn sotw(type_url: &str, version_info: String, resources: Vec<Any>) -> Self {
        Self {
            type_url: type_url.to_string(),
            version_info,
            resources: resources
                .into_iter()
                .map(|resource| Incoming {
                    name: None,
                    version: None,
                    resource,
                })
                .collect(),
            removed: vec![],
            full_state: types::is_wildcard(type_url),
        }
    }
}

struct Entry<T> {
    config: Arc<T>,
    /// The resource as received, encoded (its type is the map's): what an update is compared
    /// with, and what the config dump shows, sharing it instead of copying it per publish.
    raw: Arc<[u8]>,
    /// Shared by all the resources of one update.
    version: Arc<str>,
    updated: SystemTime,
    is_static: bool,
}

impl<T> Entry<T> {
    fn dump(&self, name: &Arc<str>, warming: bool) -> DumpEntry {
        DumpEntry {
            name: name.clone(),
            version_info: self.version.clone(),
            last_updated: self.updated,
            resource: self.raw.clone(),
            is_static: self.is_static,
            warming,
        }
    }
}

/// Binds listener sockets while a listener is validated, as Envoy binds them while it
/// processes LDS, so a port that cannot be bound NACKs the listener instead of failing later.
pub trait ListenerBinder: Send + Sync {
    /// Binds (and keeps) the socket for listener `name`; the error says why it cannot.
    fn bind(&self, name: &str, addr: std::net::SocketAddr) -> Result<(), String>;
    /// The listener went away before it served: drop its socket.
    fn release(&self, name: &str);
}

/// A resource that waits for its dependencies before it serves.
struct Warming {
    deadline: Option<Instant>,
}

/// Which parts of the published snapshot changed since the last publish: only those are
/// rebuilt, so an update costs in proportion to the type it changes, not to everything held.
#[derive(Clone, Copy)]
struct Dirty {
    listeners: bool,
    routes: bool,
    clusters: bool,
    endpoints: bool,
}

impl Default for Dirty {
    fn default() -> Self {
        Self::all()
    }
}

impl Dirty {
    fn all() -> Self {
        Self {
            listeners: true,
            routes: true,
            clusters: true,
            endpoints: true,
        }
    }

    fn none() -> Self {
        Self {
            listeners: false,
            routes: false,
            clusters: false,
            endpoints: false,
        }
    }

    fn mark(&mut self, type_url: &str) {
        match type_url {
            types::LISTENER => self.listeners = true,
            types::ROUTE => self.routes = true,
            types::CLUSTER => self.clusters = true,
            _ => self.endpoints = true,
        }
    }
}

/// The parts of the last published snapshot, reused while their type is unchanged.
#[derive(Default)]
struct Published {
    listeners: Arc<HashMap<String, Arc<Listener>>>,
    routes: Arc<HashMap<String, Arc<RouteConfig>>>,
    clusters: Arc<HashMap<String, Arc<Cluster>>>,
    endpoints: Arc<HashMap<String, Arc<ClusterLoadAssignment>>>,
    dump: DumpState,
}

/// Route configurations and EDS services referenced, cached until listeners or clusters
/// change (the xDS client asks after every event).
#[derive(Default)]
struct Interest {
    rds: Option<Arc<BTreeMap<String, ConfigSourceRef>>>,
    eds: Option<Arc<BTreeMap<String, ConfigSourceRef>>>,
}

#[derive(Default)]
pub struct Store {
    // Keyed by shared names: the config dump of each publish holds them too.
    listeners: BTreeMap<Arc<str>, Entry<Listener>>,
    active_listeners: HashMap<String, Arc<Listener>>,
    warming_listeners: HashMap<String, Warming>,
    routes: BTreeMap<Arc<str>, Entry<RouteConfig>>,
    clusters: BTreeMap<Arc<str>, Entry<Cluster>>,
    active_clusters: HashMap<String, Arc<Cluster>>,
    warming_clusters: HashMap<String, Warming>,
    /// Warming EDS clusters by the service name whose assignment they wait for.
    waiting_eds: HashMap<String, HashSet<String>>,
    endpoints: BTreeMap<Arc<str>, Entry<ClusterLoadAssignment>>,
    versions: HashMap<&'static str, String>,
    failures: HashMap<&'static str, UpdateFailure>,
    /// Types whose first response is still awaited, with the deadline of that wait.
    initial_pending: HashMap<&'static str, Option<Instant>>,
    initialized: bool,
    version: u64,
    handle: SnapshotHandle,
    binder: Option<Arc<dyn ListenerBinder>>,
    dirty: Dirty,
    published: Published,
    interest: Interest,
}

fn canonical(type_url: &str) -> Option<&'static str> {
    types::ORDER.into_iter().find(|t| *t == type_url)
}

/// Field 1 of every xDS resource type: `name` (Listener, RouteConfiguration, Cluster) or
/// `cluster_name` (ClusterLoadAssignment). Decoding only it skips the rest of the message,
/// so naming an unchanged 100 kB route configuration costs nothing.
#[derive(Clone, PartialEq, prost::Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

fn resource_name(type_url: &str, any: &Any) -> Result<String, String> {
    if canonical(type_url).is_none() {
        return Err(format!("unsupported type {type_url}"));
    }
    NameOnly::decode(any.value.as_slice())
        .map(|r| r.name)
        .map_err(|e| format!("cannot decode: {e}"))
}

impl Store {
    pub fn new(handle: SnapshotHandle) -> Self {
        Self {
            handle,
            ..Default::default()
        }
    }

    /// Binds listener sockets through `binder` from now on (not in `--mode validate`).
    pub fn set_binder(&mut self, binder: Arc<dyn ListenerBinder>) {
        self.binder = Some(binder);
    }

    /// The handle the data plane reads.
    pub fn handle(&self) -> &SnapshotHandle {
        &self.handle
    }

    /// Adds a bootstrap static resource; static resources never warm and never go away.
    pub fn add_static(&mut self, resource: Any) -> Result<(), String> {
        let type_url = canonical(&resource.type_url)
            .ok_or_else(|| format!("unsupported static resource type {}", resource.type_url))?;
        let name = resource_name(type_url, &resource)?;
        self.validate_and_insert(type_url, &name, resource, &"".into(), true, Instant::now())
            .map_err(|e| format!("{name}: {e}"))
    }

    /// Says that the first response of a type is awaited (LDS/CDS from the bootstrap), so
    /// `/ready` waits for it, at most until `deadline`.
    pub fn expect_initial(&mut self, type_url: &str, deadline: Option<Instant>) {
        if let Some(t) = canonical(type_url) {
            self.initial_pending.insert(t, deadline);
        }
    }

    /// Applies an update. Valid resources are applied even when others are rejected; the
    /// error (for the NACK) names each rejected resource and why.
    pub fn apply(&mut self, update: Update, now: Instant) -> Result<(), String> {
        let Some(type_url) = canonical(&update.type_url) else {
            return Err(format!("unsupported resource type {}", update.type_url));
        };
        // Its version, failure or resources change: that type's part of the snapshot.
        self.dirty.mark(type_url);
        self.initial_pending.remove(type_url);
        let mut errors = Vec::new();
        let update_version: Arc<str> = update.version_info.as_str().into();
        let mut named = Vec::with_capacity(update.resources.len());
        let mut seen = HashSet::new();
        for inc in update.resources {
            if inc.resource.type_url != type_url {
                errors.push(format!(
                    "resource of type {} in a {} response",
                    inc.resource.type_url,
                    types::short(type_url)
                ));
                continue;
            }
            let name = match resource_name(type_url, &inc.resource) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if !seen.insert(name.clone()) {
                // Envoy refuses the whole update when a name repeats.
                let err = format!(
                    "duplicate {} resource '{name}' in one update",
                    types::short(type_url)
                );
                self.record_failure(type_url, &update.version_info, &err);
                return Err(err);
            }
            let version = inc
                .version
                .map_or_else(|| update_version.clone(), Arc::from);
            named.push((name, version, inc.resource));
        }
        if update.full_state {
            let stale: Vec<String> = self
                .names(type_url)
                .into_iter()
                .filter(|n| !seen.contains(n))
                .collect();
            for name in stale {
                self.remove(type_url, &name);
            }
        }
        for name in &update.removed {
            self.remove(type_url, name);
        }
        for (name, version, resource) in named {
            if let Err(e) =
                self.validate_and_insert(type_url, &name, resource, &version, false, now)
            {
                errors.push(format!("{name}: {e}"));
            }
        }
        self.gc_unreferenced();
        self.promote(now);
        if errors.is_empty() {
            self.versions.insert(type_url, update.version_info);
            self.publish();
            Ok(())
        } else {
            let detail = errors.join("; ");
            self.record_failure(type_url, &update.version_info, &detail);
            self.publish();
            Err(detail)
        }
    }

    fn record_failure(&mut self, type_url: &'static str, version: &str, details: &str) {
        self.dirty.mark(type_url);
        tracing::warn!(
            type_url = types::short(type_url),
            version,
            "rejected update: {details}"
        );
        self.failures.insert(
            type_url,
            UpdateFailure {
                details: details.to_string(),
                version_info: version.to_string(),
                when: SystemTime::now(),
            },
        );
    }

    fn names(&self, type_url: &str) -> Vec<String> {
        let dynamic = |is_static: bool| !is_static;
        match type_url {
            types::LISTENER => self
                .listeners
                .iter()
                .filter(|(_, e)| dynamic(e.is_static))
                .map(|(n, _)| n.to_string())
                .collect(),
            types::CLUSTER => self
                .clusters
                .iter()
                .filter(|(_, e)| dynamic(e.is_static))
                .map(|(n, _)| n.to_string())
                .collect(),
            types::ROUTE => self.routes.keys().map(|n| n.to_string()).collect(),
            types::ENDPOINT => self.endpoints.keys().map(|n| n.to_string()).collect(),
            _ => vec![],
        }
    }

    fn remove(&mut self, type_url: &str, name: &str) {
        self.touched(type_url);
        match type_url {
            types::LISTENER if self.listeners.get(name).is_some_and(|e| !e.is_static) => {
                self.listeners.remove(name);
                if let Some(b) = &self.binder {
                    b.release(name);
                }
                self.active_listeners.remove(name);
                self.warming_listeners.remove(name);
            }
            types::CLUSTER if self.clusters.get(name).is_some_and(|e| !e.is_static) => {
                if let Some(service) = self.clusters[name].config.eds_service_name() {
                    if let Some(waiting) = self.waiting_eds.get_mut(service) {
                        waiting.remove(name);
                    }
                }
                self.clusters.remove(name);
                self.active_clusters.remove(name);
                self.warming_clusters.remove(name);
            }
            types::ROUTE => {
                self.routes.remove(name);
            }
            types::ENDPOINT => {
                self.endpoints.remove(name);
            }
            _ => {}
        }
    }

    fn validate_and_insert(
        &mut self,
        type_url: &'static str,
        name: &str,
        raw: Any,
        version: &Arc<str>,
        is_static: bool,
        now: Instant,
    ) -> Result<(), ConfigError> {
        // An unchanged resource needs no work; an unchanged assignment still warms the
        // clusters waiting for one (a new CLA is what warms an updated cluster).
        let unchanged = match type_url {
            // `apply` and `add_static` checked the type already.
            types::LISTENER => self
                .listeners
                .get(name)
                .is_some_and(|e| *e.raw == *raw.value),
            types::ROUTE => self.routes.get(name).is_some_and(|e| *e.raw == *raw.value),
            types::CLUSTER => self
                .clusters
                .get(name)
                .is_some_and(|e| *e.raw == *raw.value),
            _ => self
                .endpoints
                .get(name)
                .is_some_and(|e| *e.raw == *raw.value),
        };
        if unchanged {
            if type_url == types::ENDPOINT {
                self.warm_clusters_waiting_for(name);
            }
            return Ok(());
        }
        let full_name = &type_url[sentinel_proto::TYPE_URL_PREFIX.len()..];
        fields::check(full_name, &raw.value)?;
        self.touched(type_url);
        let bad = |e: prost::DecodeError| ConfigError::new("", format!("cannot decode: {e}"));
        let updated = SystemTime::now();
        macro_rules! entry {
            ($config:expr) => {
                Entry {
                    config: Arc::new($config),
                    raw: Arc::from(raw.value),
                    version: version.clone(),
                    updated,
                    is_static,
                }
            };
        }
        match type_url {
            types::LISTENER => {
                let config = Listener::from_proto(
                    &lds::Listener::decode(raw.value.as_slice()).map_err(bad)?,
                )?;
                if let Some((other, _)) = self.listeners.iter().find(|(n, e)| {
                    &***n != name
                        && e.config.address == config.address
                        && config.address.port() != 0
                }) {
                    return Err(ConfigError::new(
                        "address",
                        format!("error adding listener '{}': listener '{other}' has duplicate address '{}' as existing listener", name, config.address),
                    ));
                }
                let rebind = self
                    .listeners
                    .get(name)
                    .is_none_or(|e| e.config.address != config.address);
                if let (true, Some(b)) = (rebind, &self.binder) {
                    b.bind(name, config.address).map_err(|e| {
                        ConfigError::new(
                            "address",
                            format!("cannot bind '{}': {e}", config.address),
                        )
                    })?;
                }
                let deadline = config
                    .rds_names()
                    .filter_map(|(_, src)| src.initial_fetch_timeout)
                    .min()
                    .map(|t| now + t);
                self.listeners.insert(name.into(), entry!(config));
                self.warming_listeners
                    .insert(name.to_string(), Warming { deadline });
            }
            types::ROUTE => {
                let config = RouteConfig::from_proto(
                    &rds::RouteConfiguration::decode(raw.value.as_slice()).map_err(bad)?,
                )?;
                self.routes.insert(name.into(), entry!(config));
            }
            types::CLUSTER => {
                let proto = cds::Cluster::decode(raw.value.as_slice()).map_err(bad)?;
                let config = Cluster::from_proto(&proto)?;
                let deadline = config
                    .eds_source
                    .as_ref()
                    .and_then(|s| s.initial_fetch_timeout)
                    .map(|t| now + t);
                let service = config.eds_service_name().map(str::to_string);
                self.clusters.insert(name.into(), entry!(config));
                if let Some(service) = service {
                    self.warming_clusters
                        .insert(name.to_string(), Warming { deadline });
                    self.waiting_eds
                        .entry(service)
                        .or_default()
                        .insert(name.to_string());
                } else {
                    self.warming_clusters.remove(name);
                    self.active_clusters
                        .insert(name.to_string(), self.clusters[name].config.clone());
                }
            }
            types::ENDPOINT => {
                let config = ClusterLoadAssignment::from_proto(
                    &eds::ClusterLoadAssignment::decode(raw.value.as_slice()).map_err(bad)?,
                    false,
                )?;
                self.endpoints.insert(name.into(), entry!(config));
                self.warm_clusters_waiting_for(name);
            }
            _ => unreachable!("canonical type"),
        }
        Ok(())
    }

    /// An assignment for `service` arrived: the clusters waiting for it serve now.
    fn warm_clusters_waiting_for(&mut self, service: &str) {
        for c in self.waiting_eds.remove(service).unwrap_or_default() {
            if self.warming_clusters.remove(&c).is_some() {
                if let Some(e) = self.clusters.get(c.as_str()) {
                    self.active_clusters.insert(c.clone(), e.config.clone());
                    self.touched(types::CLUSTER);
                }
            }
        }
    }

    /// A resource of this type was added, replaced or removed: its part of the snapshot is
    /// stale, and so is what its references are cached as.
    fn touched(&mut self, type_url: &str) {
        self.dirty.mark(type_url);
        match type_url {
            types::LISTENER => self.interest.rds = None,
            types::CLUSTER => {
                self.interest.eds = None;
                // Inline endpoints of serving clusters are published with the EDS ones.
                self.dirty.endpoints = true;
            }
            _ => {}
        }
    }

    /// Moves warm listeners (all routes present, or timed out) into service.
    fn promote(&mut self, now: Instant) {
        let routes = &self.routes;
        let ready: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(name, w)| {
                w.deadline.is_some_and(|d| d <= now)
                    || self.listeners[name.as_str()]
                        .config
                        .rds_names()
                        .all(|(r, _)| routes.contains_key(r))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !ready.is_empty() {
            // The serving versions change, and with them what is referenced.
            self.touched(types::LISTENER);
        }
        for name in ready {
            self.warming_listeners.remove(&name);
            self.active_listeners
                .insert(name.clone(), self.listeners[name.as_str()].config.clone());
        }
        let expired: Vec<String> = self
            .warming_clusters
            .iter()
            .filter(|(_, w)| w.deadline.is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        if !expired.is_empty() {
            self.touched(types::CLUSTER);
        }
        for name in expired {
            tracing::warn!(cluster = %name, "endpoints did not arrive in time; the cluster serves without them");
            self.warming_clusters.remove(&name);
            self.active_clusters
                .insert(name.clone(), self.clusters[name.as_str()].config.clone());
        }
        let timed_out: Vec<&'static str> = self
            .initial_pending
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d <= now))
            .map(|(t, _)| *t)
            .collect();
        for t in timed_out {
            tracing::warn!(type_url = types::short(t), "initial fetch timed out");
            self.initial_pending.remove(t);
        }
        if !self.initialized
            && self.initial_pending.is_empty()
            && self.warming_listeners.is_empty()
            && self.warming_clusters.is_empty()
        {
            self.initialized = true;
        }
    }

    /// Called when a deadline passes.
    pub fn tick(&mut self, now: Instant) {
        let before = (
            self.warming_listeners.len(),
            self.warming_clusters.len(),
            self.initial_pending.len(),
        );
        self.promote(now);
        let after = (
            self.warming_listeners.len(),
            self.warming_clusters.len(),
            self.initial_pending.len(),
        );
        if before != after {
            self.publish();
        }
    }

    /// The earliest warming or initial-fetch deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.warming_listeners
            .values()
            .chain(self.warming_clusters.values())
            .filter_map(|w| w.deadline)
            .chain(self.initial_pending.values().flatten().copied())
            .min()
    }

    /// Route configurations that listeners (warm or warming) point at, with their sources.
    /// Cached until a listener changes; the same `Arc` means nothing changed.
    pub fn rds_interest(&mut self) -> Arc<BTreeMap<String, ConfigSourceRef>> {
        if let Some(cached) = &self.interest.rds {
            return cached.clone();
        }
        // Serving versions count too: a listener's old version keeps its routes while the
        // new one warms.
        let mut out = BTreeMap::new();
        let latest = self.listeners.values().map(|e| &e.config);
        for l in latest.chain(self.active_listeners.values()) {
            for (name, src) in l.rds_names() {
                out.entry(name.to_string()).or_insert_with(|| src.clone());
            }
        }
        self.interest.rds.insert(Arc::new(out)).clone()
    }

    /// EDS service names that clusters point at, with their sources. Cached until a cluster
    /// changes; the same `Arc` means nothing changed.
    pub fn eds_interest(&mut self) -> Arc<BTreeMap<String, ConfigSourceRef>> {
        if let Some(cached) = &self.interest.eds {
            return cached.clone();
        }
        // Serving versions count too, as for routes.
        let serving = self.active_clusters.iter().filter_map(|(n, c)| {
            let latest = self.clusters.get(n.as_str())?;
            (!Arc::ptr_eq(&latest.config, c)).then_some(c)
        });
        let mut out = BTreeMap::new();
        for c in self.clusters.values().map(|e| &e.config).chain(serving) {
            if let (Some(service), Some(src)) = (c.eds_service_name(), &c.eds_source) {
                out.entry(service.to_string())
                    .or_insert_with(|| src.clone());
            }
        }
        self.interest.eds.insert(Arc::new(out)).clone()
    }

    /// Routes and endpoints that nothing references any more are dropped (SotW semantics).
    /// Only where something changed: routes after listener or route updates, endpoints after
    /// cluster or endpoint updates.
    fn gc_unreferenced(&mut self) {
        if self.dirty.listeners || self.dirty.routes {
            let rds = self.rds_interest();
            let before = self.routes.len();
            self.routes.retain(|n, _| rds.contains_key(&**n));
            self.dirty.routes |= self.routes.len() != before;
        }
        if self.dirty.clusters || self.dirty.endpoints {
            let eds = self.eds_interest();
            let before = self.endpoints.len();
            self.endpoints.retain(|n, _| eds.contains_key(&**n));
            self.dirty.endpoints |= self.endpoints.len() != before;
        }
    }

    /// Per-resource versions of a type, for a delta stream's `initial_resource_versions`.
    pub fn resource_versions(&self, type_url: &str) -> HashMap<String, String> {
        fn collect<T>(m: &BTreeMap<Arc<str>, Entry<T>>) -> HashMap<String, String> {
            m.iter()
                .filter(|(_, e)| !e.is_static)
                .map(|(n, e)| (n.to_string(), e.version.to_string()))
                .collect()
        }
        match type_url {
            types::LISTENER => collect(&self.listeners),
            types::ROUTE => collect(&self.routes),
            types::CLUSTER => collect(&self.clusters),
            types::ENDPOINT => collect(&self.endpoints),
            _ => HashMap::new(),
        }
    }

    /// The last accepted version of a type (SotW `version_info`).
    pub fn version_info(&self, type_url: &str) -> String {
        canonical(type_url)
            .and_then(|t| self.versions.get(t))
            .cloned()
            .unwrap_or_default()
    }

    fn publish(&mut self) {
        self.version += 1;
        fn dump<T>(
            type_url: &'static str,
            m: &BTreeMap<Arc<str>, Entry<T>>,
            warming: &dyn Fn(&str) -> bool,
            version: Option<&String>,
            failure: Option<&UpdateFailure>,
        ) -> Arc<TypeDump> {
            Arc::new(TypeDump {
                type_url,
                version_info: version.cloned().unwrap_or_default(),
                entries: m.iter().map(|(n, e)| e.dump(n, warming(n))).collect(),
                last_failure: failure.cloned(),
            })
        }
        let dirty = std::mem::replace(&mut self.dirty, Dirty::none());
        let p = &mut self.published;
        if dirty.listeners {
            p.listeners = Arc::new(self.active_listeners.clone());
            p.dump.listeners = dump(
                types::LISTENER,
                &self.listeners,
                &|n| self.warming_listeners.contains_key(n),
                self.versions.get(types::LISTENER),
                self.failures.get(types::LISTENER),
            );
        }
        if dirty.routes {
            p.routes = Arc::new(
                self.routes
                    .iter()
                    .map(|(n, e)| (n.to_string(), e.config.clone()))
                    .collect(),
            );
            p.dump.routes = dump(
                types::ROUTE,
                &self.routes,
                &|_| false,
                self.versions.get(types::ROUTE),
                self.failures.get(types::ROUTE),
            );
        }
        if dirty.clusters {
            p.clusters = Arc::new(self.active_clusters.clone());
            p.dump.clusters = dump(
                types::CLUSTER,
                &self.clusters,
                &|n| self.warming_clusters.contains_key(n),
                self.versions.get(types::CLUSTER),
                self.failures.get(types::CLUSTER),
            );
        }
        if dirty.endpoints {
            let mut endpoints: HashMap<String, Arc<ClusterLoadAssignment>> = self
                .endpoints
                .iter()
                .map(|(n, e)| (n.to_string(), e.config.clone()))
                .collect();
            for (name, c) in &self.active_clusters {
                if let Some(la) = &c.load_assignment {
                    endpoints.insert(name.clone(), Arc::new(la.clone()));
                }
            }
            p.endpoints = Arc::new(endpoints);
            p.dump.endpoints = dump(
                types::ENDPOINT,
                &self.endpoints,
                &|_| false,
                self.versions.get(types::ENDPOINT),
                self.failures.get(types::ENDPOINT),
            );
        }
        self.handle.publish(Snapshot {
            version: self.version,
            listeners: p.listeners.clone(),
            routes: p.routes.clone(),
            clusters: p.clusters.clone(),
            endpoints: p.endpoints.clone(),
            initialized: self.initialized,
            dump: Arc::new(p.dump.clone()),
        });
    }

    /// Publishes the static resources before any xDS arrives.
    pub fn publish_initial(&mut self, now: Instant) {
        self.promote(now);
        self.publish();
    }
}
