//! The case model: one YAML file under `conformance/cases/<group>/<name>.yaml` per case.
//!
//! A case file is read twice. First with every `{{placeholder}}` replaced by `1`, to learn
//! the upstreams and check the shape; then, once the runner has bound the upstreams and picked
//! free ports, with the real port numbers. Placeholders are textual, so they work anywhere in
//! the file (a `port_value`, a Host header, an expected `location`):
//! - `{{listener}}`: the port of the scaffold listener (and the default request target);
//! - `{{upstream.NAME}}`: the port of upstream `NAME`;
//! - `{{port.NAME}}`: one more free port (a second listener, say);
//! - `{{host_ip}}`: the host's first non-loopback IPv4 address (see `host.rs`).
//!
//! The format is described in `conformance/cases/README.md`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Deserialize;
use serde_yaml::Value;

/// The longest `wait_ms` a step may ask for.
pub const MAX_WAIT_MS: u64 = 10_000;
/// The longest per-request timeout a case may ask for.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The largest generated request body (`body_bytes`).
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// The most times one request may be repeated.
pub const MAX_REPEAT: u32 = 50;

/// One conformance case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub description: String,
    /// Serve xDS as delta (incremental) ADS instead of state-of-the-world.
    #[serde(default)]
    pub delta: bool,
    /// The in-process upstreams, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// What the runner adds to `resources` (see [`Scaffold`]); both by default.
    #[serde(default = "default_scaffold")]
    pub scaffold: Vec<Scaffold>,
    /// Fields merged into the scaffold listener's HttpConnectionManager.
    #[serde(default)]
    pub hcm: serde_yaml::Mapping,
    /// The initial xDS resources (version "1"), Envoy YAML with `"@type"`.
    #[serde(default)]
    pub resources: Vec<Value>,
    /// Wait for the admin `/ready` and for the listener to accept before the first step.
    #[serde(default = "yes")]
    pub wait_ready: bool,
    pub steps: Vec<Step>,
}

/// Resources the runner generates so that cases only write what they are about.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scaffold {
    /// Listener `listener_0` on `{{listener}}`: an HttpConnectionManager (codec AUTO, the
    /// router filter, the case's `hcm` fields) whose routes come by RDS as `route_0`.
    Listener,
    /// For every upstream without a Cluster of its name: an EDS cluster of that name and its
    /// ClusterLoadAssignment pointing at the upstream.
    Clusters,
}

fn default_scaffold() -> Vec<Scaffold> {
    vec![Scaffold::Listener, Scaffold::Clusters]
}

fn yes() -> bool {
    true
}

/// How an upstream answers. By default: 200, header `x-upstream: NAME`, and a JSON body that
/// describes the request it saw (method, path, host, headers, body).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    #[serde(default)]
    pub status: Option<u16>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Extra response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response trailers (sent on HTTP/2; an HTTP/1 answer with trailers is chunked).
    #[serde(default)]
    pub trailers: BTreeMap<String, String>,
    /// Send the trailers this long after the body, so that the proxy has sent the response
    /// headers on by then.
    #[serde(default)]
    pub trailers_delay_ms: Option<u64>,
    /// A fixed body instead of the JSON echo (then `seen` cannot be checked).
    #[serde(default)]
    pub body: Option<String>,
    /// A body of this many `x` bytes instead (at most `MAX_BODY_BYTES`).
    #[serde(default)]
    pub body_bytes: Option<usize>,
    /// A body sent in these pieces instead, each after `chunk_delay_ms`, the headers first.
    #[serde(default)]
    pub chunks: Vec<String>,
    #[serde(default)]
    pub chunk_delay_ms: Option<u64>,
    /// Read the request, then close the connection without answering.
    #[serde(default)]
    pub close: bool,
    /// Read the request, then reset the connection (RST).
    #[serde(default)]
    pub reset: bool,
    /// Nothing listens on the port: connections are refused.
    #[serde(default)]
    pub refuse: bool,
    /// Accept HTTP/1.1 upgrades (101, then echo every byte); see `upstream::serve_upgrade`.
    #[serde(default)]
    pub websocket: bool,
    /// Instead of HTTP: an ext_proc server (gRPC over h2c) answering as scripted.
    #[serde(default)]
    pub ext_proc: Option<ExtProcScript>,
}

