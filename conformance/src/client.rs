//! A minimal HTTP client: one fresh connection per request, HTTP/1.1 or h2c (prior
//! knowledge), with the Host/`:authority` set exactly as the case says.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::case::Protocol;

/// What to send.
pub struct Outgoing<'a> {
    pub port: u16,
    pub protocol: Protocol,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: Option<&'a str>,
    /// Trailers after the body (h2c).
    pub trailers: Vec<(String, String)>,
    /// Send these bytes instead (HTTP/1).
    pub raw: Option<Vec<u8>>,
    /// After a 101 to a raw request, send these through the tunnel and read them back.
    pub tunnel: Option<&'a str>,
    /// After a raw request's response, wait (up to 2 s) to see whether the proxy closes.
    pub await_close: bool,
    pub timeout: Duration,
}

/// What came back. Header names are lowercase, one entry per field line.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether the connection was closed after the response (when it was watched).
    pub closed: Option<bool>,
    /// Informational (1xx) answers before it, raw requests only.
    pub interim: Vec<u16>,
    /// The header names as written in the head, raw requests only.
    pub raw_names: Vec<String>,
}

impl Response {
    /// Every field line of a header, in order (empty when absent).
    pub fn lines(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The `x-upstream` header: which upstream answered.
    pub fn upstream(&self) -> Option<String> {
        self.lines("x-upstream").into_iter().next()
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum Failure {
    /// The TCP connection could not be made (refused, or timed out).
    Connect(String),
    /// Connected, but no complete response came back.
    Exchange(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect failed: {e}"),
            Failure::Exchange(e) => write!(f, "no response: {e}"),
        }
    }
}

pub async fn send(out: &Outgoing<'_>) -> Result<Response, Failure> {
    let connect = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", out.port)),
    );
    let stream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Connect(e.to_string())),
        Err(_) => return Err(Failure::Connect("timed out".into())),
    };
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(out.timeout, exchange(stream, out)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(Failure::Exchange(format!("{e:#}"))),
        Err(_) => Err(Failure::Exchange(format!(
            "timed out after {} ms",
            out.timeout.as_millis()
        ))),
    }
}

async fn exchange(stream: TcpStream, out: &Outgoing<'_>) -> Result<Response> {
    if let Some(raw) = &out.raw {
        return raw_exchange(stream, raw, out.tunnel, out.await_close).await;
    }
    let io = TokioIo::new(stream);
    let body = request_body(out)?;
    let mut builder = hyper::Request::builder().method(out.method);
    let response = match out.protocol {
        Protocol::Http1 => {
            builder = builder.uri(out.path).header("host", out.host);
            for (k, v) in &out.headers {
                builder = builder.header(k.as_str(), v.as_str());
            }
            let req = builder.body(body).context("building the request")?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            let driver = tokio::spawn(conn);
            let resp = sender.send_request(req).await;
            let resp = finish(resp).await;
            driver.abort();
            resp?
        }
        Protocol::H2c => {
            builder = builder.uri(format!("http://{}{}", out.host, out.path));
            for (k, v) in &out.headers {
                builder = builder.header(k.as_str(), v.as_str());
            }
            let req = builder.body(body).context("building the request")?;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            let driver = tokio::spawn(conn);
            let resp = sender.send_request(req).await;
            let resp = finish(resp).await;
            driver.abort();
            resp?
        }
    };
    Ok(response)
}

