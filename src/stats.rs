//! Envoy's stats, under Envoy's names, for `/stats` and `/stats/prometheus`.
//!
//! Each scope (a connection manager's `stat_prefix`, a cluster, a listener) is a struct of
//! atomics, handed out once when config is built and then bumped on the request path without
//! any lookup or lock. The registry's map is touched only at config time and by the admin.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Response-code classes 1xx..5xx, as `*_rq_1xx` .. `*_rq_5xx`.
#[derive(Default)]
pub struct Classes([Counter; 5]);

impl Classes {
    pub fn count(&self, status: u16) {
        if let Some(c) = self.0.get((status / 100).wrapping_sub(1) as usize) {
            c.inc();
        }
    }
}

/// `http.<stat_prefix>.*`
#[derive(Default)]
pub struct HttpStats {
    pub downstream_rq_total: Counter,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_xx: Classes,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_cx_total: Counter,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_redirect: Counter,
    pub rq_direct_response: Counter,
}

/// `http.<stat_prefix>.ext_proc.<filter stat_prefix>.*`: the counters Sentinel keeps, under
/// Envoy 1.40's names (checked against its `/stats`). Envoy's others
/// (`clear_route_cache_*`, `override_message_timeout_*`, `http_not_ok_resp_received`,
/// `server_half_closed`, `spurious_msgs_received`) are not kept.
#[derive(Default)]
pub struct ExtProcStats {
    pub streams_started: Counter,
    pub streams_closed: Counter,
    pub streams_failed: Counter,
    pub stream_msgs_sent: Counter,
    pub stream_msgs_received: Counter,
    pub message_timeouts: Counter,
    pub failure_mode_allowed: Counter,
    pub immediate_responses_sent: Counter,
    pub rejected_header_mutations: Counter,
}

impl ExtProcStats {
    fn counters(&self) -> [(&'static str, &Counter); 9] {
        [
            ("failure_mode_allowed", &self.failure_mode_allowed),
            ("immediate_responses_sent", &self.immediate_responses_sent),
            ("message_timeouts", &self.message_timeouts),
            ("rejected_header_mutations", &self.rejected_header_mutations),
            ("stream_msgs_received", &self.stream_msgs_received),
            ("stream_msgs_sent", &self.stream_msgs_sent),
            ("streams_closed", &self.streams_closed),
            ("streams_failed", &self.streams_failed),
            ("streams_started", &self.streams_started),
        ]
    }
}

/// `cluster.<name>.*`
#[derive(Default)]
pub struct ClusterStats {
    pub upstream_rq_total: Counter,
    pub upstream_rq_completed: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_xx: Classes,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_rq_pending_failure_eject: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub membership_total: Gauge,
}

/// `listener.<address>.*`
#[derive(Default)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub no_filter_chain_match: Counter,
}

#[derive(Default)]
pub struct Registry {
    http: Mutex<BTreeMap<String, Arc<HttpStats>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    /// By (connection manager prefix, filter prefix).
    ext_proc: Mutex<BTreeMap<(String, String), Arc<ExtProcStats>>>,
}

fn scope<T: Default>(map: &Mutex<BTreeMap<String, Arc<T>>>, name: &str) -> Arc<T> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// One stat line: its Envoy name, its Prometheus name and labels, and its value.
struct Line {
    name: String,
    prom: String,
    labels: Vec<(&'static str, String)>,
    value: i64,
}

impl Registry {
    pub fn http(&self, prefix: &str) -> Arc<HttpStats> {
        scope(&self.http, prefix)
    }
    /// An ext_proc filter's stats: `http.<hcm_prefix>.ext_proc.<filter_prefix>.*`, or
    /// `http.<hcm_prefix>.ext_proc.*` without a filter prefix.
    pub fn ext_proc(&self, hcm_prefix: &str, filter_prefix: &str) -> Arc<ExtProcStats> {
        self.ext_proc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((hcm_prefix.to_string(), filter_prefix.to_string()))
            .or_default()
            .clone()
    }
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        scope(&self.clusters, name)
    }
    /// Envoy names listener stats by address, `127.0.0.1_10000`.
    pub fn listener(&self, addr: std::net::SocketAddr) -> Arc<ListenerStats> {
        scope(&self.listeners, &format!("{}_{}", addr.ip(), addr.port()))
    }