/// What a scripted external processor answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcScript {
    /// The answer to request headers (`paths` may override it by `:path`).
    #[serde(default)]
    pub request: ExtProcAnswer,
    /// The answer to response headers.
    #[serde(default)]
    pub response: ExtProcAnswer,
    #[serde(default)]
    pub paths: BTreeMap<String, ExtProcAnswer>,
    /// The answer to each request body message.
    #[serde(default)]
    pub request_body: ExtProcAnswer,
    /// The answer to response trailers (only `set`, `remove`, `immediate`, `delay_ms`,
    /// `close` and `report` apply); `report` sets `x-proc-trailers` to the names it got.
    #[serde(default)]
    pub response_trailers: ExtProcAnswer,
    /// The answer to request trailers (the same fields apply as for `response_trailers`).
    #[serde(default)]
    pub request_trailers: ExtProcAnswer,
    /// The answer to each response body message.
    #[serde(default)]
    pub response_body: ExtProcAnswer,
    /// The answer to the response body message of this number (from 1), instead.
    #[serde(default)]
    pub response_body_nth: BTreeMap<usize, ExtProcAnswer>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcAnswer {
    /// Headers to set (pseudo-headers such as `:path` included).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    /// Answer the client right away instead.
    #[serde(default)]
    pub immediate: Option<Immediate>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Ask the proxy to route again after the mutation.
    #[serde(default)]
    pub clear_route_cache: bool,
    /// Body messages: replace the body (chunk) with this.
    #[serde(default)]
    pub body: Option<String>,
    /// Body messages: clear the body (chunk).
    #[serde(default)]
    pub clear_body: bool,
    /// Body messages: answer as FULL_DUPLEX_STREAMED wants, with a `streamed_response` that
    /// carries the chunk upper-cased and the message's `end_of_stream`.
    #[serde(default)]
    pub streamed: bool,
    /// Body messages: replace the body (chunk) with what the message held, as
    /// `[<message number>:<end_of_stream>:<body>]`.
    #[serde(default)]
    pub echo_body: bool,
    /// Response headers: report what the processor got before, as response headers
    /// `x-proc-request-eos` (the request headers' end_of_stream), `x-proc-body` (the request
    /// body messages joined), `x-proc-body-eos` (the last one's end_of_stream) and
    /// `x-proc-body-msgs` (how many) and `x-proc-body-len` (their total length), and
    /// `x-proc-attributes` (each message's `attributes`, as `kind{key=value;...}`);
    /// `x-proc-body` is left out past 1 KiB. After a request trailers message, also
    /// `x-proc-request-trailers` (the names it held) and `x-proc-messages` (the kinds of the
    /// messages so far, in order).
    #[serde(default)]
    pub report: bool,
    /// Headers answers: a `mode_override`, by ProcessingMode field name and enum value name
    /// (`request_body_mode: BUFFERED`).
    #[serde(default)]
    pub mode_override: BTreeMap<String, String>,
    /// Answer with the wrong kind of message (a response-headers answer to request headers
    /// or to a body, a request-headers answer to response headers), as a confused processor.
    #[serde(default)]
    pub wrong_kind: bool,
    /// End the stream (gRPC status OK) instead of answering, as a processor that gives up.
    #[serde(default)]
    pub close: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Immediate {
    pub status: u32,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One step: an optional control-plane action, then requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Shuts the control plane down (streams end, the port is released).
    #[serde(default)]
    pub stop_control_plane: bool,
    /// Starts the control plane again on the same port with the current snapshot.
    #[serde(default)]
    pub start_control_plane: bool,
    /// Stop, then start (before `push`).
    #[serde(default)]
    pub restart_control_plane: bool,
    /// A new resource set, served as the next version.
    #[serde(default)]
    pub push: Option<Push>,
    /// Types that must be ACKed at the current version (after a push or a start).
    #[serde(default)]
    pub ack: Option<OneOrMany<TypeName>>,
    /// Types that must be NACKed after the push.
    #[serde(default)]
    pub nack: Option<OneOrMany<TypeName>>,
    /// Text the NACK's error detail must contain (keep it to a resource name).
    #[serde(default)]
    pub nack_contains: Option<String>,
    /// Sleep this long (at most [`MAX_WAIT_MS`]).
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Retry the requests (up to 5 s) until they pass. Defaults to true when the step
    /// changed the configuration or the control plane, false otherwise.
    #[serde(default)]
    pub eventually: Option<bool>,
    #[serde(default)]
    pub requests: Vec<Request>,
}

/// A new resource set for a push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    #[serde(default)]
    pub resources: Vec<Value>,
    /// Overrides the case's scaffold for this version.
    #[serde(default)]
    pub scaffold: Option<Vec<Scaffold>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// An xDS resource type, by its short name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TypeName {
    Listener,
    Route,
    Cluster,
    Endpoint,
}

