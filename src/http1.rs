//! HTTP/1 connections, with Envoy's codec checks in front of Pingora's.
//!
//! Pingora's HTTP/1 codec answers a request it cannot parse with its own 400 (`Server:
//! Pingora`) before any hook runs, and it accepts and refuses other inputs than Envoy's codec
//! does (absolute-form targets, Content-Length with Transfer-Encoding, heads past its fixed
//! limits...). So this module runs the HTTP/1 connection loop itself: each request head is
//! read and checked here the way Envoy 1.40's codec checks it. A bad head gets Envoy's reply
//! and the connection closes; a good one is pushed back into the stream (rewritten where
//! Envoy would normalize it) and Pingora reads it as usual.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::IO;
use pingora_proxy::HttpProxy;
use sentinel_xds::config::hcm::{HttpConnectionManager, ServerHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::downstream::Buffered as Stream;
use crate::proxy::HttpHandler;
use crate::stats::HttpStats;

/// Header slots on the stack; more headers than this take the heap (and most get a 431).
const STACK_HEADERS: usize = 128;

/// What Envoy's codec enforces on a request head, from the HTTP connection manager.
pub(crate) struct Limits {
    /// `max_request_headers_kb`: the request line and headers together.
    max_head_bytes: usize,
    max_headers: usize,
    accept_http_10: bool,
    /// The `server` header of the codec's own replies (none with PASS_THROUGH).
    server: Option<String>,
    idle_timeout: Option<Duration>,
    /// The connection manager's stats, which count the refusals as Envoy does.
    pub(crate) stats: Arc<HttpStats>,
}

impl Limits {
    pub(crate) fn new(hcm: &HttpConnectionManager, stats: Arc<HttpStats>) -> Self {
        Self {
            max_head_bytes: hcm.max_request_headers_kb as usize * 1024,
            max_headers: hcm.max_headers_count as usize,
            accept_http_10: hcm.accept_http_10,
            server: match hcm.server_header {
                ServerHeader::PassThrough => None,
                _ => Some(hcm.server_name.clone()),
            },
            idle_timeout: hcm.idle_timeout,
            stats,
        }
    }
}

/// Serves an HTTP/1 connection: one checked request head at a time, each handed to `app`.
pub(crate) async fn serve(
    app: &Arc<HttpProxy<HttpHandler>>,
    stream: Stream,
    limits: &Limits,
    shutdown: &watch::Receiver<bool>,
) {
    let mut stream = Box::new(stream);
    let mut settings: Option<HttpPersistentSettings> = None;
    // Bytes read past the end of the previous request (a pipelined request), then the head.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let verdict = match limits.idle_timeout {
            Some(t) => {
                match tokio::time::timeout(t, read_head(&mut stream, &mut buf, limits)).await {
                    Ok(v) => v,
                    Err(_) => return,
                }
            }
            None => read_head(&mut stream, &mut buf, limits).await,
        };
        match verdict {
            Verdict::Closed => return,
            Verdict::Reject(status, kind) => {
                let stats = &limits.stats;
                stats.downstream_rq_total.inc();
                stats.downstream_rq_http1_total.inc();
                stats.downstream_rq_xx.count(status);
                stats.downstream_rq_completed.inc();
                if kind == Kind::Codec {
                    stats.downstream_cx_protocol_error.inc();
                }
                let _ = stream.write_all(&reply(status, kind, limits)).await;
                let _ = stream.flush().await;
                close(&mut stream).await;
                return;
            }
            Verdict::Serve {
                rewritten,
                head_len,
                end,
            } => {
                // Only this request goes back to Pingora, so that it never reads past its end
                // (which would cost the connection): what follows is the next head.
                match rewritten {
                    Some(head) => {
                        let mut bytes = head;
                        bytes.extend_from_slice(&buf[head_len..end]);
                        stream.rewind(&bytes);
                    }
                    None => stream.rewind(&buf[..end]),
                }
                buf.drain(..end);
            }
        }
        let mut session = ServerSession::new_http1(stream);
        match settings.take() {
            Some(s) => s.apply_to_session(&mut session),
            // As Pingora's own loop does for a new connection.
            None if *shutdown.borrow() => session.set_keepalive(None),
            None => session.set_keepalive(Some(60)),
        }
        let Some(reused) = app.process_new_http(session, shutdown).await else {
            return;
        };
        let (io, next) = ReusedHttpStream::consume(reused);
        settings = next;
        // Only plain TCP connections reach here, so the stream is always ours.
        match downcast(io) {
            Some(s) => stream = s,
            None => return,
        }
    }
}

