//! Running one case: upstreams, the mock control plane, the proxy process, then the steps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use control_plane_mock::{EventKind, MockControlPlane, MockHandle, Snapshot};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::bootstrap::{self, ScaffoldInput, NODE_ID};
use crate::case::{self, Case, CaseFile, Request, Step};
use crate::check;
use crate::client::{self, Outgoing};
use crate::upstream::{self, Upstream};

/// How long the proxy may take to become ready (admin `/ready` 200, listener accepting).
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an ACK or NACK may take after a push.
const XDS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a step that changed the configuration retries its requests.
const EVENTUALLY: Duration = Duration::from_secs(5);
/// The pause between two tries of a request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The default per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole case may take.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// How to run the proxy under test.
pub struct ProxyConfig {
    /// The command template, with `{bootstrap}` and `{admin_port}`; run by `sh -c exec ...`.
    pub template: String,
    /// Where bootstraps and proxy logs go.
    pub work_dir: PathBuf,
}

/// Free loopback ports for the proxy to bind. Each port stays bound here until the pool is
/// dropped, just before the proxy starts, so two picks can never return the same port (a
/// listener that landed on the admin port made a case fail once in CI).
#[derive(Default)]
struct PortPool(Vec<std::net::TcpListener>);

impl PortPool {
    fn take(&mut self) -> Result<u16> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        self.0.push(l);
        Ok(port)
    }
}

/// The proxy process, killed by its PID when dropped.
struct Proxy {
    child: Child,
    log: PathBuf,
}

impl Proxy {
    fn spawn(cfg: &ProxyConfig, bootstrap: &Path, admin_port: u16, log: PathBuf) -> Result<Self> {
        let cmd = cfg
            .template
            .replace("{bootstrap}", &bootstrap.display().to_string())
            .replace("{admin_port}", &admin_port.to_string());
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {cmd}"))?;
        Ok(Proxy { child, log })
    }

    /// `Some(reason)` when the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "proxy exited ({status}); last log line: {}",
                last_line(&self.log)
            )),
            _ => None,
        }
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Everything one case run owns.
struct Run {
    case: Case,
    ports: BTreeMap<String, u16>,
    upstream_ports: BTreeMap<String, u16>,
    cp: Option<MockHandle>,
    xds_addr: SocketAddr,
    snapshot: Snapshot,
    version: u32,
    /// Whether a listener is meant to serve on `{{listener}}` from the start.
    uses_listener: bool,
}

/// Runs one case; `Err` is the reason it failed.
pub async fn run_case(file: &CaseFile, cfg: &ProxyConfig) -> Result<()> {
    let mut upstreams: Vec<Upstream> = Vec::new();
    let mut upstream_ports = BTreeMap::new();
    for (name, spec) in &file.case.upstreams {
        let u = upstream::start(name, spec).await?;
        upstream_ports.insert(name.clone(), u.port);
        upstreams.push(u);
    }
    // Everything that binds port 0 for good starts before the proxy's ports are picked.
    let cp = MockControlPlane::start("127.0.0.1:0".parse()?).await?;
    let xds_addr = cp.xds_addr();
    let mut pool = PortPool::default();
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    ports.insert("listener".into(), pool.take()?);
    for name in case::placeholders(&file.text) {
        if let Some(up) = name.strip_prefix("upstream.") {
            let port = upstream_ports
                .get(up)
                .ok_or_else(|| anyhow!("{{{{{name}}}}}: no upstream {up:?}"))?;
            ports.insert(name.clone(), *port);
        } else if name.starts_with("port.") {
            ports.insert(name.clone(), pool.take()?);
        } else if name != "listener" && name != "host_ip" {
            bail!("unknown placeholder {{{{{name}}}}}");
        }
    }
    let text = case::substitute(&file.text, |n| match n {
        "host_ip" => Some(sentinel::net::local_ipv4().to_string()),
        _ => ports.get(n).map(u16::to_string),
    })?;
    let case = case::parse(&text)?;
    let uses_listener =
        case.scaffold.contains(&case::Scaffold::Listener) || file.text.contains("{{listener}}");

    let mut run = Run {
        case,
        ports,
        upstream_ports,
        cp: Some(cp),
        xds_addr,
        snapshot: Snapshot::new("0"),
        version: 0,
        uses_listener,
    };
    let resources = run.case.resources.clone();
    let scaffold = run.case.scaffold.clone();
    run.push(&resources, &scaffold)?;

    let admin_port = pool.take()?;
    let stem = file.id.replace('/', "__");
    let bootstrap_path = cfg.work_dir.join(format!("{stem}.bootstrap.yaml"));
    std::fs::write(
        &bootstrap_path,
        bootstrap::bootstrap(admin_port, xds_addr.port(), run.case.delta),
    )?;
    drop(pool);
    let mut proxy = Proxy::spawn(
        cfg,
        &bootstrap_path,
        admin_port,
        cfg.work_dir.join(format!("{stem}.log")),
    )?;
    let result = run.steps(&mut proxy, admin_port).await;
    let result = match (result, proxy.exited()) {
        (Err(e), Some(exit)) => Err(e.context(exit)),
        (r, _) => r,
    };
    proxy.kill().await;
    if let Some(cp) = run.cp.take() {
        cp.shutdown().await;
    }
    drop(upstreams);
    result
}