/// The request body: the whole body, or the body and then a trailers frame.
fn request_body(out: &Outgoing<'_>) -> Result<BoxBody<Bytes, Infallible>> {
    let data = Bytes::from(out.body.unwrap_or_default().to_string());
    if out.trailers.is_empty() {
        return Ok(Full::new(data).boxed());
    }
    let mut trailers = http::HeaderMap::new();
    for (k, v) in &out.trailers {
        let name: http::HeaderName = k.parse().context("a trailer name")?;
        trailers.append(name, v.parse().context("a trailer value")?);
    }
    let mut frames = Vec::new();
    if !data.is_empty() {
        frames.push(Ok(Frame::data(data)));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    Ok(StreamBody::new(futures::stream::iter(frames)).boxed())
}

async fn finish(resp: hyper::Result<hyper::Response<hyper::body::Incoming>>) -> Result<Response> {
    let resp = resp?;
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("reading the body: {e}"))?;
    // gRPC answers carry their status in trailers; expectations see them as headers.
    if let Some(trailers) = collected.trailers() {
        for (k, v) in trailers {
            headers.push((
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Ok(Response {
        status,
        headers,
        body,
        closed: None,
        interim: Vec::new(),
        raw_names: Vec::new(),
    })
}

/// `<<x*N>>` in a raw request stands for N copies of `x`.
pub fn expand_raw(raw: &str) -> Vec<u8> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("<<") {
        let Some(len) = rest[start..].find(">>") else {
            break;
        };
        let inner = &rest[start + 2..start + len];
        match inner
            .rsplit_once('*')
            .and_then(|(x, n)| Some((x, n.parse().ok()?)))
        {
            Some((x, n)) => {
                out.push_str(&rest[..start]);
                out.push_str(&x.repeat(n));
            }
            None => out.push_str(&rest[..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out.into_bytes()
}

/// Sends bytes as they are and reads the first HTTP/1 response (framed by content-length,
/// chunked, or the close). A write the proxy cut short (it answered early and closed) is
/// not an error: the response still counts.
async fn raw_exchange(
    mut stream: TcpStream,
    raw: &[u8],
    tunnel: Option<&str>,
    await_close: bool,
) -> Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(raw).await;
    let mut buf = Vec::new();
    let mut eof = false;
    let mut interim = Vec::new();
    let (status, headers, head_len, raw_names) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(n) = resp.parse(&buf)? {
            let code = resp.code.unwrap_or_default();
            // 1xx answers before the final one (101 is final: the tunnel follows).
            if (100..200).contains(&code) && code != 101 {
                interim.push(code);
                buf.drain(..n);
                continue;
            }
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let names = resp.headers.iter().map(|h| h.name.to_string()).collect();
            break (resp.code.unwrap_or_default(), headers, n, names);
        }
        if eof {
            return Err(anyhow!("the connection closed before a complete response"));
        }
        eof = read_more(&mut stream, &mut buf).await?;
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if status == 101 {
        let sent = tunnel.unwrap_or_default().as_bytes();
        stream.write_all(sent).await?;
        while buf.len() < head_len + sent.len() && !eof {
            eof = read_more(&mut stream, &mut buf).await?;
        }
        return Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&buf[head_len..]).into_owned(),
            closed: None,
            interim,
            raw_names,
        });
    }
    let body_end = match (header("content-length"), header("transfer-encoding")) {
        (Some(n), None) => Some(head_len + n.trim().parse::<usize>()?),
        (None, Some(_)) => None,
        _ => None,
    };
    let body = loop {
        match body_end {
            Some(end) if buf.len() >= end => break buf[head_len..end].to_vec(),
            None if eof => break buf[head_len..].to_vec(),
            _ if eof => return Err(anyhow!("the connection closed inside the body")),
            _ => eof = read_more(&mut stream, &mut buf).await?,
        }
    };
    let closed = if await_close {
        let mut sink = [0u8; 1024];
        let watched = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await;
        Some(eof || matches!(watched, Ok(Ok(0)) | Ok(Err(_))))
    } else {
        None
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        closed,
        interim,
        raw_names,
    })
}

/// Reads more into `buf`; true at the end of the stream (a reset counts as the end).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => Ok(true),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(false)
        }
    }
}

/// A plain GET to the admin interface: the status and body, or `None` when it does not answer.
pub async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let out = Outgoing {
        port,
        protocol: Protocol::Http1,
        method: "GET",
        host: "127.0.0.1",
        path,
        headers: Vec::new(),
        body: None,
        trailers: Vec::new(),
        raw: None,
        tunnel: None,
        await_close: false,
        timeout: Duration::from_secs(2),
    };
    send(&out).await.ok().map(|r| (r.status, r.body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn raw_repeats_expand() {
        assert_eq!(
            super::expand_raw("a<<xy*3>>b<<q>>"),
            b"axyxyxyb<<q>>".to_vec()
        );
        assert_eq!(super::expand_raw("<<a\r\n*2>>"), b"a\r\na\r\n".to_vec());
    }
}
