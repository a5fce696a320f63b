//! Incremental (delta) xDS: responses carry only what changed for the client.
//!
//! Per stream and type the server keeps the subscription (wildcard and/or names) and the
//! version of each resource the client holds (`known`), seeded from
//! `initial_resource_versions` on the stream's first request, so a reconnecting client is not
//! sent what it already has. A resource's version is a hash of its bytes, stable across
//! snapshots and control-plane restarts.
//!
//! - Added or changed resources in the subscription are sent; resources the client holds that
//!   are subscribed but gone from the snapshot are listed in `removed_resources`.
//! - Unsubscribing forgets the resource without a removal (the client already dropped it, and
//!   the protocol sends none); subscribing again re-sends it.
//! - A wildcard subscription (LDS/CDS) gets a first response even when empty, because
//!   Envoy's initialization waits for it.
//! - Versions are recorded as sent optimistically: a NACKed resource is re-sent only when it
//!   changes, exactly like go-control-plane.
//! - As in SotW, a CDS change re-sends the subscribed ClusterLoadAssignments, because Envoy
//!   warms an updated cluster only when its endpoints arrive.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use sentinel_proto::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use crate::{
    events::EventKind,
    resource,
    stream::{Protocol, StreamCtx},
    Snapshot,
};

/// How many sent nonces to remember, to report the version an ACK/NACK refers to.
const NONCE_MEMORY: usize = 32;

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Whether any response of this type was sent on this stream.
    answered: bool,
    /// Name -> version the client holds (as far as the server knows).
    known: HashMap<String, String>,
    /// Recently sent (nonce, system_version_info).
    sent_nonces: VecDeque<(String, String)>,
}

impl TypeState {
    fn interested(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// The delta side of one stream.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    types: BTreeMap<String, TypeState>,
}

impl Delta {
    /// Builds the response that brings the client's view of one type up to date, or `None`
    /// when nothing differs (except for a wildcard subscription never answered yet).
    /// `resend` re-sends every subscribed resource even when the client holds its version.
    fn respond(
        &mut self,
        ctx: &StreamCtx,
        type_url: &str,
        snapshot: &Snapshot,
        resend: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let mut resources = Vec::new();
        let mut present = BTreeSet::new();
        for (name, any) in snapshot.resources(type_url) {
            present.insert(name.as_str());
            if !state.interested(name) {
                continue;
            }
            let version = resource::resource_version(any);
            if !resend && state.known.get(name) == Some(&version) {
                continue;
            }
            state.known.insert(name.clone(), version.clone());
            resources.push(Resource {
                name: name.clone(),
                version,
                resource: Some(any.clone()),
                ..Default::default()
            });
        }
        let mut removed = Vec::new();
        let mut forgotten = Vec::new();
        for name in state.known.keys() {
            if !state.interested(name) {
                forgotten.push(name.clone());
            } else if !present.contains(name.as_str()) {
                removed.push(name.clone());
            }
        }
        for name in forgotten.iter().chain(&removed) {
            state.known.remove(name);
        }
        removed.sort();
        if resources.is_empty() && removed.is_empty() && (state.answered || !state.wildcard) {
            return None;
        }
        state.answered = true;
        let nonce = ctx.shared.nonce();
        if state.sent_nonces.len() == NONCE_MEMORY {
            state.sent_nonces.pop_front();
        }
        state
            .sent_nonces
            .push_back((nonce.clone(), snapshot.version().to_string()));
        let mut event = ctx.event(EventKind::Response, type_url);
        event.version_info = snapshot.version().to_string();
        event.response_nonce = nonce.clone();
        event.resource_names = resources.iter().map(|r| r.name.clone()).collect();
        event.removed = removed.clone();
        ctx.record(event);
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.version().to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            control_plane: ctx.control_plane(),
            ..Default::default()
        })
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn on_request(
        &mut self,
        ctx: &mut StreamCtx,
        request: DeltaDiscoveryRequest,
    ) -> Vec<DeltaDiscoveryResponse> {
        let Some(type_url) = ctx.type_url(&request.type_url) else {
            return Vec::new();
        };
        ctx.learn_node(request.node.as_ref());
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        if !request.response_nonce.is_empty() {
            let kind = if request.error_detail.is_some() {
                EventKind::Nack
            } else {
                EventKind::Ack
            };
            let mut event = ctx.event(kind, &type_url);
            event.response_nonce = request.response_nonce.clone();
            event.version_info = state
                .sent_nonces
                .iter()
                .find(|(nonce, _)| *nonce == request.response_nonce)
                .map(|(_, version)| version.clone())
                .unwrap_or_default();
            event.error_detail = request.error_detail.as_ref().map(|s| s.message.clone());
            ctx.record(event);
        }

        let wildcard_type = resource::is_wildcard_type(&type_url);
        if first {
            state.known = request.initial_resource_versions.clone();
            state.wildcard = wildcard_type && request.resource_names_subscribe.is_empty();
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = wildcard_type;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
            }
        }
        let subscription_changed = !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        if first || subscription_changed {
            let mut event = ctx.event(EventKind::Request, &type_url);
            event.resource_names = request.resource_names_subscribe.clone();
            event.removed = request.resource_names_unsubscribe.clone();
            ctx.record(event);
        } else {
            return Vec::new();
        }
        let Some(snapshot) = ctx.snapshot() else {
            return Vec::new();
        };
        self.respond(ctx, &type_url, &snapshot, false)
            .into_iter()
            .collect()
    }

    fn on_snapshot(&mut self, ctx: &mut StreamCtx) -> Vec<DeltaDiscoveryResponse> {
        let Some(snapshot) = ctx.snapshot() else {
            return Vec::new();
        };
        let mut types: Vec<String> = self.types.keys().cloned().collect();
        types.sort_by_key(|t| (resource::push_rank(t), t.clone()));
        let mut out = Vec::new();
        let mut clusters_changed = false;
        for type_url in types {
            let resend = type_url == resource::ENDPOINT && clusters_changed;
            if let Some(response) = self.respond(ctx, &type_url, &snapshot, resend) {
                clusters_changed |= type_url == resource::CLUSTER && !response.resources.is_empty();
                out.push(response);
            }
        }
        out
    }
}
