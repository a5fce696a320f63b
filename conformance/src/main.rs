//! `conformance`: runs the data-driven cases under `conformance/cases/` against a proxy
//! (real Envoy, the oracle, or Sentinel) and prints `PASS id` / `FAIL id: reason` per case,
//! then `N passed, M failed`. Exit status 0 only when every case passed.
//!
//! ```sh
//! conformance --proxy "$ENVOY -c {bootstrap} --use-dynamic-base-id --drain-time-s 1 -l warn" --name envoy
//! conformance --proxy "target/debug/sentinel -c {bootstrap} --drain-time-s 1 -l warn" --name sentinel \
//!     --report docs/conformance.md
//! ```

mod bootstrap;
mod case;
mod check;
mod client;
mod ext_proc;
mod report;
mod runner;
mod upstream;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;

#[derive(Parser, Debug)]
#[command(about = "Runs Sentinel's conformance cases against a proxy")]
struct Args {
    /// The proxy command; `{bootstrap}` and `{admin_port}` are substituted. Run with `sh -c`.
    #[arg(long)]
    proxy: String,
    /// The report column: `envoy` or `sentinel` (guessed from the command when absent).
    #[arg(long)]
    name: Option<String>,
    /// Only the cases whose id (`group/name`) contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Write or update this Markdown report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The cases directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/cases"))]
    cases: PathBuf,
    /// Where bootstraps and proxy logs go (default: a directory under the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Cases run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conformance: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conformance: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONFORMANCE_LOG")
                .unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let name = match &args.name {
        Some(n) => n.clone(),
        None if args.proxy.contains("sentinel") => "sentinel".into(),
        None => "envoy".into(),
    };
    let column = report::PROXIES.iter().position(|p| *p == name);
    if args.report.is_some() && column.is_none() {
        bail!(
            "--name must be one of {:?} to write a report",
            report::PROXIES
        );
    }
    let mut cases = case::load_all(&args.cases)?;
    if let Some(f) = &args.filter {
        cases.retain(|c| c.id.contains(f.as_str()));
    }
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("conformance-{name}")));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let cfg = runner::ProxyConfig {
        template: args.proxy.clone(),
        work_dir: work_dir.clone(),
    };
    eprintln!(
        "running {} case(s) against {name}; logs in {}",
        cases.len(),
        work_dir.display()
    );
    let started = Instant::now();
    let cfg = &cfg;
    let mut results = futures::stream::iter(cases.iter().map(|file| async move {
        let outcome = tokio::time::timeout(runner::CASE_TIMEOUT, runner::run_case(file, cfg)).await;
        let outcome = match outcome {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(_) => Err(format!("timed out after {:?}", runner::CASE_TIMEOUT)),
        };
        (file, outcome)
    }))
    .buffered(args.jobs.max(1));
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut rows = match &args.report {
        Some(p) => report::read(p)?,
        None => Default::default(),
    };
    while let Some((file, outcome)) = results.next().await {
        let cell = match &outcome {
            Ok(()) => {
                passed += 1;
                println!("PASS {}", file.id);
                "PASS".to_string()
            }
            Err(reason) => {
                failed += 1;
                let reason = reason.replace('\n', " ");
                println!("FAIL {}: {reason}", file.id);
                format!("FAIL: {reason}")
            }
        };
        let _ = std::io::stdout().flush();
        if let Some(col) = column {
            let row = rows.entry(file.id.clone()).or_default();
            row.description = file.case.description.trim().to_string();
            row.results[col] = cell;
        }
    }
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    if let Some(path) = &args.report {
        if args.filter.is_none() {
            // Cases that no longer exist leave the report.
            let ids: std::collections::BTreeSet<&str> =
                cases.iter().map(|c| c.id.as_str()).collect();
            rows.retain(|id, _| ids.contains(id.as_str()));
        }
        report::write(path, &rows)?;
    }
    Ok(failed == 0)
}
