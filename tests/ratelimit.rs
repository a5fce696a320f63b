//! Global rate limiting through a rate limit service (RLS), end to end in process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sentinel_proto::pb::envoy::config::core::v3::HeaderValue;
use sentinel_proto::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::{rate_limit::Unit, Code, DescriptorStatus, RateLimit},
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
    RateLimitRequest, RateLimitResponse,
};
use test_support::*;

/// Denies descriptors whose generic_key is "deny"; records every request.
#[derive(Clone, Default)]
struct Rls(Arc<Mutex<Vec<RateLimitRequest>>>);

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        req: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let req = req.into_inner();
        let deny = req
            .descriptors
            .iter()
            .any(|d| d.entries.iter().any(|e| e.value == "deny"));
        self.0.lock().unwrap().push(req);
        let status = DescriptorStatus {
            code: if deny { Code::OverLimit } else { Code::Ok } as i32,
            current_limit: Some(RateLimit {
                requests_per_unit: 10,
                unit: Unit::Minute as i32,
                ..Default::default()
            }),
            limit_remaining: if deny { 0 } else { 7 },
            duration_until_reset: Some(sentinel_proto::pb::google::protobuf::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        };
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: status.code,
            statuses: vec![status],
            response_headers_to_add: vec![HeaderValue {
                key: "x-rls".into(),
                value: "yes".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
}

async fn rls() -> (SocketAddr, Rls) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = Rls::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(svc.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, svc)
}

/// An upstream `up` and the recording RLS as cluster `rls`: the clusters, and the RLS.
async fn upstream_and_rls() -> (String, Rls) {
    let (up, _) = scripted_upstream("up", |_| 200).await;
    let (rls_addr, rls) = rls().await;
    let clusters = format!(
        "[ {}, {} ]",
        static_cluster("up", &[up]),
        h2_cluster("rls", rls_addr)
    );
    (clusters, rls)
}

const ROUTES: &str = r#"[
  { match: { prefix: /deny }, route: { cluster: up, rate_limits: [ { actions: [ { generic_key: { descriptor_value: deny } } ] } ] } },
  { match: { prefix: /ok }, route: { cluster: up, rate_limits: [ { actions: [ { generic_key: { descriptor_value: ok } }, { request_headers: { header_name: x-user, descriptor_key: user, skip_if_absent: true } } ] } ] } },
  { match: { prefix: /free }, route: { cluster: up } }
]"#;

