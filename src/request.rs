//! Request preparation as Envoy's connection manager does it: the Host, path normalization,
//! and request ids.

use pingora_http::RequestHeader;

pub(crate) fn host_of(req: &RequestHeader) -> String {
    host(req).to_string()
}

/// The request's authority (absolute-form target), else its Host header, else "".
pub(crate) fn host(req: &RequestHeader) -> &str {
    match req.uri.authority() {
        Some(a) => a.as_str(),
        None => req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
    }
}

/// `normalize_path` (RFC 3986 dot segments) and `merge_slashes`; None when the path is
/// invalid (Envoy answers 400).
pub(crate) fn normalize(path: &str, dots: bool, merge: bool) -> Option<String> {
    let mut p = path.to_string();
    if merge {
        while p.contains("//") {
            p = p.replace("//", "/");
        }
    }
    if dots {
        if !p.starts_with('/') {
            return None;
        }
        let mut out: Vec<&str> = Vec::new();
        let trailing = p.ends_with("/.") || p.ends_with("/..") || p.ends_with('/');
        for seg in p.split('/').skip(1) {
            match seg {
                "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
        let mut joined = format!("/{}", out.join("/"));
        if trailing && !joined.ends_with('/') {
            joined.push('/');
        }
        p = joined;
    }
    Some(p)
}

/// A random version-4 UUID, as Envoy generates for x-request-id; formatted by hand into a
/// header value because this runs on every request.
pub(crate) fn uuid4() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    // Version 4 in bits 76..80, the RFC 4122 variant (0b10) in bits 62..64.
    let bits = (bits & !(0xf << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62);
    let mut out = [0u8; 36];
    let mut nibble = 32;
    for (i, byte) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *byte = b'-';
        } else {
            nibble -= 1;
            *byte = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
        }
    }
    http::HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

/// The address Envoy appends to x-forwarded-for for a loopback peer: the host's own.
static HOST_IPV4: std::sync::LazyLock<std::net::Ipv4Addr> =
    std::sync::LazyLock::new(crate::net::local_ipv4);

/// x-forwarded-for, x-envoy-external-address, x-forwarded-proto and via, as Envoy's
/// connection manager sets them on the way upstream.
/// Envoy's control headers that only internal clients may send; with Envoy's default
/// `internal_address_config` no client is internal, so they are dropped from every request
/// (`ConnectionManagerUtility::cleanInternalHeaders`).
const INTERNAL_ONLY: &[&str] = &[
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
];

/// Dropped as well at the edge (`use_remote_address`).
const EDGE_ONLY: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

pub(crate) fn forwarding_headers(
    hcm: &sentinel_xds::config::hcm::HttpConnectionManager,
    req: &mut RequestHeader,
    downstream: Option<std::net::SocketAddr>,
) {
    if req
        .headers
        .keys()
        .any(|k| k.as_str().starts_with("x-envoy-"))
    {
        let edge = if hcm.use_remote_address {
            EDGE_ONLY
        } else {
            &[]
        };
        for name in INTERNAL_ONLY.iter().chain(edge) {
            req.remove_header(*name);
        }
    }
    if hcm.use_remote_address {
        if let Some(a) = downstream {
            let _ = req.insert_header("x-envoy-external-address", a.ip().to_string());
            if !hcm.skip_xff_append {
                let ip = if a.ip().is_loopback() {
                    std::net::IpAddr::V4(*HOST_IPV4)
                } else {
                    a.ip()
                };
                let value = match req
                    .headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                {
                    Some(prev) => format!("{prev},{ip}"),
                    None => ip.to_string(),
                };
                let _ = req.insert_header("x-forwarded-for", value);
            }
        }
    }
    if hcm.use_remote_address || !req.headers.contains_key("x-forwarded-proto") {
        let _ = req.insert_header("x-forwarded-proto", http::HeaderValue::from_static("http"));
    }
    if let Some(via) = &hcm.via {
        let _ = req.append_header("via", via.as_str());
    }
}

/// Whether a comma-separated header (`connection`, `te`) lists `token`, in any of its lines.
pub(crate) fn has_token(headers: &http::HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A gRPC request: `content-type: application/grpc` (or `+proto`, `+json`...).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The route's timeout for this request: a gRPC call's `grpc-timeout` when the route has
/// `max_grpc_timeout` (Envoy's `FilterUtility::finalTimeout`), else the route's `timeout`.
pub(crate) fn route_timeout(
    a: &sentinel_xds::config::route::RouteAction,
    req: &RequestHeader,
) -> Option<std::time::Duration> {
    use std::time::Duration;
    let Some(max) = a.max_grpc_timeout else {
        return a.timeout;
    };
    if !is_grpc(&req.headers) {
        return a.timeout;
    }
    let mut t = req
        .headers
        .get("grpc-timeout")
        .and_then(|v| grpc_timeout(v.as_bytes()))
        .unwrap_or(Duration::ZERO);
    if let Some(offset) = a.grpc_timeout_offset {
        if offset < t {
            t -= offset;
        }
    }
    if !max.is_zero() && (t.is_zero() || t > max) {
        t = max;
    }
    (!t.is_zero()).then_some(t)
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(v: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(crate) fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The upgrade an HTTP/1.1 request asks for (`Upgrade` named in `Connection`), lowercase.
/// `h2c` is not one: Envoy's codec drops that offer, and so do we.
pub(crate) fn upgrade_type(req: &mut RequestHeader) -> Option<String> {
    if req.version != http::Version::HTTP_11 {
        return None;
    }
    let kind = req
        .headers
        .get(http::header::UPGRADE)?
        .to_str()
        .ok()?
        .trim()
        .to_ascii_lowercase();
    let named = has_token(&req.headers, http::header::CONNECTION, "upgrade");
    if kind == "h2c" {
        req.remove_header(&http::header::UPGRADE);
        req.remove_header("http2-settings");
        return None;
    }
    named.then_some(kind)
}

/// Whether an upgrade is allowed: the route's setting for its type wins; otherwise the
/// connection manager's (Envoy's `createUpgradeFilterChain`).
pub(crate) fn upgrade_allowed(
    kind: &str,
    route: &[(String, bool)],
    hcm: &[(String, bool)],
) -> bool {
    let find = |list: &[(String, bool)]| list.iter().find(|(k, _)| k == kind).map(|(_, on)| *on);
    match find(route) {
        Some(on) => on,
        None => find(hcm).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        assert_eq!(grpc_timeout(b"300m"), Some(Duration::from_millis(300)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"123456789m"), None);
        assert_eq!(grpc_timeout(b"m"), None);
        assert_eq!(grpc_timeout(b"5x"), None);
    }

    #[test]
    fn route_upgrade_settings_override_the_connection_managers() {
        let on = |k: &str| vec![(k.to_string(), true)];
        let off = |k: &str| vec![(k.to_string(), false)];
        assert!(upgrade_allowed("websocket", &[], &on("websocket")));
        assert!(!upgrade_allowed(
            "websocket",
            &off("websocket"),
            &on("websocket")
        ));
        assert!(upgrade_allowed("x", &on("x"), &[]));
        assert!(!upgrade_allowed("x", &[], &on("websocket")));
        assert!(!upgrade_allowed("websocket", &[], &off("websocket")));
    }

    #[test]
    fn normalizes_like_envoy() {
        assert_eq!(
            normalize("/a/./b/../c", true, false).as_deref(),
            Some("/a/c")
        );
        assert_eq!(normalize("/a//b", false, true).as_deref(), Some("/a/b"));
        assert_eq!(normalize("/..", true, false).as_deref(), Some("/"));
    }

    #[test]
    fn uuid_has_version_4() {
        let id = uuid4();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(
            id.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>(),
            [8, 13, 18, 23]
        );
    }
}