/// Closes after a reply the way Envoy does (its delayed_close_timeout, 1 s): the write side
/// first, then whatever the client still sends is read and dropped until it closes, so that
/// unread request bytes do not turn the close into a reset that can destroy the reply.
async fn close(stream: &mut Stream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut budget = 1 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget -= n.min(budget),
            }
        }
    })
    .await;
}

fn downcast(io: Box<dyn IO>) -> Option<Box<Stream>> {
    io.into_any().downcast::<Stream>().ok()
}

enum Verdict {
    /// The client closed (or went idle past the timeout) between requests.
    Closed,
    /// Envoy would answer this status and close.
    Reject(u16, Kind),
    /// A good head, `head_len` bytes long in the buffer. `end` is where this request ends in
    /// the buffer when that is known (no body, or a Content-Length body), otherwise the
    /// buffer's length.
    Serve {
        rewritten: Option<Vec<u8>>,
        head_len: usize,
        end: usize,
    },
}

async fn read_head(stream: &mut Stream, buf: &mut Vec<u8>, limits: &Limits) -> Verdict {
    loop {
        // Empty lines before a request line are ignored (RFC 9112 section 2.2), as Envoy does.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.drain(..blank);
        if !buf.is_empty() {
            match check(buf, limits) {
                Check::Partial if buf.len() > limits.max_head_bytes => {
                    return Verdict::Reject(431, Kind::Codec)
                }
                Check::Partial => {}
                Check::Reject(status, kind) => return Verdict::Reject(status, kind),
                Check::Serve {
                    rewritten,
                    head_len,
                    body,
                } => {
                    let end = match body {
                        Body::Length(n) => head_len.saturating_add(n).min(buf.len()),
                        Body::Unknown => buf.len(),
                    };
                    return Verdict::Serve {
                        rewritten,
                        head_len,
                        end,
                    };
                }
            }
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Verdict::Closed,
            Ok(_) => {}
        }
    }
}

enum Body {
    Length(usize),
    /// Chunked: where it ends is for Pingora to find.
    Unknown,
}

/// Who refuses a request in Envoy, which decides the reply's form.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// The codec: the reason phrase as a text/plain body.
    Codec,
    /// The connection manager, after the codec: an empty body.
    Manager,
}

enum Check {
    Partial,
    Reject(u16, Kind),
    Serve {
        rewritten: Option<Vec<u8>>,
        head_len: usize,
        body: Body,
    },
}

/// Checks a request head the way Envoy's HTTP/1 codec does.
fn check(buf: &[u8], limits: &Limits) -> Check {
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let slots: &mut [httparse::Header] = if limits.max_headers < STACK_HEADERS {
        &mut stack[..limits.max_headers + 1]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers + 1];
        &mut heap
    };
    let mut req = httparse::Request::new(slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Check::Partial,
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Check::Reject(431, Kind::Codec),
        Err(httparse::Error::Version) => return Check::Reject(bad_version(buf), Kind::Codec),
        Err(_) if folded(buf) => return check_unfolded(buf, limits),
        Err(_) if http09(buf) => return Check::Reject(426, Kind::Codec),
        Err(_) => return Check::Reject(400, Kind::Codec),
    };
    if head_len > limits.max_head_bytes || req.headers.len() > limits.max_headers {
        return Check::Reject(431, Kind::Codec);
    }
    let method = req.method.unwrap_or_default();
    if !KNOWN_METHODS.contains(&method) {
        return Check::Reject(400, Kind::Codec);
    }
    if req.version == Some(0) && !limits.accept_http_10 {
        return Check::Reject(426, Kind::Codec);
    }
    let target = req.path.unwrap_or_default();
    if !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Check::Reject(400, Kind::Codec);
    }
    if target.contains('#') {
        return Check::Reject(400, Kind::Manager);
    }
    let absolute = match absolute_form(target, method == "CONNECT") {
        Target::Origin => None,
        Target::Absolute { authority, path } => Some((authority, path)),
        Target::Bad => return Check::Reject(400, Kind::Codec),
    };
    let mut content_length = None;
    let mut chunked = false;
    let mut hosts = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = trim(h.value);
            if content_length.is_some() || v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Check::Reject(400, Kind::Codec);
            }
            match std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()) {
                Some(n) => content_length = Some(n),
                None => return Check::Reject(400, Kind::Codec),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Check::Reject(501, Kind::Codec);
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if chunked && content_length.is_some() {
        return Check::Reject(400, Kind::Codec);
    }
    if hosts == 0 && absolute.is_none() && req.version == Some(1) {
        return Check::Reject(400, Kind::Manager);
    }
    let body = match (chunked, content_length) {
        (true, _) => Body::Unknown,
        (false, n) => Body::Length(n.unwrap_or(0)),
    };
    let rewritten = match absolute {
        Some((authority, path)) => Some(rewrite(&req, path, &[authority.as_bytes()])),
        // Pingora refuses repeated Host lines; Envoy joins them.
        None if hosts > 1 => {
            let values: Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value)
                .collect();
            Some(rewrite(&req, target, &values))
        }
        None => None,
    };
    Check::Serve {
        rewritten,
        head_len,
        body,
    }
}