impl Run {
    fn cp(&self) -> Result<&MockHandle> {
        self.cp
            .as_ref()
            .ok_or_else(|| anyhow!("the control plane is stopped"))
    }

    /// Serves the next version built from `resources` and `scaffold`.
    fn push(&mut self, resources: &[serde_yaml::Value], scaffold: &[case::Scaffold]) -> Result<()> {
        self.version += 1;
        let input = ScaffoldInput {
            listener_port: self.ports["listener"],
            hcm: &self.case.hcm,
            upstreams: &self.upstream_ports,
        };
        self.snapshot = bootstrap::snapshot(&self.version.to_string(), resources, scaffold, &input)
            .with_context(|| format!("version {}", self.version))?;
        self.cp()?.set_snapshot(NODE_ID, self.snapshot.clone());
        Ok(())
    }

    async fn steps(&mut self, proxy: &mut Proxy, admin_port: u16) -> Result<()> {
        if self.case.wait_ready {
            if let Err(e) = self.wait_ready(proxy, admin_port).await {
                return Err(e.context(format!("waiting for the proxy{}", self.nacks())));
            }
        }
        let steps = std::mem::take(&mut self.case.steps);
        for (i, step) in steps.iter().enumerate() {
            self.step(step, proxy)
                .await
                .with_context(|| format!("step {}", i + 1))?;
        }
        Ok(())
    }

