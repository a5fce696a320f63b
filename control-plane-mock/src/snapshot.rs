//! A snapshot: the complete set of resources one node should see, with one version.
//!
//! The server never interprets resources beyond their type URL and name, so a snapshot can
//! carry anything that is an `Any`, including resources the proxy under test must reject.
//! That is deliberate: NACK paths are tested by putting a bad resource in a snapshot.

use std::{collections::BTreeMap, path::Path};

use base64::Engine as _;
use sentinel_proto::pb::google::protobuf::Any;
use serde_json::{json, Value};

use crate::{config_dump, error::SnapshotError, resource};

/// The resources one node should see, per type URL, each an ordered list of `(name, Any)`.
///
/// Order is kept as given (responses list resources in this order) and duplicate names are
/// allowed, so a test can provoke the "duplicate resource name" NACK.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    version: String,
    resources: BTreeMap<String, Vec<(String, Any)>>,
}

impl Snapshot {
    /// An empty snapshot with the given version.
    pub fn new(version: impl Into<String>) -> Self {
        Snapshot {
            version: version.into(),
            resources: BTreeMap::new(),
        }
    }

    /// The version sent as `version_info` (SotW) or `system_version_info` (delta).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Replaces the version.
    pub fn set_version(&mut self, version: impl Into<String>) {
        self.version = version.into();
    }

    /// Adds a typed message, named by its `name` (or `cluster_name` for a
    /// ClusterLoadAssignment). Replaces a resource of the same type and name.
    pub fn with<M: prost::Message + prost::Name>(mut self, message: &M) -> Self {
        let any = sentinel_proto::to_any(message);
        let name = resource::resource_name(&any).unwrap_or_default();
        self.insert(name, any);
        self
    }

    /// Adds an `Any` under an explicit name, whatever its payload. Replaces a resource of the
    /// same type and name.
    pub fn with_any(mut self, name: impl Into<String>, any: Any) -> Self {
        self.insert(name, any);
        self
    }

    /// Adds or replaces (same type URL and name, first match) a resource.
    pub fn insert(&mut self, name: impl Into<String>, any: Any) {
        let name = name.into();
        let list = self.resources.entry(any.type_url.clone()).or_default();
        match list.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = any,
            None => list.push((name, any)),
        }
    }

    /// Appends a resource even when the name is already present (for duplicate-name tests).
    pub fn push(&mut self, name: impl Into<String>, any: Any) {
        self.resources
            .entry(any.type_url.clone())
            .or_default()
            .push((name.into(), any));
    }

    /// Removes every resource of this type with this name; true when one was there.
    pub fn remove(&mut self, type_url: &str, name: &str) -> bool {
        let Some(list) = self.resources.get_mut(type_url) else {
            return false;
        };
        let before = list.len();
        list.retain(|(n, _)| n != name);
        let removed = list.len() != before;
        if list.is_empty() {
            self.resources.remove(type_url);
        }
        removed
    }

    /// The resources of one type, in order.
    pub fn resources(&self, type_url: &str) -> &[(String, Any)] {
        self.resources
            .get(type_url)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The type URLs that have at least one resource.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// The number of resources of all types.
    pub fn len(&self) -> usize {
        self.resources.values().map(Vec::len).sum()
    }

    /// True when there is no resource at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hash of every type, name and payload, used as the version when a file gives none,
    /// so an edited file always yields a new version and an unchanged one the same.
    pub fn content_hash(&self) -> String {
        let mut parts: Vec<&[u8]> = Vec::new();
        for (type_url, list) in &self.resources {
            parts.push(type_url.as_bytes());
            for (name, any) in list {
                parts.push(name.as_bytes());
                parts.push(&any.value);
            }
        }
        format!("{:016x}", resource::fnv1a(&parts))
    }

    /// Reads a snapshot from YAML or JSON text: either the snapshot shape
    /// `{version?, resources: [...]}`, a bare list of resources, or Envoy's admin
    /// `/config_dump` output. Without a version, the content hash is the version.
    pub fn from_text(text: &str) -> Result<Self, SnapshotError> {
        let value = sentinel_proto::parse_text(text).map_err(|source| SnapshotError::Json {
            context: "snapshot".into(),
            source,
        })?;
        Self::from_value(&value)
    }

    /// Reads a snapshot file (YAML or JSON, see [`Snapshot::from_text`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_text(&text).map_err(|e| match e {
            SnapshotError::Json { context, source } => SnapshotError::Json {
                context: format!("{}: {context}", path.display()),
                source,
            },
            SnapshotError::Shape(msg) => SnapshotError::Shape(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Reads a snapshot from an already parsed document (see [`Snapshot::from_text`]).
    pub fn from_value(value: &Value) -> Result<Self, SnapshotError> {
        let (version, entries): (Option<String>, Vec<Value>) = match value {
            Value::Array(list) => (None, list.clone()),
            Value::Object(map) if map.contains_key("configs") => {
                (None, config_dump::resources(value)?)
            }
            Value::Object(map) => {
                let version = match map.get("version") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(other) => {
                        return Err(SnapshotError::Shape(format!(
                            "version must be a string, not {other}"
                        )))
                    }
                };
                let entries = match map.get("resources") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(list)) => list.clone(),
                    Some(_) => {
                        return Err(SnapshotError::Shape("resources must be a list".into()));
                    }
                };
                if let Some(key) = map.keys().find(|k| *k != "version" && *k != "resources") {
                    return Err(SnapshotError::Shape(format!(
                        "unknown key {key:?}: a snapshot has `version` and `resources` \
                         (or is a config_dump with `configs`)"
                    )));
                }
                (version, entries)
            }
            _ => {
                return Err(SnapshotError::Shape(
                    "a snapshot is a map with `resources`, a list, or a config_dump".into(),
                ))
            }
        };
        let mut snapshot = Snapshot::default();
        for (index, entry) in entries.iter().enumerate() {
            let (name, any) = parse_entry(index, entry)?;
            snapshot.push(name, any);
        }
        snapshot.version = version.unwrap_or_else(|| snapshot.content_hash());
        Ok(snapshot)
    }

    /// The snapshot in the file format, so that `from_value(&s.to_json())` gives `s` back.
    /// Resources whose payload does not decode are written in the raw form.
    pub fn to_json(&self) -> Value {
        let mut out = Vec::new();
        for list in self.resources.values() {
            for (name, any) in list {
                out.push(entry_to_json(name, any));
            }
        }
        json!({ "version": self.version, "resources": out })
    }
}

