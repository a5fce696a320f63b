//! Replies the proxy makes itself, with Envoy's status codes, bodies and headers.

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use sentinel_xds::config::hcm::ServerHeader;
use sentinel_xds::config::route::Redirect;

use crate::ctx::Ctx;
use crate::headers::{self, mutate};
use crate::proxy::HttpHandler;

/// A reply decided before the failure that carries it (no healthy host, route timeout...).
pub(crate) struct LocalReply {
    pub status: u16,
    pub body: &'static str,
}

pub(crate) fn local_error(status: u16) -> Box<Error> {
    Error::new(ErrorType::HTTPStatus(status))
}

const RESET: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";

/// Envoy's answer to a failed request: status and body, or None when the downstream
/// connection is already gone.
pub(crate) fn reply_for(e: &Error) -> Option<(u16, String)> {
    use ErrorType::*;
    let reset = |reason: &str| format!("{RESET}{reason}");
    Some(match (e.etype(), e.esource()) {
        (HTTPStatus(s), _) => (*s, String::new()),
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
            (504, "upstream request timeout".into())
        }
        (ConnectTimedout, _) => (503, reset("connection timeout")),
        (ConnectRefused | ConnectError | ConnectNoRoute, _) => {
            (503, reset("remote connection failure"))
        }
        (InvalidHTTPHeader | H1Error, ErrorSource::Upstream) => (502, reset("protocol error")),
        (_, ErrorSource::Upstream) => (503, reset("connection termination")),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => return None,
        (ReadTimedout, ErrorSource::Downstream) => (408, "request timeout".into()),
        (_, ErrorSource::Downstream) => (400, String::new()),
        _ => (500, String::new()),
    })
}

/// Envoy's mapping of an HTTP status to a gRPC status (`Grpc::Utility::httpToGrpcStatus`).
fn grpc_status(http: u16) -> u32 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

impl HttpHandler {
    pub(crate) async fn send_local(
        &self,
        session: &mut Session,
        status: u16,
        body: Bytes,
        extra: &[(&str, String)],
        ctx: &Ctx,
    ) -> Result<()> {
        let (resp, body) = self.local_response(session.req_header(), status, body, extra, ctx)?;
        session.write_response_header(resp, body.is_none()).await?;
        // The header write does not end the stream by itself (HTTP/2 would see a reset).
        session.write_response_body(body, true).await
    }

    /// A local reply's header (Envoy's headers, the route's response mutations) and its body,
    /// None when it has none (or answers HEAD). Written by `send_local`, or handed to Pingora
    /// as response tasks when a processor replaces a response held back from the client.
    pub(crate) fn local_response(
        &self,
        req: &RequestHeader,
        status: u16,
        body: Bytes,
        extra: &[(&str, String)],
        ctx: &Ctx,
    ) -> Result<(Box<ResponseHeader>, Option<Bytes>)> {
        let grpc = crate::request::is_grpc(&req.headers);
        let mut resp;
        if grpc && status != 200 {
            // gRPC clients read errors from grpc-status: a trailers-only answer, as in Envoy.
            resp = ResponseHeader::build_no_case(200, Some(4))?;
            resp.insert_header("content-type", "application/grpc")?;
            let code = ctx.grpc_status.unwrap_or_else(|| grpc_status(status));
            resp.insert_header("grpc-status", code.to_string())?;
            if !body.is_empty() {
                resp.insert_header("grpc-message", String::from_utf8_lossy(&body).as_ref())?;
            }
        } else {
            // Envoy's order: content-length, content-type, date, server.
            resp = ResponseHeader::build_no_case(status, Some(4))?;
            resp.insert_header("content-length", body.len().to_string())?;
            if !body.is_empty() {
                resp.insert_header("content-type", "text/plain")?;
            }
        }
        let body = if grpc && status != 200 {
            Bytes::new()
        } else {
            body
        };
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header(
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )?;
        for (k, v) in extra {
            resp.insert_header(k.to_string(), v.as_str())?;
        }
        self.finish_response_headers(&mut resp, ctx, req);
        let head = req.method == http::Method::HEAD;
        Ok((Box::new(resp), (!head && !body.is_empty()).then_some(body)))
    }

    /// Response header mutations of every level, then the `server` header.
    pub(crate) fn finish_response_headers(
        &self,
        resp: &mut ResponseHeader,
        ctx: &Ctx,
        req: &RequestHeader,
    ) {
        let most_specific = ctx
            .route_config
            .as_ref()
            .is_some_and(|rc| rc.most_specific_header_mutations_wins);
        mutate(
            resp,
            &ctx.levels(),
            most_specific,
            |l| &l.response_remove,
            |l| &l.response_add,
            |add| headers::render(&add.value, &ctx.vars(Some(req))),
        );
        match self.hcm.server_header {
            ServerHeader::Overwrite => {
                let _ = resp.insert_header("server", self.hcm.server_name.as_str());
            }
            ServerHeader::AppendIfAbsent if !resp.headers.contains_key("server") => {
                let _ = resp.insert_header("server", self.hcm.server_name.as_str());
            }
            _ => {}
        }
        if let Some(via) = &self.hcm.via {
            let _ = resp.append_header("via", via.as_str());
        }
        for (name, value) in &ctx.filter_response_headers {
            let _ = resp.insert_header(name.clone(), value.as_str());
        }
        if self.hcm.always_set_request_id_in_response {
            if let Some(id) = &ctx.request_id {
                let _ = resp.insert_header("x-request-id", id.clone());
            }
        }
    }

    pub(crate) fn redirect_location(
        &self,
        r: &Redirect,
        req: &RequestHeader,
        matched_prefix: Option<&str>,
    ) -> String {
        let host_header = crate::request::host_of(req);
        let (host, port) = match host_header.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                (h.to_string(), Some(p.to_string()))
            }
            _ => (host_header.clone(), None),
        };
        let scheme = r.scheme.clone().unwrap_or_else(|| "http".into());
        let host = r.host.clone().unwrap_or(host);
        let port = match (r.port, &r.scheme) {
            (Some(p), _) => Some(p.to_string()),
            // A scheme change drops only the default ports.
            (None, Some(_)) => port.filter(|p| p != "80" && p != "443"),
            (None, None) if r.host.is_some() => None,
            (None, None) => port,
        };
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
        let mut new_path = if let Some(p) = &r.path {
            p.clone()
        } else {
            path.to_string()
        };
        let query = if r.strip_query || r.path.as_ref().is_some_and(|p| p.contains('?')) {
            None
        } else {
            query
        };
        if let (Some(prefix), Some(matched)) = (&r.prefix_rewrite, matched_prefix) {
            new_path = format!("{prefix}{}", &new_path[matched.len().min(new_path.len())..]);
        }
        if let Some((re, sub)) = &r.regex_rewrite {
            new_path = re.replace_all(&new_path, sub.as_str()).into_owned();
        }
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        match query {
            Some(q) => format!("{scheme}://{host}{port}{new_path}?{q}"),
            None => format!("{scheme}://{host}{port}{new_path}"),
        }
    }
}