impl TypeName {
    pub fn type_url(self) -> &'static str {
        use control_plane_mock::resource;
        match self {
            TypeName::Listener => resource::LISTENER,
            TypeName::Route => resource::ROUTE,
            TypeName::Cluster => resource::CLUSTER,
            TypeName::Endpoint => resource::ENDPOINT,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
}

/// One request to the proxy and what must come back.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "default_method")]
    pub method: String,
    /// The Host header (HTTP/1) or `:authority` (h2c).
    #[serde(default = "default_host", alias = "authority")]
    pub host: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// Request headers; a list value sends the header once per item.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany<String>>,
    #[serde(default)]
    pub body: Option<String>,
    /// Trailers sent after the body: on h2c a HEADERS frame that ends the stream; on HTTP/1
    /// a chunked body's trailer section (hyper sends only the fields a `trailer` header names).
    #[serde(default)]
    pub trailers: BTreeMap<String, String>,
    /// Bytes to send as they are (HTTP/1), instead of a request built from the fields above;
    /// `<<a*70000>>` stands for 70,000 `a`s. The first response is read back.
    #[serde(default)]
    pub raw: Option<String>,
    /// After a raw request's 101 answer: bytes to send through the tunnel; what comes back
    /// (as many bytes, within the timeout) is the response body.
    #[serde(default)]
    pub tunnel: Option<String>,
    /// A body of this many `x` bytes instead (at most `MAX_BODY_BYTES`).
    #[serde(default)]
    pub body_bytes: Option<usize>,
    #[serde(default)]
    pub protocol: Protocol,
    /// A gRPC call: POST, h2c, `content-type: application/grpc`, `te: trailers`.
    #[serde(default)]
    pub grpc: bool,
    /// Which port placeholder to send to: `listener` (default) or a `port.NAME` name.
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Send it this many times (each must pass).
    #[serde(default)]
    pub repeat: Option<u32>,
    #[serde(default)]
    pub expect: Expect,
}

fn default_method() -> String {
    "GET".into()
}
fn default_host() -> String {
    "example.com".into()
}
fn default_path() -> String {
    "/".into()
}

/// What a response must look like. Unset fields are not checked.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: Option<u16>,
    /// The upstream that answered (its `x-upstream` header), or `none` for a local answer.
    pub upstream: Option<String>,
    /// What the upstream saw.
    pub seen: Option<Seen>,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderExpect>,
    pub body: Option<BodyExpect>,
    /// The request must fail: `connect` (the connection is refused) or `any` (no response).
    pub error: Option<ErrorKind>,
    /// Whether the proxy closes the connection after the response (raw requests only).
    pub closed: Option<bool>,
    /// The 1xx answers before the final one, in order (raw requests only).
    pub interim: Option<Vec<u16>>,
    /// Whether every header name of the response head is written lowercase (raw requests
    /// only: other clients do not show the case).
    pub lowercase_names: Option<bool>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Connect,
    Any,
}

/// What the upstream saw, from its JSON echo.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    pub method: Option<String>,
    /// Path and query.
    pub path: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderExpect>,
    pub body: Option<String>,
    /// The request trailers the upstream got (none on HTTP/1: hyper's server reads none).
    #[serde(default)]
    pub trailers: BTreeMap<String, HeaderExpect>,
}

/// A header expectation: a plain string means `equals`. A header is compared as one value:
/// its field lines joined with `,`, without whitespace around commas (on both sides), so
/// `a, b`, `a,b` and two lines `a` and `b` are equal (RFC 9110 section 5.3).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderExpect {
    Equals(String),
    Rule(HeaderRule),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    pub present: Option<bool>,
    pub equals: Option<String>,
    pub contains: Option<String>,
    /// A regex the whole value must match.
    pub matches: Option<String>,
}

/// A body expectation: a plain string means `equals`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum BodyExpect {
    Equals(String),
    Rule {
        equals: Option<String>,
        contains: Option<String>,
    },
}

/// A case file: its id (`group/name`), its text, and the parsed shape.
pub struct CaseFile {
    pub id: String,
    pub text: String,
    pub case: Case,
}

