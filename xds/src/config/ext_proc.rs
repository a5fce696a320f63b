//! `envoy.filters.http.ext_proc`: an external processor (WAF, auth, guardrails) that sees
//! and may change each request's and response's headers over one gRPC stream per request.
//!
//! Supported: header processing (SEND/SKIP, both directions), request body processing
//! and response body processing (STREAMED, BUFFERED, BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED)
//! with body mutations, response trailers, header
//! mutations under `mutation_rules`, immediate responses, `message_timeout`,
//! `failure_mode_allow`, `allow_mode_override`, `observability_mode`, the per-route
//! `ExtProcPerRoute` (disabled, or overrides of the mode, processor and `failure_mode_allow`),
//! and `request_attributes`/`response_attributes` that name single attributes
//! (ext_proc_attributes.rs).

use std::time::Duration;

use regex::Regex;
use sentinel_proto::pb::envoy::config::common::mutation_rules::v3 as rules_pb;
use sentinel_proto::pb::envoy::config::core::v3 as core_pb;
use sentinel_proto::pb::envoy::extensions::filters::http::ext_proc::v3 as pb;

use super::ext_proc_attributes::Attribute;
use super::matcher::full_regex;
use super::{duration, ConfigError, Result};

pub const TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";

/// How a body goes to the processor (`ProcessingMode.BodySendMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyMode {
    /// Not sent.
    #[default]
    None,
    /// Each chunk as it arrives; the message goes on without `content-length`.
    Streamed,
    /// The whole body in one message, within the connection's buffer limit.
    Buffered,
    /// One message with the body up to the buffer limit; the rest passes unprocessed.
    BufferedPartial,
    /// Each chunk as it arrives, without waiting; the processor streams the body back in
    /// `streamed_response`s of its own sizes.
    FullDuplexStreamed,
}

impl BodyMode {
    fn from_proto(v: i32, path: &str) -> Result<Self> {
        match v {
            0 => Ok(Self::None),
            1 => Ok(Self::Streamed),
            2 => Ok(Self::Buffered),
            3 => Ok(Self::BufferedPartial),
            4 => Ok(Self::FullDuplexStreamed),
            _ => Err(ConfigError::new(path, format!("unknown body mode {v}"))),
        }
    }
}

/// Which parts go to the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessingMode {
    pub request_headers: bool,
    pub response_headers: bool,
    pub request_body: BodyMode,
    pub response_body: BodyMode,
    /// Request trailers go to the processor (`request_trailer_mode: SEND`).
    pub request_trailers: bool,
    /// Response trailers go to the processor (`response_trailer_mode: SEND`).
    pub response_trailers: bool,
}

impl ProcessingMode {
    /// A processor's `mode_override`; an error when it asks for a mode not implemented.
    pub fn overridden(m: &pb::ProcessingMode) -> Result<Self> {
        Self::from_proto(Some(m), "mode_override")
    }

    fn from_proto(m: Option<&pb::ProcessingMode>, path: &str) -> Result<Self> {
        let Some(m) = m else {
            return Ok(Self {
                request_headers: true,
                response_headers: true,
                request_body: BodyMode::None,
                response_body: BodyMode::None,
                request_trailers: false,
                response_trailers: false,
            });
        };
        // HeaderSendMode: DEFAULT (0) and SEND (1) send, SKIP (2) skips.
        let send = |v: i32| v != 2;
        let request_body =
            BodyMode::from_proto(m.request_body_mode, &format!("{path}.request_body_mode"))?;
        let response_body =
            BodyMode::from_proto(m.response_body_mode, &format!("{path}.response_body_mode"))?;
        if response_body == BodyMode::FullDuplexStreamed && m.response_trailer_mode != 1 {
            return Err(ConfigError::new(
                format!("{path}.response_trailer_mode"),
                "response_body_mode FULL_DUPLEX_STREAMED needs response_trailer_mode SEND",
            ));
        }
        // Envoy's own check: a full-duplex body ends with the trailers message.
        if request_body == BodyMode::FullDuplexStreamed && m.request_trailer_mode != 1 {
            return Err(ConfigError::new(
                format!("{path}.request_trailer_mode"),
                "request_body_mode FULL_DUPLEX_STREAMED needs request_trailer_mode SEND",
            ));
        }
        Ok(Self {
            request_headers: send(m.request_header_mode),
            response_headers: send(m.response_header_mode),
            request_body,
            response_body,
            // TrailerSendMode is a HeaderSendMode whose DEFAULT skips.
            request_trailers: m.request_trailer_mode == 1,
            response_trailers: m.response_trailer_mode == 1,
        })
    }
}

