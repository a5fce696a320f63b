//! A tiny HTTP upstream for the README demo and smoke tests: it answers every request with
//! 200 and a body naming itself and echoing the method and path, so a `curl` through the
//! proxy shows at a glance that the request crossed it.

use hyper::StatusCode;
use tokio::net::TcpListener;

use crate::http_api::{reply, serve_http};

/// Serves the demo upstream on `listener` until the task is dropped or aborted. The body is
/// `"<name>: <METHOD> <path-and-query>\n"`.
pub async fn serve_demo_upstream(listener: TcpListener, name: String) {
    serve_http(listener, move |request| {
        let body = format!(
            "{name}: {} {}\n",
            request.method(),
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        async move { reply(StatusCode::OK, "text/plain", body) }
    })
    .await
}