/// The placeholders a text uses: `listener`, `upstream.NAME`, `port.NAME`.
pub fn placeholders(text: &str) -> Vec<String> {
    let re = placeholder_regex();
    let mut names: Vec<String> = re.captures_iter(text).map(|c| c[1].to_string()).collect();
    names.sort();
    names.dedup();
    names
}

fn placeholder_regex() -> Regex {
    Regex::new(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}").expect("static regex")
}

/// Replaces every placeholder by `value(name)`.
pub fn substitute(text: &str, value: impl Fn(&str) -> Option<String>) -> Result<String> {
    let re = placeholder_regex();
    let mut missing = None;
    let out = re.replace_all(text, |c: &regex::Captures<'_>| {
        value(&c[1]).unwrap_or_else(|| {
            missing = Some(c[1].to_string());
            String::new()
        })
    });
    if let Some(name) = missing {
        bail!("unknown placeholder {{{{{name}}}}}");
    }
    Ok(out.into_owned())
}

/// Parses a case from its text after placeholders were substituted.
pub fn parse(text: &str) -> Result<Case> {
    let case: Case = serde_yaml::from_str(text)?;
    validate(&case)?;
    Ok(case)
}

fn validate(case: &Case) -> Result<()> {
    if case.steps.is_empty() {
        bail!("a case needs at least one step");
    }
    for (i, step) in case.steps.iter().enumerate() {
        let at = |msg: String| anyhow::anyhow!("steps[{i}]: {msg}");
        if step.wait_ms.unwrap_or(0) > MAX_WAIT_MS {
            return Err(at(format!("wait_ms is at most {MAX_WAIT_MS}")));
        }
        let serves_anew =
            step.push.is_some() || step.start_control_plane || step.restart_control_plane;
        if (step.ack.is_some() || step.nack.is_some()) && !serves_anew {
            return Err(at("ack/nack need a push or a control-plane start".into()));
        }
        for req in &step.requests {
            if req.timeout_ms.unwrap_or(0) > MAX_REQUEST_TIMEOUT_MS {
                return Err(at(format!(
                    "timeout_ms is at most {MAX_REQUEST_TIMEOUT_MS}"
                )));
            }
            if req.body_bytes.unwrap_or(0) > MAX_BODY_BYTES {
                return Err(at(format!("body_bytes is at most {MAX_BODY_BYTES}")));
            }
            if req.repeat.unwrap_or(1) > MAX_REPEAT {
                return Err(at(format!("repeat is at most {MAX_REPEAT}")));
            }
            if let Some(u) = &req.expect.upstream {
                if u != "none" && !case.upstreams.contains_key(u) {
                    return Err(at(format!("expect.upstream {u:?} is not an upstream")));
                }
            }
        }
    }
    Ok(())
}

/// Loads every case under `dir` (`<group>/<name>.yaml`), sorted by id, checking each parses.
pub fn load_all(dir: &Path) -> Result<Vec<CaseFile>> {
    let mut out = Vec::new();
    let groups = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for group in groups {
        let group = group?.path();
        if !group.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&group)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let id = format!(
                "{}/{}",
                file_stem(&group),
                path.file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
            );
            let text = std::fs::read_to_string(&path)?;
            let probe = substitute(&text, |_| Some("1".into()))?;
            let case = parse(&probe).with_context(|| format!("{}", path.display()))?;
            out.push(CaseFile { id, text, case });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn file_stem(p: &Path) -> String {
    p.file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_substituted() {
        let text = "a: {{listener}}\nb: {{ upstream.x }}\nc: {{listener}}";
        assert_eq!(placeholders(text), ["listener", "upstream.x"]);
        let out = substitute(text, |n| Some(n.len().to_string())).unwrap();
        assert_eq!(out, "a: 8\nb: 10\nc: 8");
        assert!(substitute(text, |_| None).is_err());
    }

    #[test]
    fn a_minimal_case_parses() {
        let case = parse(
            "description: d\nupstreams: { a: {} }\nsteps:\n  - requests:\n      - { path: /x, expect: { status: 200, upstream: a, headers: { x: y, z: { present: false } } } }\n",
        )
        .unwrap();
        assert_eq!(case.scaffold, default_scaffold());
        let req = &case.steps[0].requests[0];
        assert_eq!(req.host, "example.com");
        assert!(matches!(
            req.expect.headers["z"],
            HeaderExpect::Rule(HeaderRule {
                present: Some(false),
                ..
            })
        ));
        assert!(parse("description: d\nsteps: []\n").is_err());
        assert!(parse("description: d\nbogus: 1\nsteps: [ {} ]\n").is_err());
    }
}
