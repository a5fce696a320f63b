//! Envoy's protos for Sentinel.
//!
//! The generated message types come from `envoy-types`. Envoy's own YAML and JSON (bootstrap,
//! resource files, config_dump) are the proto3 JSON mapping of those messages, with `Any`
//! spelled `{"@type": ...}`; reading and writing that needs reflection, so this crate also
//! carries the descriptor set that `envoy-types` was generated from (vendored as
//! `envoy-descriptors.bin`, embedded without its comments) and converts through
//! `prost-reflect`. This keeps one schema: the upstream protos, never a hand-written mirror.
//!
//! Two pools, for memory: the files Sentinel's own types need (see `build.rs`), and the whole
//! API, decoded only when a document or an `Any` names a type outside the first (an extension
//! Sentinel does not implement, which must still resolve so that it is refused by name, or
//! skipped when optional, exactly as before). Both are decoded on use and freed by
//! [`release_pools`] once the work that needed them is done.

use std::sync::{Mutex, OnceLock, PoisonError};

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};

pub use envoy_types::pb;
pub use prost;

/// `type.googleapis.com/` prefix of every `Any` type URL.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// A descriptor set decoded on demand and kept until [`release_pools`]: a decoded pool takes
/// megabytes that an idle proxy should not keep, and decoding takes milliseconds, once per
/// batch of work (the bootstrap, one xDS update, one config dump).
struct Pool {
    bytes: &'static [u8],
    decoded: Mutex<Option<DescriptorPool>>,
}

impl Pool {
    const fn new(bytes: &'static [u8]) -> Self {
        Pool {
            bytes,
            decoded: Mutex::new(None),
        }
    }

    /// The decoded pool (a cheap handle: it shares the decoded set).
    fn get(&self) -> DescriptorPool {
        let mut slot = self.decoded.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert_with(|| {
            DescriptorPool::decode(self.bytes).expect("the embedded Envoy descriptor set decodes")
        })
        .clone()
    }

    fn release(&self) {
        // Dropped outside the lock: the last handle frees the whole set.
        let old = self
            .decoded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
    }
}

/// The files Sentinel's own types need, without comments (see `build.rs`).
static POOL: Pool = Pool::new(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/sentinel-descriptors.bin"
)));

/// Every file of the vendored set, without comments: decoded on the first miss in `POOL`.
static FULL: Pool = Pool::new(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/envoy-descriptors.bin"
)));

/// What runs after the pools were freed: the binary hands the memory back to the OS (its
/// allocator keeps freed pages otherwise). Set once.
static AFTER_RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets what runs after [`release_pools`] (the first call wins).
pub fn on_release(f: fn()) {
    let _ = AFTER_RELEASE.set(f);
}

/// Frees the decoded pools once a batch of work that needed them is done; descriptors still
/// held elsewhere keep theirs alive until they are dropped. The next use decodes again.
pub fn release_pools() {
    POOL.release();
    FULL.release();
    if let Some(f) = AFTER_RELEASE.get() {
        f();
    }
}

/// A message type of the Envoy API by full name (`envoy.config.listener.v3.Listener`).
pub fn message(full_name: &str) -> Option<MessageDescriptor> {
    POOL.get()
        .get_message_by_name(full_name)
        .or_else(|| FULL.get().get_message_by_name(full_name))
}

/// Runs a conversion against the small pool and, when that fails, against the whole API: a
/// document may name (in an `Any`) a type that only the whole API has.
fn in_pools<T>(convert: impl Fn(&DescriptorPool) -> Result<T, JsonError>) -> Result<T, JsonError> {
    convert(&POOL.get()).or_else(|_| convert(&FULL.get()))
}

/// Why a JSON or YAML document is not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The text is not YAML or JSON at all.
    #[error("not valid YAML/JSON: {0}")]
    Syntax(String),
    /// The document does not fit the message; `path` is the field path (`a.b[2].c`).
    #[error("{message_type}: {path}: {reason}")]
    Field {
        message_type: String,
        path: String,
        reason: String,
    },
    /// The message type is not in the descriptor pool.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The bytes do not decode as the message (an `Any` with a wrong payload).
    #[error("{message_type}: cannot decode: {reason}")]
    Decode {
        message_type: String,
        reason: String,
    },
}

/// Parses YAML or JSON text into a JSON value, as Envoy does before reading a message (YAML is
/// a superset of JSON, so one parser reads both).
pub fn parse_text(text: &str) -> Result<serde_json::Value, JsonError> {
    serde_yaml::from_str::<serde_json::Value>(text).map_err(|e| JsonError::Syntax(e.to_string()))
}

/// Reads a JSON value (proto3 JSON mapping) as the message `M`. Unknown fields are refused,
/// as Envoy refuses them, and the error names the field path.
pub fn from_json<M: prost::Message + prost::Name + Default>(
    value: &serde_json::Value,
) -> Result<M, JsonError> {
    in_pools(|pool| {
        let dynamic = dynamic_in(pool, &M::full_name(), value)?;
        dynamic.transcode_to::<M>().map_err(|e| JsonError::Decode {
            message_type: M::full_name(),
            reason: e.to_string(),
        })
    })
}

/// Reads a JSON value as the named message type, returning the reflective message.
pub fn dynamic_from_json(
    full_name: &str,
    value: &serde_json::Value,
) -> Result<DynamicMessage, JsonError> {
    in_pools(|pool| dynamic_in(pool, full_name, value))
}

fn dynamic_in(
    pool: &DescriptorPool,
    full_name: &str,
    value: &serde_json::Value,
) -> Result<DynamicMessage, JsonError> {
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.to_string()))?;
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize_with_options(desc, de, &DeserializeOptions::new()).map_err(|e| {
        JsonError::Field {
            message_type: full_name.to_string(),
            path: track.path().to_string(),
            reason: e.to_string(),
        }
    })
}

