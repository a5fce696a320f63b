//! In-process upstreams: hyper servers (HTTP/1.1 and h2c) that answer with `x-upstream: NAME`
//! and a JSON body describing the request they saw, unless the case asks for another
//! behaviour (status, delay, headers, fixed body, close, reset, refuse).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::case::UpstreamSpec;

/// The longest a `close`/`reset` upstream reads before giving up on the request head.
const READ_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// A running upstream; dropping it stops accepting.
pub struct Upstream {
    pub port: u16,
    task: Option<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts an upstream on a free loopback port. A `refuse` upstream only reserves a port
/// number: it binds one and releases it at once, so connections to it are refused.
pub async fn start(name: &str, spec: &UpstreamSpec) -> Result<Upstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    if spec.refuse {
        drop(listener);
        return Ok(Upstream { port, task: None });
    }
    if let Some(script) = &spec.ext_proc {
        let task = crate::ext_proc::serve(listener, script.clone());
        return Ok(Upstream {
            port,
            task: Some(task),
        });
    }
    let name = name.to_string();
    let spec = spec.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let (name, spec) = (name.clone(), spec.clone());
            tokio::spawn(serve_connection(stream, name, spec));
        }
    });
    Ok(Upstream {
        port,
        task: Some(task),
    })
}

async fn serve_connection(mut stream: TcpStream, name: String, spec: UpstreamSpec) {
    if spec.websocket {
        return serve_upgrade(stream, name).await;
    }
    if spec.close || spec.reset {
        read_head(&mut stream).await;
        if spec.reset {
            let _ = stream.set_zero_linger();
        }
        drop(stream);
        return;
    }
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (name, spec) = (name.clone(), spec.clone());
        async move { Ok::<_, Infallible>(answer(req, &name, &spec).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Reads until the end of a request head (or a timeout, or EOF).
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(READ_HEAD_TIMEOUT, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 64 * 1024 {
                return;
            }
        }
    })
    .await;
    buf
}

/// A `websocket` upstream: it accepts any HTTP/1.1 upgrade with 101 (no WebSocket handshake
/// check, as a proxy does not make one), says what it saw in `x-seen-*` headers, then echoes
/// every byte back. A request that is not an upgrade gets 200 `not an upgrade`.
async fn serve_upgrade(mut stream: TcpStream, name: String) {
    use tokio::io::AsyncWriteExt;
    let head = read_head(&mut stream).await;
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = req.parse(&head) else {
        return;
    };
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(n))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let seen = format!(
        "x-upstream: {name}\r\nx-seen-path: {}\r\nx-seen-host: {}\r\nx-seen-connection: {}\r\n",
        req.path.unwrap_or_default(),
        header("host").unwrap_or_default(),
        header("connection").unwrap_or_default(),
    );
    let Some(upgrade) = header("upgrade") else {
        let answer = format!(
            "HTTP/1.1 200 OK\r\n{seen}content-length: 14\r\nconnection: close\r\n\r\nnot an upgrade"
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        return;
    };
    let answer =
        format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: {upgrade}\r\nconnection: upgrade\r\n{seen}\r\n");
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    // Bytes that came with the head belong to the tunnel already.
    if stream.write_all(&head[len..]).await.is_err() {
        return;
    }
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

async fn answer(
    req: hyper::Request<Incoming>,
    name: &str,
    spec: &UpstreamSpec,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = req.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(b) => {
            let trailers = b.trailers().cloned().unwrap_or_default();
            (b.to_bytes(), trailers)
        }
        Err(_) => Default::default(),
    };
    if let Some(ms) = spec.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Every field line, in order, per (lowercase) name.
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers.entry(k.as_str().to_string()).or_default().push(v);
    }
    let mut seen_trailers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &trailers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        seen_trailers
            .entry(k.as_str().to_string())
            .or_default()
            .push(v);
    }
    let host = headers
        .get("host")
        .and_then(|lines| lines.first().cloned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let echo = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": path,
        "host": host,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "trailers": seen_trailers,
    });
    let out_body = match (&spec.body, spec.body_bytes) {
        (Some(b), _) => b.clone(),
        (None, Some(n)) => "x".repeat(n.min(crate::case::MAX_BODY_BYTES)),
        (None, None) => echo.to_string(),
    };
    let mut resp = hyper::Response::builder()
        .status(spec.status.unwrap_or(200))
        .header("x-upstream", name);
    if spec.body.is_none() && spec.body_bytes.is_none() && spec.chunks.is_empty() {
        resp = resp.header("content-type", "application/json");
    }
    for (k, v) in &spec.headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let body = if spec.chunks.is_empty() && spec.trailers.is_empty() {
        Full::new(Bytes::from(out_body)).boxed()
    } else {
        framed(spec, out_body)
    };
    resp.body(body).unwrap_or_else(|e| {
        let text = Bytes::from(format!("bad upstream spec: {e}"));
        let mut r = hyper::Response::new(Full::new(text).boxed());
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// A body in frames, the headers first: the spec's `chunks` (else the whole body), each after
/// `chunk_delay_ms` (chunked on HTTP/1, one DATA frame each on HTTP/2), then its trailers
/// after `trailers_delay_ms`.
fn framed(spec: &UpstreamSpec, whole: String) -> BoxBody<Bytes, Infallible> {
    let (data, delay) = match spec.chunks.is_empty() {
        true => (vec![whole], 0),
        false => (spec.chunks.clone(), spec.chunk_delay_ms.unwrap_or(0)),
    };
    let mut frames: Vec<(u64, Frame<Bytes>)> = data
        .into_iter()
        .map(|c| (delay, Frame::data(Bytes::from(c))))
        .collect();
    if !spec.trailers.is_empty() {
        let trailers = spec
            .trailers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        let delay = spec.trailers_delay_ms.unwrap_or(0);
        frames.push((delay, Frame::trailers(trailers)));
    }
    let frames = futures::stream::iter(frames).then(|(delay_ms, frame)| async move {
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Ok::<_, Infallible>(frame)
    });
    BodyExt::boxed(StreamBody::new(frames))
}