/// `HeaderMutationRules`: which headers a processor may change.
#[derive(Debug, Clone, Default)]
pub struct MutationRules {
    pub allow_all_routing: bool,
    pub allow_envoy: bool,
    pub disallow_system: bool,
    pub disallow_all: bool,
    pub allow_expression: Option<Regex>,
    pub disallow_expression: Option<Regex>,
    pub disallow_is_error: bool,
}

impl MutationRules {
    fn from_proto(r: &rules_pb::HeaderMutationRules) -> Result<Self> {
        let flag = |b: &Option<sentinel_proto::pb::google::protobuf::BoolValue>| {
            b.as_ref().is_some_and(|b| b.value)
        };
        Ok(Self {
            allow_all_routing: flag(&r.allow_all_routing),
            allow_envoy: flag(&r.allow_envoy),
            disallow_system: flag(&r.disallow_system),
            disallow_all: flag(&r.disallow_all),
            allow_expression: r
                .allow_expression
                .as_ref()
                .map(|m| full_regex(m, "allow_expression"))
                .transpose()?,
            disallow_expression: r
                .disallow_expression
                .as_ref()
                .map(|m| full_regex(m, "disallow_expression"))
                .transpose()?,
            disallow_is_error: flag(&r.disallow_is_error),
        })
    }

    /// Whether a processor may set or remove this (lower-case) header, per Envoy's rules.
    pub fn allows(&self, name: &str) -> bool {
        let routing = matches!(name, "host" | ":authority" | ":scheme" | ":method");
        if routing && !self.allow_all_routing {
            return false;
        }
        if name.starts_with("x-envoy") && !self.allow_envoy {
            return false;
        }
        if name.starts_with(':') && self.disallow_system && !routing {
            return false;
        }
        if self
            .disallow_expression
            .as_ref()
            .is_some_and(|r| r.is_match(name))
        {
            return false;
        }
        if self
            .allow_expression
            .as_ref()
            .is_some_and(|r| r.is_match(name))
        {
            return true;
        }
        !self.disallow_all
    }
}

#[derive(Debug, Clone)]
pub struct ExtProc {
    /// The processor's cluster (gRPC over HTTP/2).
    pub cluster: String,
    pub failure_mode_allow: bool,
    pub mode: ProcessingMode,
    pub message_timeout: Duration,
    pub mutation_rules: MutationRules,
    pub allow_mode_override: bool,
    pub disable_immediate_response: bool,
    /// Send and go: messages go without waiting and answers are ignored.
    pub observability_mode: bool,
    /// Its stats are `http.<hcm stat_prefix>.ext_proc.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// Sent with the first message of the request and of the response.
    pub request_attributes: Vec<Attribute>,
    pub response_attributes: Vec<Attribute>,
}

fn cluster_of(g: Option<&core_pb::GrpcService>, path: &str) -> Result<String> {
    match g.and_then(|g| g.target_specifier.as_ref()) {
        Some(core_pb::grpc_service::TargetSpecifier::EnvoyGrpc(e))
            if !e.cluster_name.is_empty() =>
        {
            Ok(e.cluster_name.clone())
        }
        _ => Err(ConfigError::new(
            path,
            "an envoy_grpc cluster_name is required",
        )),
    }
}

impl ExtProc {
    pub fn from_proto(c: &pb::ExternalProcessor) -> Result<Self> {
        Ok(Self {
            cluster: cluster_of(c.grpc_service.as_ref(), "grpc_service")?,
            failure_mode_allow: c.failure_mode_allow,
            mode: ProcessingMode::from_proto(c.processing_mode.as_ref(), "processing_mode")?,
            message_timeout: c
                .message_timeout
                .as_ref()
                .map(|d| duration(d, "message_timeout"))
                .transpose()?
                .unwrap_or(Duration::from_millis(200)),
            mutation_rules: c
                .mutation_rules
                .as_ref()
                .map(MutationRules::from_proto)
                .transpose()
                .map_err(|e| e.within("mutation_rules"))?
                .unwrap_or_default(),
            allow_mode_override: c.allow_mode_override,
            disable_immediate_response: c.disable_immediate_response,
            observability_mode: c.observability_mode,
            stat_prefix: c.stat_prefix.clone(),
            request_attributes: Attribute::list(&c.request_attributes, "request_attributes")?,
            response_attributes: Attribute::list(&c.response_attributes, "response_attributes")?,
        })
    }
}

/// `ExtProcPerRoute`: off for this route, or overrides of the filter's settings.
#[derive(Debug, Clone)]
pub enum ExtProcPerRoute {
    Disabled,
    Overrides(ExtProcOverrides),
}

