//! Serving snapshot files from a directory: `<dir>/<node-id>.yaml|.yml|.json`, polled for
//! changes. Polling mtimes (not inotify) keeps it dependency-free and works on every
//! filesystem; half a second is quick enough for a human editing a file.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::{Controller, Snapshot};

/// Watches one directory of snapshot files and mirrors it into a [`Controller`].
#[derive(Debug)]
pub struct DirWatcher {
    dir: PathBuf,
    /// Node id -> (path, mtime, length) of the file last loaded, or attempted.
    seen: HashMap<String, (PathBuf, SystemTime, u64)>,
}

impl DirWatcher {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirWatcher {
            dir: dir.into(),
            seen: HashMap::new(),
        }
    }

    /// Loads new and changed files and removes the snapshots of deleted ones; returns how
    /// many nodes changed. A file that fails to parse is logged and its node keeps the
    /// snapshot it had, so a half-saved edit never blanks the proxy.
    pub fn scan(&mut self, controller: &Controller) -> usize {
        let files = match list(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list snapshot directory");
                return 0;
            }
        };
        let mut changes = 0;
        for (node, (path, mtime, len)) in &files {
            let unchanged = self
                .seen
                .get(node)
                .is_some_and(|(p, m, l)| p == path && m == mtime && l == len);
            if unchanged {
                continue;
            }
            self.seen.insert(node.clone(), (path.clone(), *mtime, *len));
            match Snapshot::from_file(path) {
                Ok(snapshot) => {
                    tracing::info!(node = %node, file = %path.display(), version = snapshot.version(), "snapshot file loaded");
                    controller.set_snapshot(node, snapshot);
                    changes += 1;
                }
                Err(e) => tracing::error!(node = %node, error = %e, "snapshot file rejected"),
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|node| !files.contains_key(*node))
            .cloned()
            .collect();
        for node in gone {
            self.seen.remove(&node);
            tracing::info!(node = %node, "snapshot file removed");
            controller.remove_snapshot(&node);
            changes += 1;
        }
        changes
    }

    /// Scans every `interval`, forever (until the task is dropped or aborted).
    pub async fn run(mut self, controller: Controller, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.scan(&controller);
        }
    }
}

/// The snapshot files of a directory by node id (the file stem). When a node has several
/// files, the first path in sorted order wins.
fn list(dir: &Path) -> std::io::Result<HashMap<String, (PathBuf, SystemTime, u64)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    paths.sort();
    let mut files = HashMap::new();
    for path in paths {
        let (Some(node), Ok(meta)) = (
            path.file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_string),
            std::fs::metadata(&path),
        ) else {
            continue;
        };
        if !meta.is_file() || files.contains_key(&node) {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        files.insert(node, (path, mtime, meta.len()));
    }
    Ok(files)
}
