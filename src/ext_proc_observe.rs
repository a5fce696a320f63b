//! `observability_mode`: "send and go". Each message goes to the processor without waiting,
//! the processor's answers are read and ignored, and nothing it says changes the request.
//!
//! As in Envoy 1.40 (case `ext_proc/observability_mode`): mutations, immediate responses and
//! slow answers have no effect. A processor that cannot be reached still fails the request
//! (500) unless `failure_mode_allow`; Sentinel waits at most `message_timeout` to learn that,
//! when it opens the stream. Bodies go only in STREAMED mode (Envoy's API docs: other body
//! modes are ignored in this mode).

use std::time::Duration;

use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    external_processor_client::ExternalProcessorClient, ProcessingRequest,
};
use tokio::sync::{mpsc, oneshot};

use crate::ext_proc::{Conversation, Failure};
use crate::upstream::ClusterManager;

/// Envoy's default `deferred_close_timeout`: how long the stream stays open for the
/// processor's answers after the request is done.
const DEFERRED_CLOSE: Duration = Duration::from_secs(5);
/// Messages waiting for the stream; past this, messages are dropped rather than holding up
/// the request.
const QUEUE: usize = 64;

/// The sending side of an observed stream. Dropping it ends the stream (after the deferred
/// close).
pub(crate) struct Observer {
    tx: mpsc::Sender<ProcessingRequest>,
    _done: oneshot::Sender<()>,
}

impl Conversation {
    /// Sends a message without waiting for an answer. The first one opens the stream; the
    /// only error is a stream that cannot be opened.
    pub(crate) async fn observe(
        &mut self,
        clusters: &ClusterManager,
        mut msg: ProcessingRequest,
    ) -> Result<(), Failure> {
        self.stamp(&mut msg);
        if let Some(o) = &self.observer {
            match o.tx.try_send(msg) {
                Ok(()) => self.stats.stream_msgs_sent.inc(),
                Err(_) => {
                    tracing::debug!("ext_proc observability: processor too slow, message dropped")
                }
            }
            return Ok(());
        }
        let host = clusters
            .get(&self.config.cluster)
            .and_then(|c| c.pick())
            .ok_or(Failure::Error)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tx.try_send(msg).map_err(|_| Failure::Error)?;
        self.stats.streams_started.inc();
        self.stats.stream_msgs_sent.inc();
        let stats = self.stats.clone();
        let (opened_tx, opened_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let channel = host.grpc_channel();
        tokio::spawn(async move {
            let mut client = ExternalProcessorClient::new(channel);
            let call = client.process(tokio_stream::wrappers::ReceiverStream::new(rx));
            let mut answers = match call.await {
                Ok(r) => {
                    let _ = opened_tx.send(true);
                    r.into_inner()
                }
                Err(_) => {
                    stats.streams_failed.inc();
                    let _ = opened_tx.send(false);
                    return;
                }
            };
            let mut done = done_rx;
            loop {
                tokio::select! {
                    m = answers.message() => {
                        if !matches!(m, Ok(Some(_))) {
                            return;
                        }
                        stats.stream_msgs_received.inc();
                    }
                    _ = &mut done => {
                        let drain = async {
                            while let Ok(Some(_)) = answers.message().await {
                                stats.stream_msgs_received.inc();
                            }
                        };
                        let _ = tokio::time::timeout(DEFERRED_CLOSE, drain).await;
                        return;
                    }
                }
            }
        });
        self.observer = Some(Observer { tx, _done: done_tx });
        match tokio::time::timeout(self.config.message_timeout, opened_rx).await {
            Ok(Ok(false)) | Ok(Err(_)) => Err(Failure::Error),
            _ => Ok(()),
        }
    }
}
