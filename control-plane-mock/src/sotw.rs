//! State-of-the-world xDS: every response carries the full set the client subscribed to.
//!
//! Per stream and type the server keeps the subscription, the nonce of the last response and
//! a fingerprint of what it sent, so it can push only when the client's view would change:
//! - the first request of a type is always answered once a snapshot exists (LDS/CDS even with
//!   nothing in it: Envoy's initialization waits for that first response);
//! - a request whose nonce is not the last one sent is stale and ignored, as the protocol says;
//! - an ACK/NACK that changes the subscribed names is answered (RDS/EDS only when one of the
//!   names exists: a partial RDS/EDS response is legal, an empty one means nothing);
//! - a snapshot change pushes each type whose selection changed, CDS, EDS, LDS then RDS
//!   (make-before-break), and re-sends EDS after a CDS change because Envoy warms an updated
//!   cluster only when a ClusterLoadAssignment arrives for it.

use std::collections::{BTreeMap, BTreeSet};

use sentinel_proto::pb::{
    envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    google::protobuf::Any,
};

use crate::{
    events::EventKind,
    resource::{self, fnv1a},
    stream::{Protocol, StreamCtx},
    Snapshot,
};

#[derive(Debug, Default)]
struct TypeState {
    /// Whether the client has asked for this type yet on this stream.
    requested: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// The nonce of the last response; requests quoting another one are stale.
    nonce: String,
    /// Fingerprint of the last response's resources.
    sent: Option<u64>,
}

/// The SotW side of one stream.
#[derive(Debug, Default)]
pub(crate) struct Sotw {
    types: BTreeMap<String, TypeState>,
}

/// The resources of `type_url` a subscription selects, in snapshot order.
pub(crate) fn select<'a>(
    snapshot: &'a Snapshot,
    type_url: &str,
    wildcard: bool,
    names: &BTreeSet<String>,
) -> Vec<&'a (String, Any)> {
    snapshot
        .resources(type_url)
        .iter()
        .filter(|(name, _)| wildcard || names.contains(name))
        .collect()
}

/// Whether a SotW request's names mean "everything": `*`, or the legacy empty list.
pub(crate) fn is_wildcard(type_url: &str, names: &BTreeSet<String>) -> bool {
    resource::is_wildcard_type(type_url) && (names.is_empty() || names.contains("*"))
}

impl Sotw {
    /// Builds the response for one type, or `None` when there is nothing to say: no
    /// snapshot, a named type none of whose names exist, or (unless `force`) no change since
    /// the last response.
    fn respond(
        &mut self,
        ctx: &StreamCtx,
        type_url: &str,
        snapshot: &Snapshot,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let selected = select(snapshot, type_url, state.wildcard, &state.names);
        if selected.is_empty() && !state.wildcard {
            return None;
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(selected.len() * 2);
        for (name, any) in &selected {
            parts.push(name.as_bytes());
            parts.push(&any.value);
        }
        let fingerprint = fnv1a(&parts);
        if !force && state.sent == Some(fingerprint) {
            return None;
        }
        let nonce = ctx.shared.nonce();
        state.nonce = nonce.clone();
        state.sent = Some(fingerprint);
        let mut event = ctx.event(EventKind::Response, type_url);
        event.version_info = snapshot.version().to_string();
        event.response_nonce = nonce.clone();
        event.resource_names = selected.iter().map(|(name, _)| name.clone()).collect();
        ctx.record(event);
        Some(DiscoveryResponse {
            version_info: snapshot.version().to_string(),
            resources: selected.into_iter().map(|(_, any)| any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce,
            control_plane: ctx.control_plane(),
            ..Default::default()
        })
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn on_request(
        &mut self,
        ctx: &mut StreamCtx,
        request: DiscoveryRequest,
    ) -> Vec<DiscoveryResponse> {
        let Some(type_url) = ctx.type_url(&request.type_url) else {
            return Vec::new();
        };
        ctx.learn_node(request.node.as_ref());
        let state = self.types.entry(type_url.clone()).or_default();
        let nonce = &request.response_nonce;
        if !nonce.is_empty() && !state.nonce.is_empty() && *nonce != state.nonce {
            tracing::debug!(stream = ctx.id, %type_url, %nonce, "stale nonce, request ignored");
            return Vec::new();
        }
        let kind = match (nonce.is_empty(), &request.error_detail) {
            (true, _) => EventKind::Request,
            (false, Some(_)) => EventKind::Nack,
            (false, None) => EventKind::Ack,
        };
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        let wildcard = is_wildcard(&type_url, &names);
        let changed = !state.requested || names != state.names || wildcard != state.wildcard;

        let mut event = ctx.event(kind, &type_url);
        event.version_info = request.version_info.clone();
        event.response_nonce = nonce.clone();
        event.error_detail = request.error_detail.as_ref().map(|s| s.message.clone());
        event.resource_names = request.resource_names.clone();
        ctx.record(event.clone());
        if changed && kind != EventKind::Request {
            // An ACK that also changes the subscription is two facts; record both.
            event.kind = EventKind::Request;
            event.error_detail = None;
            ctx.record(event);
        }

        state.requested = true;
        state.names = names;
        state.wildcard = wildcard;
        if kind != EventKind::Request && !changed {
            return Vec::new();
        }
        let Some(snapshot) = ctx.snapshot() else {
            return Vec::new();
        };
        self.respond(ctx, &type_url, &snapshot, true)
            .into_iter()
            .collect()
    }

    fn on_snapshot(&mut self, ctx: &mut StreamCtx) -> Vec<DiscoveryResponse> {
        let Some(snapshot) = ctx.snapshot() else {
            return Vec::new();
        };
        let mut types: Vec<String> = self
            .types
            .iter()
            .filter(|(_, state)| state.requested)
            .map(|(type_url, _)| type_url.clone())
            .collect();
        types.sort_by_key(|t| (resource::push_rank(t), t.clone()));
        let mut out = Vec::new();
        let mut clusters_changed = false;
        for type_url in types {
            let force = type_url == resource::ENDPOINT && clusters_changed;
            if let Some(response) = self.respond(ctx, &type_url, &snapshot, force) {
                clusters_changed |= type_url == resource::CLUSTER;
                out.push(response);
            }
        }
        out
    }
}
