//! The values of ext_proc `request_attributes`/`response_attributes`, as Envoy's CEL
//! evaluator gives them for single attribute names: strings for most, numbers for ports and
//! codes, booleans for flags, and nothing (the key is left out) for an attribute that has no
//! value yet, such as `upstream.address` before an upstream was picked. Envoy sends them with
//! the first message of each direction, under the filter's name (case `ext_proc/attributes`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora_http::{RequestHeader, ResponseHeader};
use sentinel_proto::pb::google::protobuf::{value::Kind, Struct, Value};
use sentinel_xds::config::ext_proc_attributes::{Attribute, AttributeKind};

use crate::ctx::Ctx;
use crate::timefmt::{rfc3339, Fraction};

/// The key Envoy's default attribute builder uses.
const KEY: &str = "envoy.filters.http.ext_proc";

/// What attributes are read from.
pub(crate) struct Sources<'a> {
    pub req: &'a RequestHeader,
    pub resp: Option<&'a ResponseHeader>,
    pub ctx: &'a Ctx,
    pub filter_chain: &'a str,
}

fn joined(values: http::header::GetAll<'_, http::HeaderValue>) -> Option<Kind> {
    let mut out: Option<String> = None;
    for v in values {
        let v = String::from_utf8_lossy(v.as_bytes());
        match &mut out {
            Some(s) => {
                s.push(',');
                s.push_str(&v);
            }
            None => out = Some(v.into_owned()),
        }
    }
    out.map(Kind::StringValue)
}

fn value(kind: &AttributeKind, s: &Sources) -> Option<Kind> {
    use AttributeKind::*;
    let text = |v: &str| Some(Kind::StringValue(v.to_string()));
    let number = |n: u64| Some(Kind::NumberValue(n as f64));
    let path = s.req.uri.path_and_query().map_or("/", |p| p.as_str());
    let route = || {
        let (rc, (v, i)) = (s.ctx.route_config.as_ref()?, s.ctx.matched?);
        rc.virtual_hosts.get(v)?.routes.get(i)
    };
    match kind {
        RequestPath => text(path),
        RequestUrlPath => text(path.split('?').next().unwrap_or_default()),
        RequestQuery => text(path.split_once('?').map_or("", |(_, q)| q)),
        RequestHost => text(crate::request::host(s.req)),
        RequestScheme => text(s.req.uri.scheme_str().unwrap_or("http")),
        RequestMethod => text(s.req.method.as_str()),
        RequestReferer => joined(s.req.headers.get_all(http::header::REFERER)),
        RequestUserAgent => joined(s.req.headers.get_all(http::header::USER_AGENT)),
        RequestId => joined(s.req.headers.get_all("x-request-id")),
        RequestHeader(name) => joined(s.req.headers.get_all(name.as_str())),
        RequestProtocol => text(s.ctx.protocol),
        RequestTime => {
            // Envoy's start time has microseconds.
            let elapsed = s.ctx.started.map(|t| t.elapsed()).unwrap_or_default();
            let start = SystemTime::now() - elapsed;
            let since = start.duration_since(UNIX_EPOCH).unwrap_or_default();
            let micros = Duration::from_micros(since.as_micros() as u64);
            text(&rfc3339(UNIX_EPOCH + micros, Fraction::Trimmed))
        }
        SourceAddress => text(&s.ctx.downstream?.to_string()),
        SourcePort => number(s.ctx.downstream?.port().into()),
        DestinationAddress => text(&s.ctx.local?.to_string()),
        DestinationPort => number(s.ctx.local?.port().into()),
        // Listeners with TLS are refused, so no connection has a peer certificate or SNI.
        ConnectionMtls => Some(Kind::BoolValue(false)),
        ConnectionRequestedServerName => text(""),
        // The route's cluster: picked before the filters run, and known as the upstream's
        // cluster once it was taken from there.
        XdsClusterName => match (&s.ctx.cluster_name, &s.ctx.cluster) {
            (Some(name), _) => text(name),
            (None, Some(c)) => text(&c.config.name),
            (None, None) => None,
        },
        XdsRouteName => text(route().map_or("", |r| r.name.as_str())),
        XdsVirtualHostName => text(&s.ctx.vhost()?.name),
        XdsFilterChainName => text(s.filter_chain),
        ResponseCode => number(s.resp?.status.as_u16().into()),
        ResponseHeader(name) => joined(s.resp?.headers.get_all(name.as_str())),
        UpstreamAddress => text(&s.ctx.host.as_ref()?.addr.to_string()),
        UpstreamPort => number(s.ctx.host.as_ref()?.addr.port().into()),
        UpstreamRequestAttemptCount => (s.ctx.attempts > 0)
            .then_some(s.ctx.attempts.into())
            .and_then(number),
    }
}

/// The attributes map for a message, or None when none are configured.
pub(crate) fn evaluate(
    attributes: &[Attribute],
    sources: &Sources,
) -> Option<HashMap<String, Struct>> {
    if attributes.is_empty() {
        return None;
    }
    let fields = attributes
        .iter()
        .filter_map(|a| {
            let kind = value(&a.kind, sources)?;
            Some((a.key.clone(), Value { kind: Some(kind) }))
        })
        .collect();
    Some(HashMap::from([(KEY.to_string(), Struct { fields })]))
}