/// Whether a header line continues on the next (obs-fold), which httparse refuses and Envoy
/// accepts.
fn folded(buf: &[u8]) -> bool {
    buf.windows(3)
        .any(|w| w[0] == b'\r' && w[1] == b'\n' && (w[2] == b' ' || w[2] == b'\t'))
}

/// Checks a head with its folded lines joined: the line break goes, the whitespace after it
/// stays (as Envoy forwards them); the joined head replaces the original.
fn check_unfolded(buf: &[u8], limits: &Limits) -> Check {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Check::Partial;
    };
    let mut head = Vec::with_capacity(end);
    let mut i = 0;
    while i < end {
        if buf[i..].starts_with(b"\r\n") && matches!(buf.get(i + 2), Some(b' ' | b'\t')) {
            i += 2;
        } else {
            head.push(buf[i]);
            i += 1;
        }
    }
    if folded(&head) {
        return Check::Reject(400, Kind::Codec);
    }
    match check(&head, limits) {
        Check::Serve {
            rewritten, body, ..
        } => Check::Serve {
            rewritten: Some(rewritten.unwrap_or(head)),
            head_len: end,
            body,
        },
        other => other,
    }
}

/// Versions other than 1.0 and 1.1, and HTTP/0.9, get 426; a request line that is not
/// three tokens ending in a version is just malformed.
fn bad_version(buf: &[u8]) -> u16 {
    match request_line(buf).as_slice() {
        [_, t] if t.starts_with(b"/") => 426,
        [_, _, v] if v.starts_with(b"HTTP/") => 426,
        _ => 400,
    }
}

/// `GET /` and nothing else on the line.
fn http09(buf: &[u8]) -> bool {
    buf.contains(&b'\n') && matches!(request_line(buf).as_slice(), [_, t] if t.starts_with(b"/"))
}

fn request_line(buf: &[u8]) -> Vec<&[u8]> {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.split(|&b| b == b' ').collect()
}

enum Target<'a> {
    Origin,
    Absolute { authority: &'a str, path: &'a str },
    Bad,
}

/// `http://host[:port]/path` (RFC 9112 absolute-form), which Envoy routes by its authority.
fn absolute_form(target: &str, connect: bool) -> Target<'_> {
    // CONNECT's authority-form goes to the router as it is.
    if target.starts_with('/') || target == "*" || connect {
        return Target::Origin;
    }
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
    });
    let Some(rest) = rest else {
        return Target::Bad;
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return Target::Bad;
    }
    let path = if path.is_empty() { "/" } else { path };
    Target::Absolute { authority, path }
}

