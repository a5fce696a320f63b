//! Route selection exactly as Envoy does it: virtual host by domain precedence, then the
//! first route whose match holds.

use sentinel_xds::config::route::{PathMatch, RouteConfig, RouteMatch, VirtualHost};

/// The index of the virtual host for a Host value: exact, then the longest `*.suffix`, then
/// the longest `prefix*`, then `*` (the route configuration's precomputed index).
pub fn virtual_host(rc: &RouteConfig, host: &str) -> Option<usize> {
    rc.domains.find(host)
}

/// What a route sees of a request.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// A value in 0..1_000_000 for `runtime_fraction` sampling.
    pub random: u32,
}

/// The index of the first route of the virtual host that matches.
pub fn route(vh: &VirtualHost, req: &RequestView<'_>) -> Option<usize> {
    // CONNECT matches only `connect_matcher` routes, which Sentinel does not support yet.
    if req.method == http::Method::CONNECT {
        return None;
    }
    vh.routes.iter().position(|r| matches(&r.matcher, req))
}

fn matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    let path_ok = match &m.path {
        PathMatch::Prefix(p) => starts_with(req.path, p, m.case_sensitive),
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                req.path == p
            } else {
                req.path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(r) => r.is_match(req.path),
        PathMatch::SeparatedPrefix(p) => {
            starts_with(req.path, p, m.case_sensitive)
                && matches!(req.path.as_bytes().get(p.len()), None | Some(b'/'))
        }
    };
    if !path_ok {
        return false;
    }
    if m.grpc && !crate::request::is_grpc(req.headers) {
        return false;
    }
    for h in &m.headers {
        let values = req
            .headers
            .get_all(h.name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok());
        if !h.matches(values) {
            return false;
        }
    }
    for q in &m.query {
        if !q.matches(query_param(req.query, &q.name).as_deref()) {
            return false;
        }
    }
    if let Some(f) = m.fraction_per_million {
        if req.random >= f {
            return false;
        }
    }
    true
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// The first value of a query parameter, percent-decoding left as is (as Envoy does).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_proto::pb::envoy::config::route::v3::RouteConfiguration;

    fn rc(yaml: &str) -> RouteConfig {
        let proto: RouteConfiguration =
            sentinel_proto::from_json(&sentinel_proto::parse_text(yaml).unwrap()).unwrap();
        RouteConfig::from_proto(&proto).unwrap()
    }

    #[test]
    fn domain_precedence() {
        let rc = rc(r#"
virtual_hosts:
- { name: any, domains: ["*"] }
- { name: prefix, domains: ["foo.*"] }
- { name: suffix, domains: ["*.example.com"] }
- { name: longer_suffix, domains: ["*.api.example.com"] }
- { name: exact, domains: ["foo.example.com"] }
"#);
        let name = |h: &str| rc.virtual_hosts[virtual_host(&rc, h).unwrap()].name.clone();
        assert_eq!(name("foo.example.com"), "exact");
        assert_eq!(name("x.api.example.com"), "longer_suffix");
        assert_eq!(name("bar.example.com"), "suffix");
        assert_eq!(name("foo.bar"), "prefix");
        assert_eq!(name("other"), "any");
        assert_eq!(name("FOO.EXAMPLE.COM"), "exact");
        // A wildcard stands for at least one character.
        assert_eq!(name(".example.com"), "any");
        assert_eq!(name("foo."), "any");
    }

    #[test]
    fn path_and_header_matching() {
        let rc = rc(r#"
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - { name: sep, match: { path_separated_prefix: /api }, direct_response: { status: 200 } }
  - { name: hdr, match: { prefix: /, headers: [ { name: x-v, range_match: { start: 1, end: 5 } } ] }, direct_response: { status: 200 } }
  - { name: ci, match: { path: /CASE, case_sensitive: false }, direct_response: { status: 200 } }
  - { name: q, match: { prefix: /, query_parameters: [ { name: debug, string_match: { exact: "1" } } ] }, direct_response: { status: 200 } }
"#);
        let vh = &rc.virtual_hosts[0];
        let mut headers = http::HeaderMap::new();
        let pick = |path: &str, query: Option<&str>, headers: &http::HeaderMap| {
            route(
                vh,
                &RequestView {
                    method: &http::Method::GET,
                    path,
                    query,
                    headers,
                    random: 0,
                },
            )
            .map(|r| vh.routes[r].name.clone())
        };
        assert_eq!(pick("/api/x", None, &headers).as_deref(), Some("sep"));
        assert_eq!(pick("/api", None, &headers).as_deref(), Some("sep"));
        assert_eq!(pick("/apix", None, &headers), None);
        assert_eq!(pick("/case", None, &headers).as_deref(), Some("ci"));
        assert_eq!(
            pick("/z", Some("a=2&debug=1"), &headers).as_deref(),
            Some("q")
        );
        headers.insert("x-v", "3".parse().unwrap());
        assert_eq!(pick("/z", None, &headers).as_deref(), Some("hdr"));
    }
}
