//! `request_mirror_policies`: fire-and-forget shadow copies of a request.
//!
//! The copy goes to a host of the mirror cluster with `-shadow` appended to its host, as
//! Envoy does. Its body is fed chunk by chunk as the original's body is read; the shadow's
//! answer, or failure, never affects the original request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use pingora_http::RequestHeader;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::upstream::ClusterRuntime;

/// Starts a shadow request; the returned sender takes the body (drop it to end the body).
pub fn start(cluster: Arc<ClusterRuntime>, req: &RequestHeader) -> Option<mpsc::Sender<Bytes>> {
    let host = cluster.pick()?;
    let mut builder = http::Request::builder().method(req.method.clone()).uri(
        req.uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
    );
    for (name, value) in req.headers.iter() {
        if name != http::header::HOST {
            builder = builder.header(name, value);
        }
    }
    builder = builder.header(
        http::header::HOST,
        shadow_host(&crate::request::host_of(req)),
    );
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let request = builder.body(body).ok()?;
    let connect_timeout = cluster.config.connect_timeout;
    tokio::spawn(async move {
        let outcome = async {
            let stream =
                tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(host.addr))
                    .await
                    .map_err(|_| "connect timeout".to_string())?
                    .map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(resp.status())
        }
        .await;
        match outcome {
            Ok(status) => tracing::debug!(upstream = %host.addr, %status, "shadow request done"),
            Err(e) => tracing::debug!(upstream = %host.addr, "shadow request failed: {e}"),
        }
    });
    Some(tx)
}

/// `foo.com:8080` becomes `foo.com-shadow:8080`.
fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shadow_host_keeps_the_port() {
        assert_eq!(super::shadow_host("a.com:80"), "a.com-shadow:80");
        assert_eq!(super::shadow_host("a.com"), "a.com-shadow");
    }
}
