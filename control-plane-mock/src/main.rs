//! `control-plane-mock`: the mock xDS control plane as a process, for the README demo, the
//! conformance runner and manual testing against Envoy or Sentinel.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use control_plane_mock::{
    bind, serve_demo_upstream, serve_ext_proc, serve_http_api, serve_rls, DirWatcher,
    MockControlPlane,
};
use tracing_subscriber::EnvFilter;

/// A mock xDS control plane (ADS SotW/delta, LDS/RDS/CDS/EDS) serving snapshot files.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the xDS gRPC server (HTTP/2 plaintext).
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_addr: SocketAddr,
    /// Address of the HTTP API (POST/GET /snapshot/<node>, GET /events, GET /healthz).
    #[arg(long, default_value = "127.0.0.1:18001")]
    http_addr: SocketAddr,
    /// Directory of snapshot files, one per node: <node-id>.yaml|.yml|.json (`*` is the
    /// default node). Polled for changes.
    #[arg(long)]
    snapshots: Option<PathBuf>,
    /// How often to poll the snapshot directory, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Also run a demo HTTP upstream on this address (answers 200, echoing method and path).
    #[arg(long)]
    upstream: Option<SocketAddr>,
    /// Also run an ext_proc server on this address that passes every message on unchanged
    /// (for benchmarks).
    #[arg(long)]
    ext_proc_addr: Option<SocketAddr>,
    /// Also run a rate limit service on this address that allows every request (for
    /// benchmarks).
    #[arg(long)]
    rls_addr: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let cp = MockControlPlane::start(args.xds_addr)
        .await
        .context("starting the xDS server")?;
    let controller = cp.controller();

    if let Some(dir) = &args.snapshots {
        anyhow::ensure!(
            dir.is_dir(),
            "--snapshots {} is not a directory",
            dir.display()
        );
        let mut watcher = DirWatcher::new(dir);
        let loaded = watcher.scan(&controller);
        tracing::info!(dir = %dir.display(), loaded, "snapshot directory loaded");
        tokio::spawn(watcher.run(controller.clone(), Duration::from_millis(args.poll_ms)));
    }

    let http = bind(args.http_addr).context("binding the HTTP API")?;
    tracing::info!(addr = %args.http_addr, "HTTP API listening");
    tokio::spawn(serve_http_api(http, controller.clone()));

    if let Some(addr) = args.upstream {
        let listener = bind(addr).context("binding the demo upstream")?;
        tracing::info!(%addr, "demo upstream listening");
        tokio::spawn(serve_demo_upstream(
            listener,
            format!("hello from the demo upstream at {addr}"),
        ));
    }

    if let Some(addr) = args.ext_proc_addr {
        let listener = bind(addr).context("binding the ext_proc server")?;
        tracing::info!(%addr, "pass-through ext_proc server listening");
        tokio::spawn(serve_ext_proc(listener));
    }
    if let Some(addr) = args.rls_addr {
        let listener = bind(addr).context("binding the rate limit service")?;
        tracing::info!(%addr, "allow-all rate limit service listening");
        tokio::spawn(serve_rls(listener));
    }

    wait_for_signal().await?;
    tracing::info!("shutting down");
    cp.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM (what scripts send).
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