/// Reads an `Any` from its JSON form `{"@type": "...", ...}`.
pub fn any_from_json(value: &serde_json::Value) -> Result<pb::google::protobuf::Any, JsonError> {
    in_pools(|pool| {
        dynamic_in(pool, "google.protobuf.Any", value)?
            .transcode_to::<pb::google::protobuf::Any>()
            .map_err(|e| JsonError::Decode {
                message_type: "google.protobuf.Any".into(),
                reason: e.to_string(),
            })
    })
}

/// Writes a message as Envoy writes its JSON: proto field names, defaults omitted.
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    bytes_to_json(&M::full_name(), &message.encode_to_vec())
        .expect("a generated message matches its own descriptor")
}

/// Writes an `Any` as JSON with its `@type`; fails when the type is not in the pool or the
/// payload does not decode.
pub fn any_to_json(any: &pb::google::protobuf::Any) -> Result<serde_json::Value, JsonError> {
    encoded_to_json(&any.type_url, &any.value)
}

/// The JSON of a message of `type_url` encoded as `value`, with its `@type`, as an `Any` of
/// the two would give.
pub fn encoded_to_json(type_url: &str, value: &[u8]) -> Result<serde_json::Value, JsonError> {
    let name = type_url
        .rsplit_once('/')
        .map(|(_, n)| n)
        .unwrap_or(type_url);
    let mut json = bytes_to_json(name, value)?;
    if let serde_json::Value::Object(map) = &mut json {
        map.insert("@type".into(), serde_json::Value::String(type_url.into()));
    }
    Ok(json)
}

fn bytes_to_json(full_name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    in_pools(|pool| bytes_to_json_in(pool, full_name, bytes))
}

fn bytes_to_json_in(
    pool: &DescriptorPool,
    full_name: &str,
    bytes: &[u8],
) -> Result<serde_json::Value, JsonError> {
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.to_string()))?;
    let dynamic = DynamicMessage::decode(desc, bytes).map_err(|e| JsonError::Decode {
        message_type: full_name.to_string(),
        reason: e.to_string(),
    })?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| JsonError::Decode {
            message_type: full_name.to_string(),
            reason: e.to_string(),
        })
}

/// Packs a message into an `Any` with its canonical type URL.
pub fn to_any<M: prost::Message + prost::Name>(message: &M) -> pb::google::protobuf::Any {
    pb::google::protobuf::Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Unpacks an `Any` into `M`, checking the type URL.
pub fn from_any<M: prost::Message + prost::Name + Default>(
    any: &pb::google::protobuf::Any,
) -> Result<M, JsonError> {
    if any.type_url != M::type_url() {
        return Err(JsonError::Decode {
            message_type: M::full_name(),
            reason: format!("type URL is {}", any.type_url),
        });
    }
    M::decode(any.value.as_slice()).map_err(|e| JsonError::Decode {
        message_type: M::full_name(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::envoy::config::bootstrap::v3::Bootstrap;
    use pb::envoy::config::listener::v3::Listener;

    #[test]
    fn pools_decode_again_after_release() {
        let listener = "envoy.config.listener.v3.Listener";
        let held = message(listener).expect("in the small pool");
        release_pools();
        // A descriptor still held keeps its pool; the next lookup decodes a fresh one.
        assert_eq!(held.full_name(), listener);
        assert!(message(listener).is_some());
        assert!(message("envoy.extensions.filters.http.cors.v3.Cors").is_some());
    }

    #[test]
    fn bootstrap_yaml_with_typed_config_round_trips() {
        let text = r#"
node: { id: n1, cluster: c1 }
static_resources:
  listeners:
  - name: l1
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config: { name: r, virtual_hosts: [ { name: v, domains: ["*"] } ] }
          http_filters: [ { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } } ]
  clusters:
  - name: c
    connect_timeout: 0.25s
    type: STATIC
"#;
        let b: Bootstrap = from_json(&parse_text(text).unwrap()).unwrap();
        assert_eq!(b.node.as_ref().unwrap().id, "n1");
        let sr = b.static_resources.as_ref().unwrap();
        assert_eq!(
            sr.clusters[0].connect_timeout.as_ref().unwrap().nanos,
            250_000_000
        );
        let json = to_json(&b);
        assert_eq!(
            json["static_resources"]["clusters"][0]["connect_timeout"],
            "0.250s"
        );
        let l: Listener = from_json(&json["static_resources"]["listeners"][0]).unwrap();
        assert_eq!(l.name, "l1");
    }

    #[test]
    fn types_outside_the_small_pool_still_resolve() {
        let cors = "envoy.extensions.filters.http.cors.v3.Cors";
        assert!(
            POOL.get().get_message_by_name(cors).is_none(),
            "pruned away"
        );
        assert!(message(cors).is_some());
        assert!(message("envoy.config.listener.v3.Listener").is_some());
        assert!(message("no.such.Type").is_none());
        let any = parse_text(&format!("{{ \"@type\": \"type.googleapis.com/{cors}\" }}")).unwrap();
        let any = any_from_json(&any).unwrap();
        assert_eq!(
            any_to_json(&any).unwrap()["@type"],
            format!("type.googleapis.com/{cors}")
        );
    }

    #[test]
    fn unknown_field_names_its_path() {
        let v = parse_text("static_resources: { clusters: [ { name: c, bogus: 1 } ] }").unwrap();
        let err = from_json::<Bootstrap>(&v).unwrap_err().to_string();
        assert!(err.contains("static_resources.clusters[0]"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }
}
