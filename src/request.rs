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
pub(crate) fn forwarding_headers(
    hcm: &sentinel_xds::config::hcm::HttpConnectionManager,
    req: &mut RequestHeader,
    downstream: Option<std::net::SocketAddr>,
) {
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

/// HTTP/1 requests Envoy's codec refuses: HTTP/1.0 without `accept_http_10` (426), and both
/// Content-Length and Transfer-Encoding (400: request smuggling).
pub(crate) fn reject_http1(
    hcm: &sentinel_xds::config::hcm::HttpConnectionManager,
    req: &RequestHeader,
) -> Option<u16> {
    match req.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 if !hcm.accept_http_10 => Some(426),
        http::Version::HTTP_11
            if req.uri.authority().is_none() && !req.headers.contains_key(http::header::HOST) =>
        {
            Some(400)
        }
        http::Version::HTTP_10 | http::Version::HTTP_11
            if req.headers.contains_key(http::header::CONTENT_LENGTH)
                && req.headers.contains_key(http::header::TRANSFER_ENCODING) =>
        {
            Some(400)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