/// `ExtProcOverrides`: each set field replaces the filter's. Levels merge field by field, the
/// most specific (route, then virtual host) first, as Envoy merges per-route configs. Its
/// `request_attributes`/`response_attributes` are ignored, as Envoy 1.40 ignores them (case
/// `ext_proc/per_route_overrides`).
#[derive(Debug, Clone, Default)]
pub struct ExtProcOverrides {
    pub mode: Option<ProcessingMode>,
    /// Another processor (`grpc_service`).
    pub cluster: Option<String>,
    pub failure_mode_allow: Option<bool>,
}

impl ExtProcOverrides {
    /// Takes the fields this one leaves unset from a less specific level.
    pub fn fill_from(&mut self, less_specific: &ExtProcOverrides) {
        let o = less_specific;
        self.mode = self.mode.or(o.mode);
        self.cluster = self.cluster.take().or_else(|| o.cluster.clone());
        self.failure_mode_allow = self.failure_mode_allow.or(o.failure_mode_allow);
    }

    /// Whether a request needs its own copy of the filter's config.
    pub fn changes_config(&self) -> bool {
        self.cluster.is_some() || self.failure_mode_allow.is_some()
    }
}

impl ExtProc {
    /// The filter's config with a route's overrides applied (the mode is the caller's).
    pub fn overridden(&self, o: &ExtProcOverrides) -> ExtProc {
        ExtProc {
            cluster: o.cluster.clone().unwrap_or_else(|| self.cluster.clone()),
            failure_mode_allow: o.failure_mode_allow.unwrap_or(self.failure_mode_allow),
            ..self.clone()
        }
    }
}

impl ExtProcPerRoute {
    pub fn from_proto(c: &pb::ExtProcPerRoute) -> Result<Self> {
        use pb::ext_proc_per_route::Override;
        match &c.r#override {
            Some(Override::Disabled(true)) => Ok(Self::Disabled),
            Some(Override::Overrides(o)) => {
                if o.async_mode {
                    return Err(ConfigError::new(
                        "overrides.async_mode",
                        "async mode is not supported (Envoy does not implement it either)",
                    ));
                }
                Ok(Self::Overrides(ExtProcOverrides {
                    mode: o
                        .processing_mode
                        .as_ref()
                        .map(|m| ProcessingMode::from_proto(Some(m), "overrides.processing_mode"))
                        .transpose()?,
                    cluster: o
                        .grpc_service
                        .as_ref()
                        .map(|g| cluster_of(Some(g), "overrides.grpc_service"))
                        .transpose()?,
                    failure_mode_allow: o.failure_mode_allow.as_ref().map(|b| b.value),
                }))
            }
            _ => Err(ConfigError::new(
                "override",
                "disabled: true or overrides is required",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(request_body: i32, response_body: i32, trailer: i32) -> pb::ProcessingMode {
        pb::ProcessingMode {
            request_body_mode: request_body,
            response_body_mode: response_body,
            request_trailer_mode: trailer,
            ..Default::default()
        }
    }

    #[test]
    fn body_modes_are_read_and_the_rest_refused() {
        let read = |m| ProcessingMode::from_proto(Some(&m), "processing_mode");
        assert_eq!(read(mode(0, 0, 0)).unwrap().request_body, BodyMode::None);
        assert_eq!(
            read(mode(1, 0, 0)).unwrap().request_body,
            BodyMode::Streamed
        );
        assert_eq!(
            read(mode(2, 0, 0)).unwrap().request_body,
            BodyMode::Buffered
        );
        assert_eq!(
            read(mode(3, 0, 0)).unwrap().request_body,
            BodyMode::BufferedPartial
        );
        for (v, m) in [
            (1, BodyMode::Streamed),
            (2, BodyMode::Buffered),
            (3, BodyMode::BufferedPartial),
        ] {
            assert_eq!(read(mode(0, v, 0)).unwrap().response_body, m);
        }
        let refused = |m| read(m).unwrap_err().to_string();
        assert!(refused(mode(4, 0, 0)).contains("request_trailer_mode"));
        assert_eq!(
            read(mode(4, 0, 1)).unwrap().request_body,
            BodyMode::FullDuplexStreamed
        );
        assert!(refused(mode(0, 4, 0)).contains("response_trailer_mode"));
        let response_trailers = pb::ProcessingMode {
            response_trailer_mode: 1,
            ..Default::default()
        };
        assert!(read(response_trailers).unwrap().response_trailers);
        let request_trailers = pb::ProcessingMode {
            request_trailer_mode: 1,
            ..Default::default()
        };
        assert!(read(request_trailers).unwrap().request_trailers);
    }
}
