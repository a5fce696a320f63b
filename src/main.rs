//! The `sentinel` binary: Envoy's command line in front of [`sentinel::SentinelApp`].

use std::process::ExitCode;

use sentinel::cli::{CliError, Mode, Options};
use sentinel::SentinelApp;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sentinel_proto::on_release(sentinel::memory::collect_thread_heap);
    let options = match Options::parse(std::env::args()) {
        Ok(o) => o,
        Err(CliError::Info(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(options.tracing_filter()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let app = match SentinelApp::new(options.clone()) {
        Ok(app) => app,
        Err(e) => {
            eprintln!(
                "error initializing configuration '{}': {e}",
                config_name(&options)
            );
            return ExitCode::FAILURE;
        }
    };
    if options.mode == Mode::Validate {
        return match app.validate() {
            Ok(()) => {
                println!("configuration '{}' OK", config_name(&options));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "error initializing configuration '{}': {e}",
                    config_name(&options)
                );
                ExitCode::FAILURE
            }
        };
    }
    // Envoy's main thread: admin, listener and cluster updates. Requests are served by the
    // `--concurrency` workers the app starts (`sentinel::workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let mut running = match app.start().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        // The bootstrap is read: this thread's part of the descriptor pools can go.
        sentinel_proto::release_pools();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let drain = tokio::select! {
            _ = term.recv() => {
                tracing::info!("caught SIGTERM; draining for up to {:?}", options.drain_time);
                options.drain_time
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("caught SIGINT");
                std::time::Duration::ZERO
            }
            _ = running.quit.recv() => {
                tracing::info!("shutting down on /quitquitquit");
                std::time::Duration::ZERO
            }
        };
        running.shutdown(drain).await;
        ExitCode::SUCCESS
    })
}

fn config_name(o: &Options) -> String {
    o.config_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
