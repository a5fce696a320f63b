//! A small HTTP/1 API to drive the control plane from scripts and other languages
//! (the conformance runner, the README demo), mirroring the [`Controller`] methods:
//!
//! | method and path            | what                                                         |
//! |----------------------------|--------------------------------------------------------------|
//! | `GET /healthz`             | `ok`                                                         |
//! | `GET /snapshots`           | `[{node_id, version, resources}]`                            |
//! | `GET /snapshot/<node>`     | the node's snapshot in the file format (404 when none)        |
//! | `POST /snapshot/<node>`    | body = snapshot YAML/JSON (or a config_dump): set and push    |
//! | `DELETE /snapshot/<node>`  | remove the node's snapshot                                   |
//! | `GET /events[?since=N]`    | JSON list of [`XdsEvent`](crate::XdsEvent)s (ACK/NACK/...)    |
//! | `DELETE /events`           | forget recorded events                                       |

use std::{convert::Infallible, future::Future};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::{Controller, Snapshot};

/// Largest snapshot body accepted.
const MAX_BODY: usize = 64 << 20;

/// Serves the HTTP API on `listener` until the task is dropped or aborted.
pub async fn serve_http_api(listener: TcpListener, controller: Controller) {
    serve_http(listener, move |request| {
        let controller = controller.clone();
        async move { handle(request, &controller).await }
    })
    .await
}

/// Accepts HTTP/1 connections forever, one task each, answering with `handler`.
pub(crate) async fn serve_http<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// A response with a body and content type.
pub(crate) fn reply(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn json_reply(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_reply(status, &json!({ "error": message.to_string() }))
}

async fn handle(request: Request<Incoming>, controller: &Controller) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    tracing::debug!(%method, %path, "HTTP API request");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["snapshots"]) => {
            let list: Vec<_> = controller
                .snapshots()
                .into_iter()
                .map(|(node, s)| json!({"node_id": node, "version": s.version(), "resources": s.len()}))
                .collect();
            json_reply(StatusCode::OK, &json!(list))
        }
        (&Method::GET, ["snapshot", node]) => match controller.snapshot(node) {
            Some(snapshot) => json_reply(StatusCode::OK, &snapshot.to_json()),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no snapshot for node {node:?}"),
            ),
        },
        (&Method::POST | &Method::PUT, ["snapshot", node]) => {
            let node = node.to_string();
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            match Snapshot::from_text(&body) {
                Ok(snapshot) => {
                    let summary = json!({"node_id": node, "version": snapshot.version(), "resources": snapshot.len()});
                    controller.set_snapshot(&node, snapshot);
                    json_reply(StatusCode::OK, &summary)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::DELETE, ["snapshot", node]) => match controller.remove_snapshot(node) {
            Some(_) => json_reply(StatusCode::OK, &json!({"removed": node})),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no snapshot for node {node:?}"),
            ),
        },
        (&Method::GET, ["events"]) => {
            let since = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("since="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            json_reply(StatusCode::OK, &json!(controller.events_since(since)))
        }
        (&Method::DELETE, ["events"]) => {
            controller.clear_events();
            json_reply(StatusCode::OK, &json!({"cleared": true}))
        }
        (_, ["healthz" | "snapshots" | "events"] | ["snapshot", _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<String, Response<Full<Bytes>>> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading body: {e}")))?
        .to_bytes();
    String::from_utf8(bytes.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "body is not UTF-8"))
}
