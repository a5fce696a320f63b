//! The admin listener: Envoy's endpoints that tools and probes rely on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use sentinel_xds::snapshot::{DumpEntry, TypeDump};
use sentinel_xds::SnapshotHandle;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::upstream::ClusterManager;

/// What the admin endpoints read.
pub struct AdminState {
    pub snapshots: SnapshotHandle,
    pub clusters: Arc<ClusterManager>,
    pub stats: Arc<crate::stats::Registry>,
    pub listeners: Arc<arc_swap::ArcSwap<Vec<(String, SocketAddr)>>>,
    pub bootstrap: Value,
    pub node: Value,
    pub options: Value,
    pub started: SystemTime,
    /// `/quitquitquit` asks main to exit.
    pub quit: mpsc::UnboundedSender<()>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn timestamp(t: SystemTime) -> String {
    crate::timefmt::rfc3339(t, crate::timefmt::Fraction::Millis)
}

fn resource_json(t: &TypeDump, e: &DumpEntry) -> Value {
    sentinel_proto::encoded_to_json(t.type_url, &e.resource).unwrap_or(Value::Null)
}

fn failure_json(t: &TypeDump) -> Option<Value> {
    t.last_failure.as_ref().map(|f| {
        json!({
            "details": f.details,
            "last_update_attempt": timestamp(f.when),
            "version_info": f.version_info,
        })
    })
}

fn config_dump(state: &AdminState, include_eds: bool) -> Value {
    let snap = state.snapshots.load();
    let d = &snap.dump;
    let mut listeners = json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "version_info": d.listeners.version_info,
        "static_listeners": d.listeners.entries.iter().filter(|e| e.is_static).map(|e| json!({
            "listener": resource_json(&d.listeners, e), "last_updated": timestamp(e.last_updated)
        })).collect::<Vec<_>>(),
        "dynamic_listeners": d.listeners.entries.iter().filter(|e| !e.is_static).map(|e| {
            let state = json!({"version_info": &*e.version_info, "listener": resource_json(&d.listeners, e), "last_updated": timestamp(e.last_updated)});
            if e.warming { json!({"name": &*e.name, "warming_state": state}) } else { json!({"name": &*e.name, "active_state": state}) }
        }).collect::<Vec<_>>(),
    });
    if let Some(f) = failure_json(&d.listeners) {
        listeners["error_state"] = f;
    }
    let mut clusters = json!({
        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "version_info": d.clusters.version_info,
        "static_clusters": d.clusters.entries.iter().filter(|e| e.is_static).map(|e| json!({
            "cluster": resource_json(&d.clusters, e), "last_updated": timestamp(e.last_updated)
        })).collect::<Vec<_>>(),
        "dynamic_active_clusters": d.clusters.entries.iter().filter(|e| !e.is_static && !e.warming).map(|e| json!({
            "version_info": &*e.version_info, "cluster": resource_json(&d.clusters, e), "last_updated": timestamp(e.last_updated)
        })).collect::<Vec<_>>(),
        "dynamic_warming_clusters": d.clusters.entries.iter().filter(|e| e.warming).map(|e| json!({
            "version_info": &*e.version_info, "cluster": resource_json(&d.clusters, e), "last_updated": timestamp(e.last_updated)
        })).collect::<Vec<_>>(),
    });
    if let Some(f) = failure_json(&d.clusters) {
        clusters["error_state"] = f;
    }
    let mut routes = json!({
        "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        "dynamic_route_configs": d.routes.entries.iter().map(|e| json!({
            "version_info": &*e.version_info, "route_config": resource_json(&d.routes, e), "last_updated": timestamp(e.last_updated)
        })).collect::<Vec<_>>(),
    });
    if let Some(f) = failure_json(&d.routes) {
        routes["error_state"] = f;
    }
    let mut configs = vec![
        json!({"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": state.bootstrap, "last_updated": timestamp(state.started)}),
        clusters,
        listeners,
        routes,
    ];
    if include_eds {
        let mut eds = json!({
            "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamic_endpoint_configs": d.endpoints.entries.iter().map(|e| json!({
                "version_info": &*e.version_info, "endpoint_config": resource_json(&d.endpoints, e), "last_updated": timestamp(e.last_updated)
            })).collect::<Vec<_>>(),
        });
        if let Some(f) = failure_json(&d.endpoints) {
            eds["error_state"] = f;
        }
        configs.push(eds);
    }
    json!({ "configs": configs })
}

