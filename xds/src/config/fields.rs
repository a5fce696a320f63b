//! The supported-fields table, and the check that enforces it.
//!
//! Each Envoy message that Sentinel reads has a rule: the fields it implements, and the fields
//! it ignores because ignoring them cannot change what a client or upstream observes (names of
//! stats, metadata, and the like). Any other field that is set makes the resource invalid, so
//! the control plane gets a NACK naming it instead of a proxy that quietly behaves unlike
//! Envoy. Messages without a rule (leaf types such as Duration) are accepted whole, but their
//! children are still walked. `docs/supported-fields.md` is generated from this table.

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use super::ConfigError;

/// What Sentinel does with the fields of one message type.
pub struct Rule {
    pub message: &'static str,
    pub supported: &'static [&'static str],
    pub ignored: &'static [&'static str],
}

const fn rule(
    message: &'static str,
    supported: &'static [&'static str],
    ignored: &'static [&'static str],
) -> Rule {
    Rule {
        message,
        supported,
        ignored,
    }
}

/// The table. Keep it sorted by message name; the docs are generated from it.
pub static RULES: &[Rule] = &[
    rule(
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "eds_cluster_config",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
            "typed_extension_protocol_options",
            "least_request_lb_config",
            "dns_refresh_rate",
            "dns_lookup_family",
            "common_lb_config",
            "http2_protocol_options",
        ],
        &[
            "alt_stat_name",
            "metadata",
            "track_timeout_budgets",
            "track_cluster_stats",
            "wait_for_warm_on_init",
            "respect_dns_ttl",
            "per_connection_buffer_limit_bytes",
            "ignore_health_on_host_removal",
            "close_connections_on_host_health_failure",
        ],
    ),
    rule(
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        &[],
        &["healthy_panic_threshold", "update_merge_window"],
    ),
    rule(
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        &["eds_config", "service_name"],
        &[],
    ),
    rule(
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count"],
        &[],
    ),
    rule(
        "envoy.config.common.mutation_rules.v3.HeaderMutationRules",
        &[
            "allow_all_routing",
            "allow_envoy",
            "disallow_system",
            "disallow_all",
            "allow_expression",
            "disallow_expression",
            "disallow_is_error",
        ],
        &[],
    ),
    rule("envoy.config.core.v3.Address", &["socket_address"], &[]),
    rule(
        "envoy.config.core.v3.ApiConfigSource",
        &[
            "api_type",
            "transport_api_version",
            "grpc_services",
            "set_node_on_first_message_only",
        ],
        &["refresh_delay", "request_timeout", "rate_limit_settings"],
    ),
    rule(
        "envoy.config.core.v3.ConfigSource",
        &[
            "ads",
            "api_config_source",
            "path_config_source",
            "resource_api_version",
            "initial_fetch_timeout",
            "path",
        ],
        &["authorities"],
    ),
    rule(
        "envoy.config.core.v3.GrpcService",
        &["envoy_grpc", "timeout"],
        &["initial_metadata"],
    ),
    rule(
        "envoy.config.core.v3.GrpcService.EnvoyGrpc",
        &["cluster_name"],
        &["authority"],
    ),
    rule("envoy.config.core.v3.HeaderValue", &["key", "value"], &[]),
    rule(
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action", "keep_empty_value"],
        &[],
    ),
    rule(
        "envoy.config.core.v3.Http1ProtocolOptions",
        &["accept_http_10"],
        &["header_key_format"],
    ),
    rule(
        "envoy.config.core.v3.Http2ProtocolOptions",
        &[],
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
            "connection_keepalive",
        ],
    ),
    rule(
        "envoy.config.core.v3.HttpProtocolOptions",
        &[
            "idle_timeout",
            "max_headers_count",
            "headers_with_underscores_action",
        ],
        &[],
    ),
    rule(
        "envoy.config.core.v3.SocketAddress",
        &["address", "port_value", "protocol"],
        &["ipv4_compat"],
    ),
    rule(
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints", "policy"],
        &["named_endpoints"],
    ),
    rule(
        "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
        &[],
        &[
            "overprovisioning_factor",
            "endpoint_stale_after",
            "weighted_priority_health",
        ],
    ),
    rule(
        "envoy.config.endpoint.v3.Endpoint",
        &["address", "hostname"],
        &["health_check_config"],
    ),
    rule(
        "envoy.config.endpoint.v3.LbEndpoint",
        &["endpoint", "health_status", "load_balancing_weight"],
        &["metadata"],
    ),
    rule(
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &[
            "lb_endpoints",
            "load_balancing_weight",
            "priority",
            "locality",
        ],
        &["metadata"],
    ),
    rule(
        "envoy.config.listener.v3.Filter",
        &["name", "typed_config"],
        &[],
    ),
    rule(
        "envoy.config.listener.v3.FilterChain",
        &["filter_chain_match", "filters", "name"],
        &["metadata"],
    ),
    rule(
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "source_prefix_ranges",
            "source_ports",
            "source_type",
            "direct_source_prefix_ranges",
        ],
        &[],
    ),
    rule(
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "default_filter_chain",
            "drain_type",
            "per_connection_buffer_limit_bytes",
            "bind_to_port",
        ],
        &[
            "stat_prefix",
            "metadata",
            "traffic_direction",
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
            "enable_reuse_port",
            "ignore_global_conn_limit",
        ],
    ),
    rule(
        "envoy.config.ratelimit.v3.RateLimitServiceConfig",
        &["grpc_service", "transport_api_version"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.DirectResponseAction",
        &["status", "body"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.FilterConfig",
        &["config", "is_optional", "disabled"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "exact_match",
            "safe_regex_match",
            "range_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "string_match",
            "invert_match",
            "treat_missing_header_as_empty",
        ],
        &[],
    ),
    rule(
        "envoy.config.route.v3.QueryParameterMatcher",
        &["name", "string_match", "present_match"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RateLimit",
        &["stage", "actions", "hits_addend"],
        &["disable_key"],
    ),
    rule(
        "envoy.config.route.v3.RateLimit.Action",
        &[
            "source_cluster",
            "destination_cluster",
            "request_headers",
            "query_parameters",
            "remote_address",
            "masked_remote_address",
            "generic_key",
            "header_value_match",
        ],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RateLimit.Action.GenericKey",
        &["descriptor_value", "descriptor_key"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RateLimit.Action.HeaderValueMatch",
        &[
            "descriptor_value",
            "descriptor_key",
            "expect_match",
            "headers",
        ],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RateLimit.HitsAddend",
        &["number", "format"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retry_back_off",
            "retriable_status_codes",
        ],
        &["host_selection_retry_max_attempts"],
    ),
    rule(
        "envoy.config.route.v3.RetryPolicy.RetryBackOff",
        &["base_interval", "max_interval"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.Route",
        &[
            "typed_per_filter_config",
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
        &["metadata", "decorator", "stat_prefix"],
    ),
    rule(
        "envoy.config.route.v3.RouteAction",
        &[
            "rate_limits",
            "include_vh_rate_limits",
            "cluster",
            "weighted_clusters",
            "cluster_header",
            "cluster_not_found_response_code",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "auto_host_rewrite",
            "host_rewrite_header",
            "timeout",
            "idle_timeout",
            "retry_policy",
            "request_mirror_policies",
            "upgrade_configs",
            "max_grpc_timeout",
            "grpc_timeout_offset",
        ],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &["cluster", "runtime_fraction"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RouteAction.UpgradeConfig",
        &["upgrade_type", "enabled"],
        &[],
    ),
    rule(
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "most_specific_header_mutations_wins",
            "internal_only_headers",
        ],
        &["max_direct_response_body_size_bytes", "metadata"],
    ),
    rule(
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
            "runtime_fraction",
        ],
        &[],
    ),
    rule(
        "envoy.config.route.v3.VirtualHost",
        &[
            "rate_limits",
            "typed_per_filter_config",
            "name",
            "domains",
            "routes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "include_request_attempt_count",
            "include_attempt_count_in_response",
        ],
        &["metadata", "virtual_clusters"],
    ),
    rule(
        "envoy.config.route.v3.WeightedCluster",
        &["clusters", "total_weight"],
        &["runtime_key_prefix"],
    ),
    rule(
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &[
            "name",
            "weight",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
        &["metadata_match"],
    ),
    rule(
        "envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor",
        &["entries", "token_bucket", "shadow_mode"],
        &[],
    ),
    rule(
        "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry",
        &["key", "value"],
        &[],
    ),
    rule(
        "envoy.extensions.filters.http.ext_proc.v3.ExtProcOverrides",
        &["processing_mode", "grpc_service", "failure_mode_allow"],
        // Envoy 1.40 accepts and ignores them (case ext_proc/per_route_overrides).
        &["request_attributes", "response_attributes"],
    ),
    rule(
        "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
        &["disabled", "overrides"],
        &[],
    ),
    rule(
        "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        &[
            "grpc_service",
            "failure_mode_allow",
            "processing_mode",
            "message_timeout",
            "mutation_rules",
            "allow_mode_override",
            "disable_immediate_response",
            "observability_mode",
            "stat_prefix",
            "request_attributes",
            "response_attributes",
        ],
        &[],
    ),
    rule(
        "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode",
        &[
            "request_header_mode",
            "response_header_mode",
            "request_body_mode",
            "response_body_mode",
            "request_trailer_mode",
            "response_trailer_mode",
        ],
        &[],
    ),
    rule(
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        &[
            "descriptors",
            "stage",
            "always_consume_default_token_bucket",
            "vh_rate_limits",
            "stat_prefix",
            "status",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "request_headers_to_add_when_not_enforced",
            "response_headers_to_add",
            "enable_x_ratelimit_headers",
            "rate_limited_as_resource_exhausted",
        ],
        &[],
    ),
    rule(
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        &[
            "domain",
            "stage",
            "request_type",
            "timeout",
            "failure_mode_deny",
            "rate_limit_service",
            "enable_x_ratelimit_headers",
            "disable_x_envoy_ratelimited_header",
            "rate_limited_status",
            "response_headers_to_add",
            "status_on_error",
            "rate_limited_as_resource_exhausted",
            "rate_limits",
        ],
        &["stat_prefix"],
    ),
    rule(
        "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
        &["vh_rate_limits", "rate_limits", "domain"],
        &[],
    ),
    rule(
        "envoy.extensions.filters.http.router.v3.Router",
        &["suppress_envoy_headers"],
        &["dynamic_stats", "start_child_span"],
    ),
    rule(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "codec_type",
            "stat_prefix",
            "rds",
            "route_config",
            "http_filters",
            "server_name",
            "server_header_transformation",
            "use_remote_address",
            "xff_num_trusted_hops",
            "generate_request_id",
            "normalize_path",
            "merge_slashes",
            "request_timeout",
            "stream_idle_timeout",
            "common_http_protocol_options",
            "max_request_headers_kb",
            "http_protocol_options",
            "http2_protocol_options",
            "preserve_external_request_id",
            "always_set_request_id_in_response",
            "skip_xff_append",
            "via",
            "upgrade_configs",
            "internal_address_config",
        ],
        &[
            "access_log",
            "tracing",
            "add_user_agent",
            "drain_timeout",
            "delayed_close_timeout",
        ],
    ),
    rule(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type", "enabled"],
        &[],
    ),
    rule(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config", "is_optional", "disabled"],
        &[],
    ),
    rule(
        "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
        &["config_source", "route_config_name"],
        &[],
    ),
    rule(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &["explicit_http_config", "common_http_protocol_options"],
        &[],
    ),
    rule(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
        &[],
    ),
    rule(
        "envoy.type.matcher.v3.RegexMatcher",
        &["google_re2", "regex"],
        &[],
    ),
    rule(
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "safe_regex",
            "contains",
            "ignore_case",
        ],
        &[],
    ),
    rule(
        "envoy.type.v3.TokenBucket",
        &["max_tokens", "tokens_per_fill", "fill_interval"],
        &[],
    ),
];

fn rule_for(name: &str) -> Option<&'static Rule> {
    RULES
        .binary_search_by(|r| r.message.cmp(name))
        .ok()
        .map(|i| &RULES[i])
}

/// Checks a resource (its full message name and wire bytes) against the table.
pub fn check(full_name: &str, bytes: &[u8]) -> Result<(), ConfigError> {
    let desc = sentinel_proto::message(full_name)
        .ok_or_else(|| ConfigError::new("", format!("unknown message type {full_name}")))?;
    let msg = DynamicMessage::decode(desc, bytes)
        .map_err(|e| ConfigError::new("", format!("cannot decode {full_name}: {e}")))?;
    walk(&msg, "")
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(msg: &DynamicMessage, path: &str) -> Result<(), ConfigError> {
    let desc = msg.descriptor();
    if desc.full_name() == "google.protobuf.Any" {
        return walk_any(msg, path);
    }
    let rule = rule_for(desc.full_name());
    for (field, value) in msg.fields() {
        let name = field.name();
        let here = join(path, name);
        if let Some(rule) = rule {
            if rule.ignored.contains(&name) {
                tracing::debug!(field = %here, "ignoring a field that does not change behaviour");
                continue;
            }
            if !rule.supported.contains(&name) {
                return Err(ConfigError::new(
                    here,
                    format!("field is not supported by Sentinel ({})", desc.full_name()),
                ));
            }
        }
        walk_value(value, &here)?;
    }
    Ok(())
}

fn walk_value(value: &Value, path: &str) -> Result<(), ConfigError> {
    match value {
        Value::Message(m) => walk(m, path),
        Value::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| walk_value(v, &format!("{path}[{i}]"))),
        Value::Map(entries) => entries
            .iter()
            .try_for_each(|(k, v)| walk_value(v, &format!("{path}[{k:?}]"))),
        _ => Ok(()),
    }
}

/// `typed_config` and friends: the payload is checked as its own type, so an extension we do
/// not know is refused (as Envoy refuses an unregistered one).
fn walk_any(msg: &DynamicMessage, path: &str) -> Result<(), ConfigError> {
    let type_url = msg
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let bytes = msg
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let name = type_url
        .rsplit_once('/')
        .map(|(_, n)| n)
        .unwrap_or(&type_url);
    let Some(desc) = sentinel_proto::message(name) else {
        return Err(ConfigError::new(path, format!("unknown type {type_url}")));
    };
    let inner = DynamicMessage::decode(desc, bytes.as_ref())
        .map_err(|e| ConfigError::new(path, format!("cannot decode {type_url}: {e}")))?;
    walk(&inner, path)
}

/// The table as Markdown, for docs/supported-fields.md.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| message | supported | ignored (harmless, logged at debug) |\n|---|---|---|\n",
    );
    for r in RULES {
        let list = |f: &[&str]| {
            if f.is_empty() {
                "—".to_string()
            } else {
                f.iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            r.message,
            list(r.supported),
            list(r.ignored)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_names_real_fields() {
        for pair in RULES.windows(2) {
            assert!(
                pair[0].message < pair[1].message,
                "{} out of order",
                pair[1].message
            );
        }
        for r in RULES {
            let desc = sentinel_proto::message(r.message)
                .unwrap_or_else(|| panic!("{} is not an Envoy message", r.message));
            for f in r.supported.iter().chain(r.ignored) {
                assert!(
                    desc.get_field_by_name(f).is_some(),
                    "{}.{f} does not exist",
                    r.message
                );
            }
        }
    }
}

#[cfg(test)]
mod docs {
    /// docs/supported-fields.md carries the table below its marker; `UPDATE_DOCS=1` rewrites it.
    #[test]
    fn docs_table_is_current() {
        const MARKER: &str =
            "<!-- generated from xds/src/config/fields.rs; do not edit below -->\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/supported-fields.md");
        let text = std::fs::read_to_string(path).expect("docs/supported-fields.md exists");
        let head = text.split(MARKER).next().unwrap_or_default();
        let want = format!("{head}{MARKER}{}", super::markdown_table());
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        } else {
            assert!(
                text == want,
                "docs/supported-fields.md is stale: run UPDATE_DOCS=1 cargo test -p sentinel-xds"
            );
        }
    }
}
