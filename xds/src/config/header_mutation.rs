//! Header mutations (`request_headers_to_add` and friends) and their `%VAR%` templates.

use sentinel_proto::pb::envoy::config::core::v3 as core_pb;

use super::{ConfigError, Result, TryCollectExact};

/// Header additions and removals at one level (route config, virtual host, route, weighted
/// cluster).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub request_add: Vec<HeaderAdd>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<HeaderAdd>,
    pub response_remove: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: http::HeaderName,
    pub value: Template,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

/// A header value with Envoy's `%VAR%` substitutions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamRemotePort,
    Protocol,
    UpstreamRemoteAddress,
    Hostname,
    RequestHeader(http::HeaderName),
}

impl Template {
    pub fn parse(s: &str, path: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let end = rest
                .find('%')
                .ok_or_else(|| ConfigError::new(path, format!("unterminated variable in '{s}'")))?;
            let var = &rest[..end];
            rest = &rest[end + 1..];
            let part = match var {
                "DOWNSTREAM_REMOTE_ADDRESS" => Part::DownstreamRemoteAddress,
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
                    Part::DownstreamRemoteAddressWithoutPort
                }
                "DOWNSTREAM_LOCAL_ADDRESS" => Part::DownstreamLocalAddress,
                "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Part::DownstreamLocalAddressWithoutPort,
                "DOWNSTREAM_LOCAL_PORT" => Part::DownstreamLocalPort,
                "DOWNSTREAM_REMOTE_PORT" => Part::DownstreamRemotePort,
                "PROTOCOL" => Part::Protocol,
                "UPSTREAM_REMOTE_ADDRESS" => Part::UpstreamRemoteAddress,
                "HOSTNAME" => Part::Hostname,
                v if v.starts_with("REQ(") && v.ends_with(')') => {
                    let name = &v[4..v.len() - 1];
                    Part::RequestHeader(
                        http::HeaderName::try_from(name.to_ascii_lowercase()).map_err(|_| {
                            ConfigError::new(path, format!("invalid header name in %{v}%"))
                        })?,
                    )
                }
                v => {
                    return Err(ConfigError::new(
                        path,
                        format!("unsupported variable %{v}%"),
                    ))
                }
            };
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            parts.push(part);
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Self(parts))
    }
}

impl HeaderMutations {
    pub(crate) fn from_proto(
        req_add: &[core_pb::HeaderValueOption],
        req_remove: &[String],
        resp_add: &[core_pb::HeaderValueOption],
        resp_remove: &[String],
    ) -> Result<Self> {
        let adds = |opts: &[core_pb::HeaderValueOption], field: &str| {
            opts.iter()
                .enumerate()
                .map(|(i, o)| header_add(o, &format!("{field}[{i}]")))
                .try_collect_exact()
        };
        let removes = |names: &[String], field: &str| {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let n = n.to_ascii_lowercase();
                    if n.starts_with(':') || n == "host" {
                        Err(ConfigError::new(
                            format!("{field}[{i}]"),
                            "pseudo-headers and host cannot be removed",
                        ))
                    } else {
                        Ok(n)
                    }
                })
                .try_collect_exact()
        };
        Ok(Self {
            request_add: adds(req_add, "request_headers_to_add")?,
            request_remove: removes(req_remove, "request_headers_to_remove")?,
            response_add: adds(resp_add, "response_headers_to_add")?,
            response_remove: removes(resp_remove, "response_headers_to_remove")?,
        })
    }
}

pub(crate) fn header_add(o: &core_pb::HeaderValueOption, path: &str) -> Result<HeaderAdd> {
    let h = o
        .header
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.header"), "required"))?;
    let name = http::HeaderName::try_from(h.key.to_ascii_lowercase()).map_err(|_| {
        ConfigError::new(
            format!("{path}.header.key"),
            format!("invalid header name '{}'", h.key),
        )
    })?;
    if h.key.starts_with(':') || name == http::header::HOST {
        return Err(ConfigError::new(
            format!("{path}.header.key"),
            "pseudo-headers and host cannot be set",
        ));
    }
    use core_pb::header_value_option::HeaderAppendAction as A;
    let action = match (
        o.append.as_ref().map(|b| b.value),
        A::try_from(o.append_action),
    ) {
        (Some(true), _) => AppendAction::AppendIfExistsOrAdd,
        (Some(false), _) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(A::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
        (None, Ok(A::AddIfAbsent)) => AppendAction::AddIfAbsent,
        (None, Ok(A::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(A::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
        (None, Err(_)) => {
            return Err(ConfigError::new(
                format!("{path}.append_action"),
                "unknown action",
            ))
        }
    };
    Ok(HeaderAdd {
        name,
        value: Template::parse(&h.value, &format!("{path}.header.value"))?,
        action,
        keep_empty_value: o.keep_empty_value,
    })
}
