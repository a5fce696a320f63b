//! Header mutations with Envoy's semantics (append actions, levels, `%VAR%`s), applied to
//! Pingora's header types.

use std::net::SocketAddr;
use std::sync::LazyLock;

use pingora_http::{RequestHeader, ResponseHeader};
use sentinel_xds::config::route::{AppendAction, HeaderAdd, HeaderMutations, Part, Template};

/// What `%VAR%`s can refer to.
pub(crate) struct Vars<'a> {
    pub downstream: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub protocol: &'static str,
    pub upstream: Option<SocketAddr>,
    pub request: Option<&'a RequestHeader>,
}

impl Vars<'_> {
    /// No request context (headers configured outside a request's scope).
    pub(crate) fn empty() -> Self {
        Vars {
            downstream: None,
            local: None,
            protocol: "",
            upstream: None,
            request: None,
        }
    }
}

static HOSTNAME: LazyLock<String> = LazyLock::new(crate::admin::hostname);

/// Expands a header value template.
pub(crate) fn render(t: &Template, v: &Vars<'_>) -> String {
    let mut out = String::new();
    let addr = |a: Option<SocketAddr>, port: bool| {
        a.map(|a| {
            if port {
                a.to_string()
            } else {
                a.ip().to_string()
            }
        })
        .unwrap_or_default()
    };
    for p in &t.0 {
        match p {
            Part::Literal(s) => out.push_str(s),
            Part::DownstreamRemoteAddress => out.push_str(&addr(v.downstream, true)),
            Part::DownstreamRemoteAddressWithoutPort => out.push_str(&addr(v.downstream, false)),
            Part::DownstreamLocalAddress => out.push_str(&addr(v.local, true)),
            Part::DownstreamLocalAddressWithoutPort => out.push_str(&addr(v.local, false)),
            Part::DownstreamLocalPort => {
                out.push_str(&v.local.map(|a| a.port().to_string()).unwrap_or_default())
            }
            Part::DownstreamRemotePort => out.push_str(
                &v.downstream
                    .map(|a| a.port().to_string())
                    .unwrap_or_default(),
            ),
            Part::Protocol => out.push_str(v.protocol),
            Part::UpstreamRemoteAddress => out.push_str(&addr(v.upstream, true)),
            Part::Hostname => out.push_str(&HOSTNAME),
            Part::RequestHeader(h) => {
                if let Some(value) = v
                    .request
                    .and_then(|r| r.headers.get(h))
                    .and_then(|x| x.to_str().ok())
                {
                    out.push_str(value)
                }
            }
        }
    }
    out
}

/// Pingora's request and response headers keep header-name case next to the map, so they
/// are changed only through their own methods.
pub(crate) trait Headers {
    fn has(&self, name: &http::HeaderName) -> bool;
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn remove(&mut self, name: &str);
}

macro_rules! impl_headers {
    ($t:ty) => {
        impl Headers for $t {
            fn has(&self, name: &http::HeaderName) -> bool {
                self.headers.contains_key(name)
            }
            fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.insert_header(name, value);
            }
            fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.append_header(name, value);
            }
            fn remove(&mut self, name: &str) {
                self.remove_header(name);
            }
        }
    };
}
impl_headers!(RequestHeader);
impl_headers!(ResponseHeader);

/// Trailers.
impl Headers for http::HeaderMap {
    fn has(&self, name: &http::HeaderName) -> bool {
        self.contains_key(name)
    }
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        http::HeaderMap::insert(self, name, value);
    }
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        http::HeaderMap::append(self, name, value);
    }
    fn remove(&mut self, name: &str) {
        http::HeaderMap::remove(self, name);
    }
}

/// Applies one header addition with Envoy's append semantics.
pub(crate) fn apply_add(headers: &mut impl Headers, add: &HeaderAdd, value: String) {
    if value.is_empty() && !add.keep_empty_value {
        return;
    }
    let Ok(value) = http::HeaderValue::try_from(value) else {
        return;
    };
    let exists = headers.has(&add.name);
    match add.action {
        AppendAction::AppendIfExistsOrAdd => headers.append(add.name.clone(), value),
        AppendAction::AddIfAbsent if !exists => headers.insert(add.name.clone(), value),
        AppendAction::OverwriteIfExistsOrAdd => headers.insert(add.name.clone(), value),
        AppendAction::OverwriteIfExists if exists => headers.insert(add.name.clone(), value),
        _ => {}
    }
}

/// Removes, then adds, the header mutations of every level. By default the least specific
/// level is applied last so that it wins; `most_specific_header_mutations_wins` reverses it.
pub(crate) fn mutate<'a>(
    headers: &mut impl Headers,
    levels: &[&'a HeaderMutations],
    most_specific_wins: bool,
    removes: impl Fn(&'a HeaderMutations) -> &'a [String],
    adds: impl Fn(&'a HeaderMutations) -> &'a [HeaderAdd],
    render: impl Fn(&HeaderAdd) -> String,
) {
    for level in levels {
        for name in removes(level) {
            headers.remove(name);
        }
    }
    let mut apply = |level: &'a HeaderMutations| {
        for add in adds(level) {
            apply_add(headers, add, render(add));
        }
    };
    if most_specific_wins {
        levels.iter().rev().for_each(|l| apply(l));
    } else {
        levels.iter().for_each(|l| apply(l));
    }
}