fn filter(cluster: &str, deny_on_failure: bool) -> String {
    format!(
        r#"http_filters: [ {{ name: envoy.filters.http.ratelimit, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit, domain: test, timeout: 1s, failure_mode_deny: {deny_on_failure}, enable_x_ratelimit_headers: DRAFT_VERSION_03, rate_limit_service: {{ grpc_service: {{ envoy_grpc: {{ cluster_name: {cluster} }} }}, transport_api_version: V3 }} }} }}, {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }} ]"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_is_429_and_descriptors_follow_the_actions() {
    let (clusters, rls) = upstream_and_rls().await;
    let (_p, addr) = static_proxy_with(&filter("rls", false), ROUTES, &clusters).await;
    let (s, h, _) = get(addr, "/deny").await.unwrap();
    assert_eq!(s, 429);
    assert!(h.contains("x-envoy-ratelimited: true"), "{h}");
    assert!(h.contains("x-rls: yes"), "{h}");
    assert!(h.contains("x-ratelimit-limit: 10, 10;w=60"), "{h}");
    let (s, h, b) = send(addr, "GET", "/ok", "").await.unwrap();
    assert_eq!((s, b.as_str()), (200, "up"));
    assert!(h.contains("x-ratelimit-remaining: 7"), "{h}");
    // No rate_limits on the route: no call at all.
    assert_eq!(get(addr, "/free").await.unwrap().0, 200);
    let seen = rls.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].domain, "test");
    // No x-user header, and skip_if_absent: the descriptor has the generic key only.
    let entries: Vec<(String, String)> = seen[1].descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(entries, vec![("generic_key".to_string(), "ok".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_mode_follows_failure_mode_deny() {
    let (up, _) = scripted_upstream("up", |_| 200).await;
    let dead = dead_port();
    let clusters = format!(
        "[ {}, {} ]",
        static_cluster("up", &[up]),
        h2_cluster("rls", dead)
    );
    let (_p, open) = static_proxy_with(&filter("rls", false), ROUTES, &clusters).await;
    assert_eq!(
        get(open, "/deny").await.unwrap().0,
        200,
        "fail open by default"
    );
    let (_q, closed) = static_proxy_with(&filter("rls", true), ROUTES, &clusters).await;
    assert_eq!(
        get(closed, "/deny").await.unwrap().0,
        500,
        "failure_mode_deny answers 500"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_config_picks_rules_domain_and_hits_addend() {
    let (clusters, rls) = upstream_and_rls().await;
    let per_route = |body: &str| {
        format!(
            r#"typed_per_filter_config: {{ envoy.filters.http.ratelimit: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute, {body} }} }}"#
        )
    };
    let routes = format!(
        r#"[
  {{ match: {{ prefix: /hits }}, route: {{ cluster: up, rate_limits: [ {{ actions: [ {{ generic_key: {{ descriptor_value: legacy }} }} ] }} ] }},
     {} }},
  {{ match: {{ prefix: /header }}, route: {{ cluster: up }},
     {} }},
  {{ match: {{ prefix: /off }}, route: {{ cluster: up, rate_limits: [ {{ actions: [ {{ generic_key: {{ descriptor_value: deny }} }} ] }} ] }},
     typed_per_filter_config: {{ envoy.filters.http.ratelimit: {{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }} }} }}
]"#,
        per_route("domain: other, rate_limits: [ { actions: [ { generic_key: { descriptor_value: hits } } ], hits_addend: { number: 3 } } ]"),
        per_route(r#"rate_limits: [ { actions: [ { generic_key: { descriptor_value: h } } ], hits_addend: { format: "%REQ(x-hits)%" } } ]"#),
    );
    let (_p, addr) = static_proxy_with(&filter("rls", false), &routes, &clusters).await;
    let (s, _, _) = get(addr, "/hits").await.unwrap();
    assert_eq!(s, 200);
    let (s, _, _) = send_with(addr, "GET", "/header", &[("x-hits", "7")], "")
        .await
        .unwrap();
    assert_eq!(s, 200);
    // Not a number: the descriptor is dropped, and with it the call.
    let (s, _, _) = send_with(addr, "GET", "/header", &[("x-hits", "many")], "")
        .await
        .unwrap();
    assert_eq!(s, 200);
    // The filter disabled on the route: no call, though its limit would deny.
    assert_eq!(get(addr, "/off").await.unwrap().0, 200);
    let seen = rls.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The per-route rules replace the route's, in the per-route domain.
    assert_eq!(seen[0].domain, "other");
    assert_eq!(seen[0].descriptors.len(), 1);
    assert_eq!(seen[0].descriptors[0].entries[0].value, "hits");
    assert_eq!(
        seen[0].descriptors[0].hits_addend.as_ref().map(|v| v.value),
        Some(3)
    );
    assert_eq!(seen[1].domain, "test");
    assert_eq!(
        seen[1].descriptors[0].hits_addend.as_ref().map(|v| v.value),
        Some(7)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filters_own_rate_limits_replace_the_routes() {
    let (clusters, rls) = upstream_and_rls().await;
    let own = r#"rate_limits: [ { actions: [ { generic_key: { descriptor_value: filter-level } } ], hits_addend: { number: 5 } } ], "#;
    let filters = filter("rls", false).replace("domain: test, ", &format!("domain: test, {own}"));
    let (_p, addr) = static_proxy_with(&filters, ROUTES, &clusters).await;
    // /deny's own rule would be denied; the filter's rule is what is sent, on every route.
    assert_eq!(get(addr, "/deny").await.unwrap().0, 200);
    assert_eq!(get(addr, "/free").await.unwrap().0, 200);
    let seen = rls.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for r in &seen {
        assert_eq!(r.descriptors.len(), 1);
        assert_eq!(r.descriptors[0].entries[0].value, "filter-level");
        assert_eq!(
            r.descriptors[0].hits_addend.as_ref().map(|v| v.value),
            Some(5)
        );
    }
}
