//! `envoy.filters.http.ratelimit`: descriptors from the route's `rate_limits`, one
//! `ShouldRateLimit` call to the rate limit service, and Envoy's answer to its verdict.

use std::net::IpAddr;

use pingora_http::RequestHeader;
use sentinel_proto::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use sentinel_proto::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::{rate_limit::Unit, Code},
    rate_limit_service_client::RateLimitServiceClient,
    RateLimitRequest, RateLimitResponse,
};
use sentinel_proto::pb::google::protobuf::UInt64Value;
use sentinel_xds::config::ratelimit::{
    Action, HitsAddend, RateLimitFilter, RateLimitRule, MAX_HITS_ADDEND,
};

use crate::filters::FilterReply;
use crate::upstream::ClusterManager;

/// What the descriptors are made from.
pub(crate) struct DescriptorInput<'a> {
    pub req: &'a RequestHeader,
    pub source_cluster: &'a str,
    pub destination_cluster: Option<&'a str>,
    pub remote: Option<IpAddr>,
}

fn mask(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - v4 as u32).unwrap_or(0);
            format!("{}/{v4}", std::net::Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - v6 as u32).unwrap_or(0);
            format!("{}/{v6}", std::net::Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// One descriptor from one rule; None when an action cannot produce its entry.
fn descriptor(rule: &RateLimitRule, input: &DescriptorInput<'_>) -> Option<RateLimitDescriptor> {
    let mut entries = Vec::with_capacity(rule.actions.len());
    let entry = |key: &str, value: String| Entry {
        key: key.to_string(),
        value,
    };
    for action in &rule.actions {
        match action {
            Action::SourceCluster => {
                entries.push(entry("source_cluster", input.source_cluster.to_string()))
            }
            Action::DestinationCluster => entries.push(entry(
                "destination_cluster",
                input.destination_cluster?.to_string(),
            )),
            Action::RequestHeaders {
                header,
                key,
                skip_if_absent,
            } => match input.req.headers.get(header).and_then(|v| v.to_str().ok()) {
                Some(v) => entries.push(entry(key, v.to_string())),
                None if *skip_if_absent => {}
                None => return None,
            },
            Action::QueryParameters {
                name,
                key,
                skip_if_absent,
            } => {
                let query = input.req.uri.query().unwrap_or("");
                let value = query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| v.to_string())
                });
                match value {
                    Some(v) => entries.push(entry(key, v)),
                    None if *skip_if_absent => {}
                    None => return None,
                }
            }
            Action::RemoteAddress => {
                entries.push(entry("remote_address", input.remote?.to_string()))
            }
            Action::MaskedRemoteAddress { v4, v6 } => entries.push(entry(
                "masked_remote_address",
                mask(input.remote?, *v4, *v6),
            )),
            Action::GenericKey { key, value } => entries.push(entry(key, value.clone())),
            Action::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                let all = headers.iter().all(|m| {
                    let values = input
                        .req
                        .headers
                        .get_all(m.name.as_str())
                        .iter()
                        .filter_map(|v| v.to_str().ok());
                    m.matches(values)
                });
                if all != *expect_match {
                    return None;
                }
                entries.push(entry(key, value.clone()));
            }
        }
    }
    let hits_addend = match &rule.hits_addend {
        None => None,
        Some(HitsAddend::Number(n)) => Some(*n),
        // A value that is not a number up to the maximum drops the descriptor, as in Envoy.
        Some(HitsAddend::Header(name)) => Some(
            input
                .req
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n <= MAX_HITS_ADDEND)?,
        ),
    };
    (!entries.is_empty()).then_some(RateLimitDescriptor {
        entries,
        hits_addend: hits_addend.map(|value| UInt64Value { value }),
        ..Default::default()
    })
}

/// The descriptors of every rule at the filter's stage.
pub(crate) fn descriptors<'a>(
    stage: u32,
    rules: impl Iterator<Item = &'a RateLimitRule>,
    input: &DescriptorInput<'_>,
) -> Vec<RateLimitDescriptor> {
    rules
        .filter(|r| r.stage == stage)
        .filter_map(|r| descriptor(r, input))
        .collect()
}

fn window_seconds(unit: i32) -> u64 {
    match Unit::try_from(unit) {
        Ok(Unit::Second) => 1,
        Ok(Unit::Minute) => 60,
        Ok(Unit::Hour) => 3600,
        Ok(Unit::Day) => 86400,
        Ok(Unit::Week) => 604_800,
        Ok(Unit::Month) => 2_592_000,
        Ok(Unit::Year) => 31_536_000,
        _ => 0,
    }
}

