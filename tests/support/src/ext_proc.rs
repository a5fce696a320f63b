//! A scripted ext_proc processor: one function answers every message of every stream.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sentinel_proto::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request,
    processing_response::Response,
    ProcessingRequest, ProcessingResponse,
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

/// What the processor does with one message.
pub enum Reply {
    Send(Response),
    /// Answer after a while, as a slow processor.
    After(Duration, Response),
    /// Send nothing for this message.
    Skip,
    /// Several answers to one message (FULL_DUPLEX_STREAMED streams the body back in pieces).
    Many(Vec<Response>),
    /// End the stream (gRPC OK) instead of answering, as a processor that gives up.
    End,
}

struct Scripted<S, F> {
    answer: Arc<F>,
    state: PhantomData<fn() -> S>,
}

#[tonic::async_trait]
impl<S, F> ExternalProcessor for Scripted<S, F>
where
    S: Default + Send + 'static,
    F: Fn(&mut S, Request) -> Reply + Send + Sync + 'static,
{
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        req: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let answer = self.answer.clone();
        tokio::spawn(async move {
            let mut state = S::default();
            while let Ok(Some(msg)) = inbound.message().await {
                let Some(request) = msg.request else { continue };
                let responses = match answer(&mut state, request) {
                    Reply::Send(r) => vec![r],
                    Reply::After(delay, r) => {
                        tokio::time::sleep(delay).await;
                        vec![r]
                    }
                    Reply::Skip => continue,
                    Reply::Many(rs) => rs,
                    Reply::End => return,
                };
                for response in responses {
                    let msg = ProcessingResponse {
                        response: Some(response),
                        ..Default::default()
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `answer` as an ext_proc processor (gRPC, h2c) on a loopback port. Each stream has
/// its own state, `S::default()` at first, that `answer` may keep things in (say, `:path`).
pub async fn ext_proc_processor<S, F>(answer: F) -> SocketAddr
where
    S: Default + Send + 'static,
    F: Fn(&mut S, Request) -> Reply + Send + Sync + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let service = ExternalProcessorServer::new(Scripted {
        answer: Arc::new(answer),
        state: PhantomData,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    addr
}