/// One entry of `resources`: a resource (`{"@type": ...}`), a named resource
/// (`{name, resource}`), or raw bytes (`{name, type_url, value_base64}`) for payloads that
/// are not even valid protobuf.
fn parse_entry(index: usize, entry: &Value) -> Result<(String, Any), SnapshotError> {
    let context = |what: &str| format!("resource {index}{what}");
    let Value::Object(map) = entry else {
        return Err(SnapshotError::Shape(context(": expected a map")));
    };
    let explicit_name = map.get("name").and_then(Value::as_str).map(str::to_string);
    if map.contains_key("@type") {
        let any = sentinel_proto::any_from_json(entry).map_err(|source| SnapshotError::Json {
            context: context(""),
            source,
        })?;
        let name = resource::json_resource_name(&any.type_url, entry).ok_or_else(|| {
            SnapshotError::MissingName {
                index,
                type_url: any.type_url.clone(),
            }
        })?;
        return Ok((name, any));
    }
    if let Some(inner) = map.get("resource") {
        let any = sentinel_proto::any_from_json(inner).map_err(|source| SnapshotError::Json {
            context: context(".resource"),
            source,
        })?;
        let name = explicit_name
            .or_else(|| resource::json_resource_name(&any.type_url, inner))
            .ok_or_else(|| SnapshotError::MissingName {
                index,
                type_url: any.type_url.clone(),
            })?;
        return Ok((name, any));
    }
    if let (Some(type_url), Some(encoded)) = (
        map.get("type_url").and_then(Value::as_str),
        map.get("value_base64").and_then(Value::as_str),
    ) {
        let value = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| SnapshotError::Shape(context(&format!(": value_base64: {e}"))))?;
        let name = explicit_name.ok_or_else(|| SnapshotError::MissingName {
            index,
            type_url: type_url.to_string(),
        })?;
        let any = Any {
            type_url: type_url.to_string(),
            value,
        };
        return Ok((name, any));
    }
    Err(SnapshotError::Shape(context(
        ": expected {\"@type\": ...}, {name, resource} or {name, type_url, value_base64}",
    )))
}

fn entry_to_json(name: &str, any: &Any) -> Value {
    match sentinel_proto::any_to_json(any) {
        Ok(value)
            if resource::json_resource_name(&any.type_url, &value).as_deref() == Some(name) =>
        {
            value
        }
        Ok(value) => json!({ "name": name, "resource": value }),
        Err(_) => json!({
            "name": name,
            "type_url": any.type_url,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(&any.value),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{CLUSTER, ENDPOINT};

    const TEXT: &str = r#"
version: 7
resources:
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: c1
    connect_timeout: 1s
  - "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
    cluster_name: c1
  - name: other
    resource: { "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: c2 }
  - { name: broken, type_url: type.googleapis.com/envoy.config.cluster.v3.Cluster, value_base64: "//8=" }
"#;

    #[test]
    fn reads_every_entry_form_and_round_trips() {
        let s = Snapshot::from_text(TEXT).unwrap();
        assert_eq!(s.version(), "7");
        let names: Vec<_> = s
            .resources(CLUSTER)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["c1", "other", "broken"]);
        assert_eq!(s.resources(ENDPOINT)[0].0, "c1");
        assert_eq!(s.resources(CLUSTER)[2].1.value, vec![0xff, 0xff]);
        assert_eq!(Snapshot::from_value(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn version_defaults_to_content_hash() {
        let a = Snapshot::from_text("resources: []").unwrap();
        let b = Snapshot::from_text(TEXT.replace("version: 7", "").as_str()).unwrap();
        assert_eq!(a.version(), a.content_hash());
        assert_ne!(a.version(), b.version());
    }

    #[test]
    fn errors_name_the_resource() {
        let err = Snapshot::from_text(
            "resources: [ { \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: c, bogus: 1 } ]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("resource 0") && err.contains("bogus"), "{err}");
        let err = Snapshot::from_text(
            "resources: [ { \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster } ]",
        )
        .unwrap_err();
        assert!(
            matches!(err, SnapshotError::MissingName { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn insert_replaces_and_push_duplicates() {
        let any = |v: u8| Any {
            type_url: CLUSTER.into(),
            value: vec![v],
        };
        let mut s = Snapshot::new("1");
        s.insert("a", any(1));
        s.insert("a", any(2));
        assert_eq!(s.len(), 1);
        s.push("a", any(3));
        assert_eq!(s.len(), 2);
        assert!(s.remove(CLUSTER, "a"));
        assert!(s.is_empty());
    }
}