/// Envoy's `x-ratelimit-*` (draft 03) from the descriptor statuses.
fn x_ratelimit_headers(resp: &RateLimitResponse) -> Vec<(http::HeaderName, String)> {
    let limited: Vec<_> = resp
        .statuses
        .iter()
        .filter(|s| s.current_limit.is_some())
        .collect();
    let Some(min) = limited.iter().min_by_key(|s| s.limit_remaining) else {
        return vec![];
    };
    let limit = min.current_limit.as_ref().expect("filtered");
    let mut value = limit.requests_per_unit.to_string();
    for s in &limited {
        let l = s.current_limit.as_ref().expect("filtered");
        value.push_str(&format!(
            ", {};w={}",
            l.requests_per_unit,
            window_seconds(l.unit)
        ));
        if !l.name.is_empty() {
            value.push_str(&format!(";name=\"{}\"", l.name));
        }
    }
    let reset = min
        .duration_until_reset
        .as_ref()
        .map_or(0, |d| d.seconds.max(0));
    vec![
        (http::HeaderName::from_static("x-ratelimit-limit"), value),
        (
            http::HeaderName::from_static("x-ratelimit-remaining"),
            min.limit_remaining.to_string(),
        ),
        (
            http::HeaderName::from_static("x-ratelimit-reset"),
            reset.to_string(),
        ),
    ]
}

/// What the filter decided.
pub(crate) enum Verdict {
    /// Continue; these headers go on the request (upstream) and on the response.
    Allow {
        request_headers: Vec<(String, String)>,
        response_headers: Vec<(http::HeaderName, String)>,
    },
    Deny(FilterReply),
}

fn headers_of(
    opts: &[sentinel_proto::pb::envoy::config::core::v3::HeaderValue],
) -> Vec<(String, String)> {
    opts.iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect()
}

/// Asks the rate limit service about `descriptors`, and applies Envoy's rules to the answer.
pub(crate) async fn check(
    cfg: &RateLimitFilter,
    domain: &str,
    clusters: &ClusterManager,
    descriptors: Vec<RateLimitDescriptor>,
) -> Verdict {
    let request = RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    };
    let call = async {
        let host = clusters
            .get(&cfg.cluster)
            .and_then(|c| c.pick())
            .ok_or("no healthy rate limit service host")?;
        let mut client = RateLimitServiceClient::new(host.grpc_channel());
        client
            .should_rate_limit(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|_| "rate limit service error")
    };
    let result = match cfg.timeout {
        Some(t) => tokio::time::timeout(t, call)
            .await
            .unwrap_or(Err("rate limit service timeout")),
        None => call.await,
    };
    let resp = match result {
        Ok(r) => r,
        Err(why) => {
            tracing::debug!("rate limit check failed: {why}");
            if cfg.failure_mode_deny {
                return Verdict::Deny(FilterReply {
                    status: cfg.status_on_error,
                    body: String::new(),
                    headers: vec![],
                    grpc_status: None,
                });
            }
            return Verdict::Allow {
                request_headers: vec![],
                response_headers: vec![],
            };
        }
    };
    let mut response_headers: Vec<(http::HeaderName, String)> =
        headers_of(&resp.response_headers_to_add)
            .into_iter()
            .filter_map(|(k, v)| http::HeaderName::try_from(k).ok().map(|k| (k, v)))
            .collect();
    if cfg.x_ratelimit_headers {
        response_headers.extend(x_ratelimit_headers(&resp));
    }
    if resp.overall_code == Code::OverLimit as i32 {
        if cfg.x_envoy_ratelimited_header {
            response_headers.push((
                http::HeaderName::from_static("x-envoy-ratelimited"),
                "true".into(),
            ));
        }
        for add in &cfg.response_headers {
            response_headers.push((
                add.name.clone(),
                crate::headers::render(&add.value, &crate::headers::Vars::empty()),
            ));
        }
        return Verdict::Deny(FilterReply {
            status: cfg.rate_limited_status,
            body: String::from_utf8_lossy(&resp.raw_body).into_owned(),
            headers: response_headers,
            grpc_status: cfg.as_resource_exhausted.then_some(8),
        });
    }
    Verdict::Allow {
        request_headers: headers_of(&resp.request_headers_to_add),
        response_headers,
    }
}