    fn lines(&self) -> Vec<Line> {
        let mut out = Vec::new();
        let mut push = |family: &'static str,
                        label: &'static str,
                        scope: &str,
                        stat: &'static str,
                        value: i64| {
            out.push(Line {
                name: format!("{family}.{scope}.{stat}"),
                prom: stat.into(),
                labels: vec![(label, scope.to_string())],
                value,
            });
        };
        // `downstream_rq_2xx` is `envoy_http_downstream_rq_xx{envoy_response_code_class="2"}`.
        let mut classes: Vec<Line> = Vec::new();
        let mut push_classes = |family: &'static str,
                                label: &'static str,
                                scope: &str,
                                stat: &'static str,
                                c: &Classes| {
            for (i, counter) in c.0.iter().enumerate() {
                classes.push(Line {
                    name: format!("{family}.{scope}.{stat}_{}xx", i + 1),
                    prom: if stat == "downstream_rq" {
                        "downstream_rq_xx".into()
                    } else {
                        "upstream_rq_xx".into()
                    },
                    labels: vec![
                        ("envoy_response_code_class", (i + 1).to_string()),
                        (label, scope.to_string()),
                    ],
                    value: counter.get() as i64,
                });
            }
        };
        for (p, s) in self.http.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let l = "envoy_http_conn_manager_prefix";
            for (stat, value) in [
                ("downstream_rq_total", s.downstream_rq_total.get() as i64),
                (
                    "downstream_rq_completed",
                    s.downstream_rq_completed.get() as i64,
                ),
                ("downstream_rq_active", s.downstream_rq_active.get()),
                (
                    "downstream_rq_http1_total",
                    s.downstream_rq_http1_total.get() as i64,
                ),
                (
                    "downstream_rq_http2_total",
                    s.downstream_rq_http2_total.get() as i64,
                ),
                ("downstream_cx_total", s.downstream_cx_total.get() as i64),
                (
                    "downstream_cx_http1_total",
                    s.downstream_cx_http1_total.get() as i64,
                ),
                (
                    "downstream_cx_http2_total",
                    s.downstream_cx_http2_total.get() as i64,
                ),
                (
                    "downstream_cx_protocol_error",
                    s.downstream_cx_protocol_error.get() as i64,
                ),
                ("no_route", s.no_route.get() as i64),
                ("no_cluster", s.no_cluster.get() as i64),
                ("rq_redirect", s.rq_redirect.get() as i64),
                ("rq_direct_response", s.rq_direct_response.get() as i64),
            ] {
                push("http", l, p, stat, value);
            }
            push_classes("http", l, p, "downstream_rq", &s.downstream_rq_xx);
        }
        for (c, s) in self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let l = "envoy_cluster_name";
            for (stat, value) in [
                ("upstream_rq_total", s.upstream_rq_total.get() as i64),
                (
                    "upstream_rq_completed",
                    s.upstream_rq_completed.get() as i64,
                ),
                ("upstream_rq_active", s.upstream_rq_active.get()),
                ("upstream_rq_timeout", s.upstream_rq_timeout.get() as i64),
                (
                    "upstream_rq_per_try_timeout",
                    s.upstream_rq_per_try_timeout.get() as i64,
                ),
                ("upstream_rq_retry", s.upstream_rq_retry.get() as i64),
                (
                    "upstream_cx_connect_fail",
                    s.upstream_cx_connect_fail.get() as i64,
                ),
                (
                    "upstream_cx_none_healthy",
                    s.upstream_cx_none_healthy.get() as i64,
                ),
                ("membership_total", s.membership_total.get()),
            ] {
                push("cluster", l, c, stat, value);
            }
            push_classes("cluster", l, c, "upstream_rq", &s.upstream_rq_xx);
        }
        for (a, s) in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let l = "envoy_listener_address";
            for (stat, value) in [
                ("downstream_cx_total", s.downstream_cx_total.get() as i64),
                ("downstream_cx_active", s.downstream_cx_active.get()),
                (
                    "no_filter_chain_match",
                    s.no_filter_chain_match.get() as i64,
                ),
            ] {
                push("listener", l, a, stat, value);
            }
        }
        for ((hcm, filter), s) in self
            .ext_proc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // Envoy keeps the filter's prefix in the name, also in Prometheus.
            let scope = match filter.as_str() {
                "" => "ext_proc".to_string(),
                f => format!("ext_proc.{f}"),
            };
            for (stat, c) in s.counters() {
                out.push(Line {
                    name: format!("http.{hcm}.{scope}.{stat}"),
                    prom: format!("{}_{stat}", scope.replace('.', "_")),
                    labels: vec![("envoy_http_conn_manager_prefix", hcm.clone())],
                    value: c.get() as i64,
                });
            }
        }
        out.extend(classes);
        out
    }

    /// `/stats`: `name: value` lines, sorted by name.
    pub fn text(&self) -> String {
        let mut lines = self.lines();
        lines.sort_by(|a, b| a.name.cmp(&b.name));
        lines.iter().fold(String::new(), |mut out, l| {
            let _ = writeln!(out, "{}: {}", l.name, l.value);
            out
        })
    }

    /// `/stats/prometheus`: Envoy's names with its tags as labels.
    pub fn prometheus(&self) -> String {
        let mut families: BTreeMap<String, Vec<Line>> = BTreeMap::new();
        for l in self.lines() {
            let family = format!(
                "envoy_{}_{}",
                l.name.split('.').next().unwrap_or_default(),
                l.prom
            );
            families.entry(family).or_default().push(l);
        }
        let mut out = String::new();
        for (family, lines) in families {
            let kind = if family.ends_with("_active") || family.ends_with("membership_total") {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for l in lines {
                let labels: Vec<String> = l
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let _ = writeln!(out, "{family}{{{}}} {}", labels.join(","), l.value);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_envoy() {
        let r = Registry::default();
        let h = r.http("ingress");
        h.downstream_rq_total.inc();
        h.downstream_rq_xx.count(503);
        r.cluster("svc").upstream_rq_total.inc();
        r.listener("127.0.0.1:10000".parse().unwrap())
            .downstream_cx_total
            .inc();
        let text = r.text();
        assert!(
            text.contains("http.ingress.downstream_rq_total: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("http.ingress.downstream_rq_5xx: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cluster.svc.upstream_rq_total: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("listener.127.0.0.1_10000.downstream_cx_total: 1\n"),
            "{text}"
        );
        r.ext_proc("ingress", "myproc").streams_started.inc();
        let text = r.text();
        assert!(
            text.contains("http.ingress.ext_proc.myproc.streams_started: 1\n"),
            "{text}"
        );
        let prom = r.prometheus();
        assert!(
            prom.contains("envoy_http_ext_proc_myproc_streams_started{envoy_http_conn_manager_prefix=\"ingress\"} 1"),
            "{prom}"
        );
        assert!(
            prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"svc\"} 1"),
            "{prom}"
        );
        assert!(
            prom.contains("envoy_http_downstream_rq_xx{envoy_response_code_class=\"5\",envoy_http_conn_manager_prefix=\"ingress\"} 1"),
            "{prom}"
        );
    }
}
