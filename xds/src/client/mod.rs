//! The xDS client: one actor that owns the [`Store`] and every subscription.
//!
//! Streams (ADS or per-type, SotW or delta) and file watchers run as their own tasks and talk
//! to the actor through a channel, so ACK/NACK bookkeeping, subscriptions and the store are
//! touched by one task only. After every update the actor recomputes which routes and
//! endpoints are referenced and (un)subscribes accordingly.

mod file;
mod stream;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_proto::pb::envoy::config::core::v3::Node;
use sentinel_proto::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sentinel_proto::pb::google::rpc::Status;
use tokio::sync::mpsc;

use crate::bootstrap::Bootstrap;
use crate::config::endpoint::EndpointAddress;
use crate::config::listener::{ConfigSourceRef, SourceKind};
use crate::snapshot::SnapshotHandle;
use crate::store::{Incoming, Store, Update};
use crate::types;
pub use stream::StreamKey;
use stream::{Inbound, Outbound, StreamEvent};

/// What a stream carries for one type.
#[derive(Default)]
struct TypeSub {
    /// Subscribed names; empty with `wildcard` for LDS/CDS.
    names: BTreeSet<String>,
    wildcard: bool,
    /// Nonce of the last response (SotW requests echo it).
    nonce: String,
}

struct StreamState {
    sender: Option<mpsc::UnboundedSender<Outbound>>,
    /// Only the first request of a stream must carry the node.
    node_sent: bool,
    types: BTreeMap<&'static str, TypeSub>,
}

enum Event {
    Stream(StreamEvent),
    File(file::FileUpdate),
}

pub struct XdsClient {
    store: Store,
    node: Node,
    ads: Option<crate::bootstrap::AdsConfig>,
    streams: HashMap<StreamKey, StreamState>,
    files: BTreeSet<(std::path::PathBuf, &'static str)>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// The EDS and RDS interest the subscriptions were last brought in line with.
    synced_interest: Option<Interest>,
}

type Interest = (
    Arc<BTreeMap<String, ConfigSourceRef>>,
    Arc<BTreeMap<String, ConfigSourceRef>>,
);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("static resource rejected: {0}")]
    Static(String),
}

impl XdsClient {
    /// Validates the bootstrap's static resources (`--mode validate`), opening nothing.
    pub fn validate(bootstrap: &Bootstrap) -> Result<(), ClientError> {
        Self::static_store(bootstrap, SnapshotHandle::new(), None).map(|_| ())
    }

    fn static_store(
        bootstrap: &Bootstrap,
        handle: SnapshotHandle,
        binder: Option<std::sync::Arc<dyn crate::store::ListenerBinder>>,
    ) -> Result<Store, ClientError> {
        let mut store = Store::new(handle);
        if let Some(b) = binder {
            store.set_binder(b);
        }
        for r in &bootstrap.static_resources {
            store.add_static(r.clone()).map_err(ClientError::Static)?;
        }
        Ok(store)
    }

    /// Builds the client and validates the bootstrap's static resources into the store;
    /// `binder` binds listener sockets as listeners are accepted. Must run inside a tokio
    /// runtime: it starts the bootstrap's subscriptions.
    pub fn new(
        bootstrap: &Bootstrap,
        handle: SnapshotHandle,
        binder: Option<std::sync::Arc<dyn crate::store::ListenerBinder>>,
    ) -> Result<Self, ClientError> {
        let mut store = Self::static_store(bootstrap, handle, binder)?;
        let now = Instant::now();
        for (type_url, src) in [
            (types::CLUSTER, &bootstrap.cds),
            (types::LISTENER, &bootstrap.lds),
        ] {
            if let Some(src) = src {
                store.expect_initial(type_url, src.initial_fetch_timeout.map(|t| now + t));
            }
        }
        store.publish_initial(now);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut client = Self {
            store,
            node: bootstrap.node_proto.clone(),
            ads: bootstrap.ads.clone(),
            streams: HashMap::new(),
            files: BTreeSet::new(),
            events_tx,
            events_rx,
            synced_interest: None,
        };
        for (type_url, src) in [
            (types::CLUSTER, &bootstrap.cds),
            (types::LISTENER, &bootstrap.lds),
        ] {
            if let Some(src) = src {
                client.subscribe(type_url, src, None);
            }
        }
        client.sync_subscriptions();
        Ok(client)
    }

