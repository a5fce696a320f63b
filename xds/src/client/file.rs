//! `path_config_source`: a file holding a `DiscoveryResponse` (YAML or JSON), reloaded when
//! its contents change, as Envoy reloads on a move into place.

use std::path::PathBuf;
use std::time::Duration;

use sentinel_proto::pb::envoy::service::discovery::v3::DiscoveryResponse;
use sentinel_proto::pb::google::protobuf::Any;

pub struct FileUpdate {
    pub path: PathBuf,
    pub type_url: &'static str,
    pub version_info: String,
    pub resources: Vec<Any>,
}

/// Polls the file once a second; sends an update whenever its bytes change. Stops when
/// `send` reports that nobody listens.
pub async fn watch(path: PathBuf, type_url: &'static str, send: impl Fn(FileUpdate) -> bool) {
    let mut last: Option<Vec<u8>> = None;
    loop {
        match tokio::fs::read(&path).await {
            Ok(bytes) if last.as_ref() != Some(&bytes) => {
                match parse(&bytes) {
                    Ok(resp) => {
                        let update = FileUpdate {
                            path: path.clone(),
                            type_url,
                            version_info: resp.version_info,
                            resources: resp.resources,
                        };
                        if !send(update) {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(path = %path.display(), "cannot read xDS file: {e}"),
                }
                last = Some(bytes);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(path = %path.display(), "xDS file not readable: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn parse(bytes: &[u8]) -> Result<DiscoveryResponse, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let json = sentinel_proto::parse_text(text).map_err(|e| e.to_string())?;
    sentinel_proto::from_json(&json).map_err(|e| e.to_string())
}