/// The head again, with `target` and one Host header made of `hosts` (joined by commas).
fn rewrite(req: &httparse::Request, target: &str, hosts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method.unwrap_or_default().as_bytes());
    out.push(b' ');
    if target.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(match req.version {
        Some(0) => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    out.extend_from_slice(b"host: ");
    for (i, h) in hosts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(h);
    }
    out.extend_from_slice(b"\r\n");
    for h in req.headers.iter() {
        if !h.name.eq_ignore_ascii_case("host") {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// The methods Envoy's codec knows (http-parser's list); others get 400.
const KNOWN_METHODS: &[&str] = &[
    "DELETE",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PATCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
];

/// Envoy's reply to a request it refused before routing, byte for byte: from the codec, the
/// reason phrase as a plain-text body; from the connection manager, an empty one.
fn reply(status: u16, kind: Kind, limits: &Limits) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let server = limits
        .server
        .as_deref()
        .map(|s| format!("server: {s}\r\n"))
        .unwrap_or_default();
    match kind {
        Kind::Codec => format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\
             date: {date}\r\n{server}connection: close\r\n\r\n{reason}",
            reason.len()
        ),
        Kind::Manager => format!(
            "HTTP/1.1 {status} {reason}\r\ndate: {date}\r\n{server}connection: close\r\n\
             content-length: 0\r\n\r\n"
        ),
    }
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head_bytes: 60 * 1024,
            max_headers: 100,
            accept_http_10: false,
            server: Some("envoy".into()),
            idle_timeout: None,
            stats: Arc::default(),
        }
    }

    fn status(head: &str) -> Option<u16> {
        match check(head.as_bytes(), &limits()) {
            Check::Reject(s, _) => Some(s),
            Check::Partial => Some(0),
            Check::Serve { .. } => None,
        }
    }

    fn rewritten(head: &str) -> String {
        match check(head.as_bytes(), &limits()) {
            Check::Serve {
                rewritten: Some(h), ..
            } => String::from_utf8(h).unwrap(),
            _ => panic!("not rewritten: {head}"),
        }
    }

    #[test]
    fn refuses_what_envoy_refuses() {
        let h = "Host: x\r\n";
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{h}\r\n")), None);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n"), Some(0));
        let both = "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n";
        assert_eq!(
            status(&format!("POST / HTTP/1.1\r\n{h}{both}\r\n")),
            Some(400)
        );
        let two = "Content-Length: 3\r\nContent-Length: 3\r\n";
        assert_eq!(
            status(&format!("POST / HTTP/1.1\r\n{h}{two}\r\n")),
            Some(400)
        );
        let gzip = "Transfer-Encoding: gzip\r\n";
        assert_eq!(
            status(&format!("POST / HTTP/1.1\r\n{h}{gzip}\r\n")),
            Some(501)
        );
        assert_eq!(status(&format!("GET / HTTP/1.0\r\n{h}\r\n")), Some(426));
        assert_eq!(status(&format!("GET / HTTP/1.2\r\n{h}\r\n")), Some(426));
        assert_eq!(status("GET /\r\n\r\n"), Some(426));
        assert_eq!(status(&format!("GET /a b HTTP/1.1\r\n{h}\r\n")), Some(400));
        assert_eq!(status(&format!("get / HTTP/1.1\r\n{h}\r\n")), Some(400));
        assert_eq!(status(&format!("GET /a#b HTTP/1.1\r\n{h}\r\n")), Some(400));
        assert_eq!(
            status(&format!("GET ftp://a/ HTTP/1.1\r\n{h}\r\n")),
            Some(400)
        );
        assert_eq!(
            status(&format!("GET http:/a HTTP/1.1\r\n{h}\r\n")),
            Some(400)
        );
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(431));
        let big = "a".repeat(61 * 1024);
        assert_eq!(
            status(&format!("GET /{big} HTTP/1.1\r\n{h}\r\n")),
            Some(431)
        );
    }

    #[test]
    fn absolute_form_routes_by_its_authority() {
        assert_eq!(
            rewritten("GET http://a.com/p?q HTTP/1.1\r\nHost: b\r\nx-a: 1\r\n\r\n"),
            "GET /p?q HTTP/1.1\r\nhost: a.com\r\nx-a: 1\r\n\r\n"
        );
        assert_eq!(
            rewritten("GET HTTPS://u@a.com:8443 HTTP/1.1\r\n\r\n"),
            "GET / HTTP/1.1\r\nhost: a.com:8443\r\n\r\n"
        );
        assert_eq!(
            rewritten("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            "GET / HTTP/1.1\r\nhost: a,b\r\n\r\n"
        );
        assert_eq!(
            rewritten("GET / HTTP/1.1\r\nHost: a\r\nx-a: 1\r\n  2\r\n\t3\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: a\r\nx-a: 1  2\t3\r\n\r\n"
        );
    }

    #[test]
    fn a_reply_is_envoys() {
        let r = String::from_utf8(reply(431, Kind::Codec, &limits())).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 31\r\ncontent-type: text/plain\r\ndate: "), "{r}");
        assert!(
            r.ends_with(
                "server: envoy\r\nconnection: close\r\n\r\nRequest Header Fields Too Large"
            ),
            "{r}"
        );
    }
}