    /// How long without updates before the descriptor pools are freed.
    const POOLS_LINGER: Duration = Duration::from_millis(200);

    /// Runs until the process ends. A dead control plane only means retries: the last good
    /// snapshot keeps serving.
    pub async fn run(mut self) {
        // Validation decodes the Envoy descriptor pools; they are freed once updates stop
        // coming (a push arrives as several responses in a row, which share one decode).
        let mut pools_in_use = true;
        loop {
            let deadline = self.store.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let quiet = async {
                match pools_in_use {
                    true => tokio::time::sleep(Self::POOLS_LINGER).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.events_rx.recv() => {
                    pools_in_use = true;
                    match ev {
                        Some(Event::Stream(e)) => self.on_stream_event(e),
                        Some(Event::File(f)) => self.on_file(f),
                        None => return,
                    }
                }
                _ = sleep => self.store.tick(Instant::now()),
                _ = quiet => {
                    sentinel_proto::release_pools();
                    pools_in_use = false;
                }
            }
            self.sync_subscriptions();
        }
    }

    fn stream_key(&self, type_url: &'static str, src: &ConfigSourceRef) -> Option<StreamKey> {
        match &src.kind {
            SourceKind::Ads => self.ads.as_ref().map(|a| StreamKey {
                cluster: a.cluster.clone(),
                type_url: None,
                delta: a.delta,
            }),
            SourceKind::Grpc { cluster, delta } => Some(StreamKey {
                cluster: cluster.clone(),
                type_url: Some(type_url),
                delta: *delta,
            }),
            SourceKind::Path(_) => None,
        }
    }

    /// Adds a subscription: wildcard when `name` is None.
    fn subscribe(&mut self, type_url: &'static str, src: &ConfigSourceRef, name: Option<&str>) {
        if let SourceKind::Path(p) = &src.kind {
            if self.files.insert((p.clone(), type_url)) {
                let tx = self.events_tx.clone();
                tokio::spawn(file::watch(p.clone(), type_url, move |u| {
                    tx.send(Event::File(u)).is_ok()
                }));
            }
            return;
        }
        let Some(key) = self.stream_key(type_url, src) else {
            tracing::error!(
                "{} uses ADS but the bootstrap has no ads_config",
                types::short(type_url)
            );
            return;
        };
        let state = self.streams.entry(key.clone()).or_insert_with(|| {
            let tx = self.events_tx.clone();
            let target = target_of(self.store.handle().clone(), key.cluster.clone());
            tokio::spawn(stream::run(key.clone(), target, EventSink(tx)));
            StreamState {
                sender: None,
                node_sent: false,
                types: BTreeMap::new(),
            }
        });
        let sub = state.types.entry(type_url).or_default();
        match name {
            None => sub.wildcard = true,
            Some(n) => {
                sub.names.insert(n.to_string());
            }
        }
    }

    /// Makes the RDS and EDS subscriptions follow what listeners and clusters reference.
    fn sync_subscriptions(&mut self) {
        let wanted: [(&'static str, Arc<BTreeMap<String, ConfigSourceRef>>); 2] = [
            (types::ENDPOINT, self.store.eds_interest()),
            (types::ROUTE, self.store.rds_interest()),
        ];
        // The store hands out the same maps while nothing they depend on changed: then the
        // subscriptions are as they were (this runs after every event).
        let same = |a: &Arc<_>, b: &Arc<_>| Arc::ptr_eq(a, b);
        if let Some((eds, rds)) = &self.synced_interest {
            if same(eds, &wanted[0].1) && same(rds, &wanted[1].1) {
                return;
            }
        }
        self.synced_interest = Some((wanted[0].1.clone(), wanted[1].1.clone()));
        for (type_url, interest) in wanted {
            let mut by_stream: BTreeMap<StreamKey, BTreeSet<String>> = BTreeMap::new();
            for (name, src) in interest.iter() {
                if let SourceKind::Path(_) = src.kind {
                    self.subscribe(type_url, src, Some(name));
                } else if let Some(key) = self.stream_key(type_url, src) {
                    by_stream.entry(key).or_default().insert(name.clone());
                }
            }
            // Streams that carry this type but are no longer wanted get an empty set.
            let keys: BTreeSet<StreamKey> = self
                .streams
                .iter()
                .filter(|(_, s)| s.types.contains_key(type_url))
                .map(|(k, _)| k.clone())
                .chain(by_stream.keys().cloned())
                .collect();
            for key in keys {
                let names = by_stream.remove(&key).unwrap_or_default();
                if !self.streams.contains_key(&key) {
                    if let Some(first) = names.iter().next() {
                        let src = interest[first].clone();
                        self.subscribe(type_url, &src, Some(first));
                    }
                }
                let state = self.streams.get_mut(&key).expect("stream created above");
                let sub = state.types.entry(type_url).or_default();
                if sub.names == names {
                    continue;
                }
                let old = std::mem::replace(&mut sub.names, names.clone());
                tracing::debug!(
                    type_url = types::short(type_url),
                    ?names,
                    "subscription changed"
                );
                self.send_subscription(&key, type_url, Some((old, names)));
            }
        }
    }

    /// Sends the request that states a type's subscription: the full list for SotW, the
    /// difference (or initial state) for delta.
    fn send_subscription(
        &mut self,
        key: &StreamKey,
        type_url: &'static str,
        diff: Option<(BTreeSet<String>, BTreeSet<String>)>,
    ) {
        let version = self.store.version_info(type_url);
        let versions = self.store.resource_versions(type_url);
        let node = self.node.clone();
        let Some(state) = self.streams.get_mut(key) else {
            return;
        };
        let Some(sender) = state.sender.clone() else {
            return;
        };
        let sub = &state.types[type_url];
        let node = (!std::mem::replace(&mut state.node_sent, true)).then_some(node);
        let first = diff.is_none();
        let msg = if key.delta {
            let (subscribe, unsubscribe) = match diff {
                Some((old, new)) => (
                    new.difference(&old).cloned().collect(),
                    old.difference(&new).cloned().collect(),
                ),
                None => (sub.names.iter().cloned().collect::<Vec<_>>(), vec![]),
            };
            // A stream's first statement of a type carries what we already hold.
            let initial = if first {
                versions
                    .into_iter()
                    .filter(|(n, _)| sub.wildcard || sub.names.contains(n))
                    .collect()
            } else {
                Default::default()
            };
            Outbound::Delta(DeltaDiscoveryRequest {
                node,
                type_url: type_url.to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                initial_resource_versions: initial,
                ..Default::default()
            })
        } else {
            Outbound::Sotw(DiscoveryRequest {
                node,
                version_info: version,
                resource_names: sub.names.iter().cloned().collect(),
                type_url: type_url.to_string(),
                response_nonce: sub.nonce.clone(),
                ..Default::default()
            })
        };
        let _ = sender.send(msg);
    }

    fn on_stream_event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Connected(key, sender) => {
                tracing::info!(cluster = %key.cluster, delta = key.delta, "xDS stream connected");
                let Some(state) = self.streams.get_mut(&key) else {
                    return;
                };
                state.sender = Some(sender);
                state.node_sent = false;
                for sub in state.types.values_mut() {
                    sub.nonce.clear();
                }
                let types: Vec<&'static str> = types::ORDER
                    .into_iter()
                    .filter(|t| state.types.contains_key(t))
                    .collect();
                for t in types {
                    self.send_subscription(&key, t, None);
                }
            }
            StreamEvent::Disconnected(key, reason) => {
                tracing::warn!(cluster = %key.cluster, "xDS stream lost: {reason}; keeping the last good config");
                if let Some(state) = self.streams.get_mut(&key) {
                    state.sender = None;
                }
            }
            StreamEvent::Response(key, Inbound::Sotw(resp)) => {
                let Some(type_url) = types::ORDER.into_iter().find(|t| *t == resp.type_url) else {
                    self.nack_unknown(&key, resp.type_url, resp.nonce);
                    return;
                };
                let update = Update::sotw(type_url, resp.version_info.clone(), resp.resources);
                let result = self.store.apply(update, Instant::now());
                let version = self.store.version_info(type_url);
                let Some(state) = self.streams.get_mut(&key) else {
                    return;
                };
                let node =
                    (!std::mem::replace(&mut state.node_sent, true)).then(|| self.node.clone());
                let sub = state.types.entry(type_url).or_default();
                sub.nonce = resp.nonce.clone();
                let req = DiscoveryRequest {
                    node,
                    version_info: version,
                    resource_names: sub.names.iter().cloned().collect(),
                    type_url: type_url.to_string(),
                    response_nonce: resp.nonce,
                    error_detail: result.err().map(nack_status),
                    ..Default::default()
                };
                if let Some(s) = &state.sender {
                    let _ = s.send(Outbound::Sotw(req));
                }
            }
            StreamEvent::Response(key, Inbound::Delta(resp)) => {
                let Some(type_url) = types::ORDER.into_iter().find(|t| *t == resp.type_url) else {
                    self.nack_unknown(&key, resp.type_url, resp.nonce);
                    return;
                };
                let mut resources = Vec::with_capacity(resp.resources.len());
                let mut errors = Vec::new();
                for r in resp.resources {
                    match r.resource {
                        Some(any) => resources.push(Incoming {
                            name: Some(r.name),
                            version: Some(r.version),
                            resource: any,
                        }),
                        None => errors.push(format!("{}: resource body missing", r.name)),
                    }
                }
                let update = Update {
                    type_url: resp.type_url.clone(),
                    version_info: resp.system_version_info.clone(),
                    resources,
                    removed: resp.removed_resources,
                    full_state: false,
                };
                let result = self.store.apply(update, Instant::now()).map_err(|e| {
                    errors.push(e);
                    errors.join("; ")
                });
                let result = if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                }
                .and(result);
                let Some(state) = self.streams.get_mut(&key) else {
                    return;
                };
                let node =
                    (!std::mem::replace(&mut state.node_sent, true)).then(|| self.node.clone());
                let req = DeltaDiscoveryRequest {
                    node,
                    type_url: type_url.to_string(),
                    response_nonce: resp.nonce,
                    error_detail: result.err().map(nack_status),
                    ..Default::default()
                };
                if let Some(s) = &state.sender {
                    let _ = s.send(Outbound::Delta(req));
                }
            }
        }
    }

    fn nack_unknown(&mut self, key: &StreamKey, type_url: String, nonce: String) {
        tracing::warn!("NACK: unsupported resource type {type_url}");
        let Some(state) = self.streams.get(key) else {
            return;
        };
        let Some(s) = &state.sender else { return };
        let status = Some(nack_status(format!("unsupported resource type {type_url}")));
        let msg = if key.delta {
            Outbound::Delta(DeltaDiscoveryRequest {
                type_url,
                response_nonce: nonce,
                error_detail: status,
                ..Default::default()
            })
        } else {
            Outbound::Sotw(DiscoveryRequest {
                type_url,
                response_nonce: nonce,
                error_detail: status,
                ..Default::default()
            })
        };
        let _ = s.send(msg);
    }

    fn on_file(&mut self, f: file::FileUpdate) {
        let update = Update::sotw(f.type_url, f.version_info, f.resources);
        if let Err(e) = self.store.apply(update, Instant::now()) {
            tracing::warn!(path = %f.path.display(), "rejected file update: {e}");
        }
    }
}

fn nack_status(message: String) -> Status {
    Status {
        code: tonic::Code::InvalidArgument as i32,
        message,
        details: vec![],
    }
}

/// Where a gRPC cluster lives right now, read from the current snapshot.
fn target_of(handle: SnapshotHandle, cluster: String) -> impl Fn() -> Option<(String, u16)> {
    move || {
        let snap = handle.load();
        let c = snap.clusters.get(&cluster)?;
        let la = snap.endpoints_of(c)?;
        la.endpoints.first().map(|e| match &e.address {
            EndpointAddress::Ip(a) => (a.ip().to_string(), a.port()),
            EndpointAddress::Dns { host, port } => (host.clone(), *port),
        })
    }
}

/// Adapts stream events into the actor's event channel.
struct EventSink(mpsc::UnboundedSender<Event>);

impl stream::Sink for EventSink {
    fn send(&self, e: StreamEvent) -> bool {
        self.0.send(Event::Stream(e)).is_ok()
    }
}
