//! Strips the comments (`source_code_info`) from the vendored descriptor set before it is
//! embedded. They are 2.7 of its 3.4 MB, nothing reads them, and a `DescriptorPool` decoded
//! with them holds ~40 MB more memory for the life of the process.

use prost::Message;
use prost_types::FileDescriptorSet;

fn main() {
    const SOURCE: &str = "envoy-descriptors.bin";
    println!("cargo:rerun-if-changed={SOURCE}");
    let bytes = std::fs::read(SOURCE).expect("the vendored descriptor set is readable");
    let mut set = FileDescriptorSet::decode(bytes.as_slice()).expect("the descriptor set decodes");
    for file in &mut set.file {
        file.source_code_info = None;
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("envoy-descriptors.bin"), set.encode_to_vec())
        .expect("OUT_DIR is writable");
}