    /// The NACKs recorded so far, as ` (NACKed: type: detail; ...)`, or nothing: why a proxy
    /// that never became ready rejected its configuration.
    fn nacks(&self) -> String {
        let Some(cp) = &self.cp else {
            return String::new();
        };
        let mut seen = Vec::new();
        for e in cp.events() {
            if e.kind != EventKind::Nack {
                continue;
            }
            let short = e.type_url.rsplit('.').next().unwrap_or_default();
            let line = format!("{short}: {}", e.error_detail.unwrap_or_default());
            if !seen.contains(&line) {
                seen.push(line);
            }
        }
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (NACKed: {})", seen.join("; "))
        }
    }

    async fn wait_ready(&self, proxy: &mut Proxy, admin_port: u16) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = "admin did not answer".to_string();
        loop {
            if let Some(exit) = proxy.exited() {
                bail!(exit);
            }
            match client::admin_get(admin_port, "/ready").await {
                Some((200, _)) => break,
                Some((status, body)) => last = format!("/ready answered {status} {}", body.trim()),
                None => {}
            }
            if Instant::now() > deadline {
                bail!("not ready after {} s: {last}", READY_TIMEOUT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let port = self.ports["listener"];
        let has_listener = !self
            .snapshot
            .resources(control_plane_mock::resource::LISTENER)
            .is_empty();
        if !has_listener || !self.uses_listener {
            return Ok(());
        }
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("ready, but the listener port {port} does not accept");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn step(&mut self, step: &Step, proxy: &mut Proxy) -> Result<()> {
        let mut changed = false;
        let mut started = false;
        if step.stop_control_plane || step.restart_control_plane {
            if let Some(cp) = self.cp.take() {
                cp.shutdown().await;
            }
            changed = true;
        }
        if step.start_control_plane || step.restart_control_plane {
            let cp = start_on(self.xds_addr).await?;
            cp.set_snapshot(NODE_ID, self.snapshot.clone());
            self.cp = Some(cp);
            changed = true;
            started = true;
        }
        // ACKs and NACKs count from here; a fresh control plane's log starts empty.
        let seq = if started {
            0
        } else {
            self.cp.as_ref().map_or(0, |cp| cp.next_event_seq())
        };
        if let Some(push) = &step.push {
            let scaffold = push.scaffold.clone().unwrap_or(self.case.scaffold.clone());
            self.push(&push.resources, &scaffold)?;
            changed = true;
        }
        if step.push.is_some() || started {
            self.wait_xds(step, seq).await?;
        }
        if let Some(ms) = step.wait_ms {
            tokio::time::sleep(Duration::from_millis(ms.min(case::MAX_WAIT_MS))).await;
        }
        let eventually = step.eventually.unwrap_or(changed);
        for (i, req) in step.requests.iter().enumerate() {
            self.request(req, eventually, proxy).await.map_err(|e| {
                anyhow!(
                    "request {} ({} {}{}): {e}",
                    i + 1,
                    if req.grpc { "POST" } else { &req.method },
                    req.host,
                    req.path
                )
            })?;
        }
        Ok(())
    }

    /// Waits for the ACKs (of the current version) and NACKs a step expects, among the
    /// events since `seq`.
    async fn wait_xds(&self, step: &Step, seq: u64) -> Result<()> {
        let cp = self.cp()?;
        let version = self.snapshot.version().to_string();
        for t in step.ack.iter().flat_map(|a| a.to_vec()) {
            let url = t.type_url();
            let found = cp
                .wait_for_event_since(
                    seq,
                    |e| {
                        (e.is(EventKind::Ack, url) && e.version_info == version)
                            || e.is(EventKind::Nack, url)
                    },
                    XDS_TIMEOUT,
                )
                .await;
            match found {
                Some(e) if e.kind == EventKind::Ack => {}
                Some(e) => bail!(
                    "expected an ACK of {t:?} version {version}, got a NACK: {}",
                    e.error_detail.unwrap_or_default()
                ),
                None => bail!("no ACK of {t:?} version {version} within {XDS_TIMEOUT:?}"),
            }
        }
        for t in step.nack.iter().flat_map(|a| a.to_vec()) {
            let url = t.type_url();
            let found = cp
                .wait_for_event_since(
                    seq,
                    |e| {
                        e.is(EventKind::Nack, url)
                            || (e.is(EventKind::Ack, url) && e.version_info == version)
                    },
                    XDS_TIMEOUT,
                )
                .await;
            match found {
                Some(e) if e.kind == EventKind::Nack => {
                    let detail = e.error_detail.unwrap_or_default();
                    if let Some(want) = &step.nack_contains {
                        if !detail.contains(want.as_str()) {
                            bail!("NACK of {t:?} does not mention {want:?}: {detail}");
                        }
                    }
                }
                Some(_) => bail!("expected a NACK of {t:?}, got an ACK of version {version}"),
                None => bail!("no NACK of {t:?} within {XDS_TIMEOUT:?}"),
            }
        }
        Ok(())
    }

    /// Sends one request (`repeat` times), retrying until it passes when `eventually`.
    async fn request(
        &self,
        req: &Request,
        eventually: bool,
        proxy: &mut Proxy,
    ) -> Result<(), String> {
        let port_name = req.port.as_deref().unwrap_or("listener");
        let port = self
            .ports
            .get(port_name)
            .or_else(|| self.ports.get(&format!("port.{port_name}")))
            .copied()
            .ok_or_else(|| format!("no port {port_name:?}"))?;
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut method = req.method.as_str();
        let mut protocol = req.protocol;
        if req.grpc {
            method = "POST";
            protocol = case::Protocol::H2c;
            headers.push(("content-type".into(), "application/grpc".into()));
            headers.push(("te".into(), "trailers".into()));
        }
        for (k, v) in &req.headers {
            for v in v.to_vec() {
                headers.push((k.clone(), v));
            }
        }
        let generated = req.body_bytes.map(|n| "x".repeat(n));
        let out = Outgoing {
            port,
            protocol,
            method,
            host: &req.host,
            path: &req.path,
            headers,
            body: generated.as_deref().or(req.body.as_deref()),
            trailers: req.trailers.clone().into_iter().collect(),
            raw: req.raw.as_deref().map(client::expand_raw),
            tunnel: req.tunnel.as_deref(),
            await_close: req.expect.closed.is_some(),
            timeout: req
                .timeout_ms
                .map_or(REQUEST_TIMEOUT, Duration::from_millis),
        };
        let deadline = Instant::now() + EVENTUALLY;
        for n in 0..req.repeat.unwrap_or(1) {
            loop {
                let outcome = client::send(&out).await;
                match check::check(&req.expect, &outcome) {
                    Ok(()) => break,
                    Err(e)
                        if !eventually || Instant::now() > deadline || proxy.exited().is_some() =>
                    {
                        return Err(if n > 0 {
                            format!("try {}: {e}", n + 1)
                        } else {
                            e
                        });
                    }
                    Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
        }
        Ok(())
    }
}

/// Starts the control plane on `addr` again, retrying briefly while the port is released.
async fn start_on(addr: SocketAddr) -> Result<MockHandle> {
    let mut last = None;
    for _ in 0..20 {
        match MockControlPlane::start(addr).await {
            Ok(cp) => return Ok(cp),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!("restarting the control plane on {addr}: {last:?}"))
}
