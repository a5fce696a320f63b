//! Prepares the vendored descriptor set for embedding, in two forms:
//!
//! - `envoy-descriptors.bin`: every file, without its comments (`source_code_info`). The
//!   comments are 2.7 of the set's 3.4 MB, nothing reads them, and a `DescriptorPool` decoded
//!   with them holds ~40 MB more memory for the life of the process.
//! - `sentinel-descriptors.bin`: only the files that the types Sentinel reads and writes need
//!   (ROOTS and everything they import). This is the pool a running proxy keeps; the full one
//!   is decoded only when a document names a type outside it.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// Messages Sentinel reads or writes through reflection: the bootstrap and xDS resources (and
/// file-based xDS responses), and every typed_config type it implements.
const ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.service.discovery.v3.DiscoveryResponse",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.route.v3.FilterConfig",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
    "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
    "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "google.protobuf.Any",
];

fn main() {
    const SOURCE: &str = "envoy-descriptors.bin";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    let bytes = std::fs::read(SOURCE).expect("the vendored descriptor set is readable");
    let mut set = FileDescriptorSet::decode(bytes.as_slice()).expect("the descriptor set decodes");
    for file in &mut set.file {
        file.source_code_info = None;
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("envoy-descriptors.bin"), set.encode_to_vec())
        .expect("OUT_DIR is writable");

    // Which file defines each message, and which files each file imports.
    fn index<'a>(
        prefix: &str,
        m: &DescriptorProto,
        file: &'a str,
        out: &mut HashMap<String, &'a str>,
    ) {
        let name = format!("{prefix}.{}", m.name());
        for nested in &m.nested_type {
            index(&name, nested, file, out);
        }
        out.insert(name, file);
    }
    let mut defined_in = HashMap::new();
    for f in &set.file {
        for m in &f.message_type {
            index(f.package(), m, f.name(), &mut defined_in);
        }
    }
    let imports: HashMap<&str, &Vec<String>> =
        set.file.iter().map(|f| (f.name(), &f.dependency)).collect();
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = ROOTS
        .iter()
        .map(|r| {
            *defined_in
                .get(*r)
                .unwrap_or_else(|| panic!("{r} is not in {SOURCE}"))
        })
        .collect();
    while let Some(file) = todo.pop() {
        if keep.insert(file) {
            todo.extend(imports[file].iter().map(String::as_str));
        }
    }
    // The set lists files in dependency order; keeping that order keeps it valid.
    let pruned = FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| keep.contains(f.name()))
            .cloned()
            .collect(),
    };
    std::fs::write(out.join("sentinel-descriptors.bin"), pruned.encode_to_vec())
        .expect("OUT_DIR is writable");
}
