//! ext_proc `request_attributes` and `response_attributes`.
//!
//! Envoy compiles each entry as a CEL expression and sends the result under the entry's own
//! text. Sentinel has no CEL evaluator: it reads the entries that name one attribute (the
//! common case, `request.path`, `request.headers['x-user']`) and refuses anything else with a
//! NACK, so a processor never silently misses a value it was promised. Attributes whose value
//! Sentinel cannot give as Envoy does (sizes, durations, response flags and details, ids of
//! connections) are refused too.

use super::{ConfigError, Result};

/// One attribute Sentinel can give, by its Envoy name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeKind {
    RequestPath,
    RequestUrlPath,
    RequestHost,
    RequestScheme,
    RequestMethod,
    RequestReferer,
    RequestUserAgent,
    RequestId,
    RequestProtocol,
    RequestQuery,
    RequestTime,
    /// `request.headers['name']`: the header's values joined with `,` (name lower-cased).
    RequestHeader(String),
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    ConnectionMtls,
    ConnectionRequestedServerName,
    XdsClusterName,
    XdsRouteName,
    XdsVirtualHostName,
    XdsFilterChainName,
    ResponseCode,
    /// `response.headers['name']`.
    ResponseHeader(String),
    UpstreamAddress,
    UpstreamPort,
    UpstreamRequestAttemptCount,
}

/// An entry of `request_attributes`/`response_attributes`: sent under `key`, its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub key: String,
    pub kind: AttributeKind,
}

/// `request.headers['x']` (or with double quotes) → `x`, lower-cased as Envoy looks it up.
fn header_key(expr: &str, map: &str) -> Option<String> {
    let inner = expr
        .strip_prefix(map)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let name = inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
    let valid = !name.is_empty() && !name.contains(['\'', '"', '\\']);
    valid.then(|| name.to_ascii_lowercase())
}

impl Attribute {
    fn parse(expr: &str) -> Option<AttributeKind> {
        use AttributeKind::*;
        let text = expr.trim();
        if let Some(h) = header_key(text, "request.headers") {
            return Some(RequestHeader(h));
        }
        if let Some(h) = header_key(text, "response.headers") {
            return Some(ResponseHeader(h));
        }
        Some(match text {
            "request.path" => RequestPath,
            "request.url_path" => RequestUrlPath,
            "request.host" => RequestHost,
            "request.scheme" => RequestScheme,
            "request.method" => RequestMethod,
            "request.referer" => RequestReferer,
            "request.useragent" => RequestUserAgent,
            "request.id" => RequestId,
            "request.protocol" => RequestProtocol,
            "request.query" => RequestQuery,
            "request.time" => RequestTime,
            "source.address" => SourceAddress,
            "source.port" => SourcePort,
            "destination.address" => DestinationAddress,
            "destination.port" => DestinationPort,
            "connection.mtls" => ConnectionMtls,
            "connection.requested_server_name" => ConnectionRequestedServerName,
            "xds.cluster_name" => XdsClusterName,
            "xds.route_name" => XdsRouteName,
            "xds.virtual_host_name" => XdsVirtualHostName,
            "xds.filter_chain_name" => XdsFilterChainName,
            "response.code" => ResponseCode,
            "upstream.address" => UpstreamAddress,
            "upstream.port" => UpstreamPort,
            "upstream.request_attempt_count" => UpstreamRequestAttemptCount,
            _ => return None,
        })
    }

    /// Reads a list of entries; `field` names the list in errors.
    pub fn list(entries: &[String], field: &str) -> Result<Vec<Attribute>> {
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| match Self::parse(e) {
                Some(kind) => Ok(Attribute {
                    key: e.clone(),
                    kind,
                }),
                None => Err(ConfigError::new(
                    format!("{field}[{i}]"),
                    format!(
                        "'{e}' is not supported: Sentinel evaluates no CEL, only the names of \
                         single attributes (see docs/ext_proc.md)"
                    ),
                )),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_header_lookups_are_read_and_expressions_refused() {
        let read = |e: &[&str]| {
            Attribute::list(
                &e.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "request_attributes",
            )
        };
        let got = read(&[
            "request.path",
            "request.headers['X-A']",
            "response.headers[\"b\"]",
        ])
        .unwrap();
        assert_eq!(got[0].kind, AttributeKind::RequestPath);
        assert_eq!(got[1].kind, AttributeKind::RequestHeader("x-a".into()));
        assert_eq!(got[1].key, "request.headers['X-A']");
        assert_eq!(got[2].kind, AttributeKind::ResponseHeader("b".into()));
        for bad in [
            "request.path == '/x'",
            "request.size",
            "request.headers",
            "request.headers['a' + 'b']",
            "xds.node",
        ] {
            let err = read(&["request.method", bad]).unwrap_err().to_string();
            assert!(err.contains("request_attributes[1]"), "{err}");
        }
    }
}