fn clusters_text(state: &AdminState, as_json: bool) -> (String, &'static str) {
    let all = state.clusters.all();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    if as_json {
        let statuses: Vec<Value> = names
            .iter()
            .map(|n| {
                let c = &all[*n];
                json!({
                    "name": n,
                    "host_statuses": c.hosts().iter().map(|h| json!({
                        "address": {"socket_address": {"address": h.addr.ip().to_string(), "port_value": h.addr.port()}},
                        "health_status": {"eds_health_status": "HEALTHY"},
                        "weight": h.weight,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return (
            json!({"cluster_statuses": statuses}).to_string(),
            "application/json",
        );
    }
    let mut out = String::new();
    for n in names {
        let c = &all[n];
        out.push_str(&format!("{n}::observability_name::{n}\n"));
        for h in c.hosts() {
            let a = h.addr;
            out.push_str(&format!(
                "{n}::{a}::cx_active::0\n{n}::{a}::rq_active::{}\n",
                h.active.load(std::sync::atomic::Ordering::Relaxed)
            ));
            out.push_str(&format!(
                "{n}::{a}::health_flags::healthy\n{n}::{a}::weight::{}\n",
                h.weight
            ));
        }
    }
    (out, "text/plain; charset=UTF-8")
}

const INDEX: &str = "<html><head><title>Envoy Admin</title></head><body><table>\n\
<tr><td><a href='/clusters'>clusters</a></td><td>upstream cluster status</td></tr>\n\
<tr><td><a href='/config_dump'>config_dump</a></td><td>dump current Envoy configs</td></tr>\n\
<tr><td><a href='/listeners'>listeners</a></td><td>print listener info</td></tr>\n\
<tr><td>/quitquitquit (POST)</td><td>exit the server</td></tr>\n\
<tr><td><a href='/ready'>ready</a></td><td>print server state, return 200 if LIVE, otherwise return 503</td></tr>\n\
<tr><td><a href='/server_info'>server_info</a></td><td>print server version/status information</td></tr>\n\
<tr><td><a href='/stats'>stats</a></td><td>print server stats</td></tr>\n\
<tr><td><a href='/stats/prometheus'>stats/prometheus</a></td><td>print server stats in prometheus format</td></tr>\n\
</table></body></html>\n";

fn handle(state: &AdminState, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let as_json = query.split('&').any(|q| q == "format=json");
    let reply = |status: u16, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("cache-control", "no-cache, max-age=0")
            .header("x-content-type-options", "nosniff")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    let snap = state.snapshots.load();
    let live = snap.initialized;
    let state_name = if live { "LIVE" } else { "PRE_INITIALIZING" };
    match path {
        "/" => reply(200, "text/html; charset=UTF-8", INDEX.to_string()),
        "/ready" => reply(
            if live { 200 } else { 503 },
            "text/plain; charset=UTF-8",
            format!("{state_name}\n"),
        ),
        "/server_info" => {
            let uptime = state.started.elapsed().unwrap_or_default().as_secs();
            let body = json!({
                "version": format!("sentinel/{}/Clean/RELEASE/BoringSSL-compatible", env!("CARGO_PKG_VERSION")),
                "state": state_name,
                "hot_restart_version": "disabled",
                "command_line_options": state.options,
                "node": state.node,
                "uptime_current_epoch": format!("{uptime}s"),
                "uptime_all_epochs": format!("{uptime}s"),
            });
            reply(
                200,
                "application/json",
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        "/config_dump" => {
            let include_eds = query.split('&').any(|q| q == "include_eds");
            reply(
                200,
                "application/json",
                serde_json::to_string_pretty(&config_dump(state, include_eds)).unwrap_or_default(),
            )
        }
        "/clusters" => {
            let (body, ctype) = clusters_text(state, as_json);
            reply(200, ctype, body)
        }
        "/listeners" => {
            let list = state.listeners.load();
            if as_json {
                let statuses: Vec<Value> = list
                    .iter()
                    .map(|(n, a)| json!({"name": n, "local_address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}))
                    .collect();
                reply(
                    200,
                    "application/json",
                    json!({"listener_statuses": statuses}).to_string(),
                )
            } else {
                let body: String = list.iter().map(|(n, a)| format!("{n}::{a}\n")).collect();
                reply(200, "text/plain; charset=UTF-8", body)
            }
        }
        "/stats" => reply(200, "text/plain; charset=UTF-8", state.stats.text()),
        "/stats/prometheus" => reply(200, "text/plain; version=0.0.4", state.stats.prometheus()),
        "/quitquitquit" if req.method() == hyper::Method::POST => {
            let _ = state.quit.send(());
            reply(200, "text/plain; charset=UTF-8", "OK\n".into())
        }
        "/quitquitquit" => reply(
            405,
            "text/plain; charset=UTF-8",
            "This endpoint requires POST\n".into(),
        ),
        _ => reply(
            404,
            "text/plain; charset=UTF-8",
            format!("invalid path. admin commands are:\n{INDEX}"),
        ),
    }
}

/// Serves the admin endpoints until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &req)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(
            timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
