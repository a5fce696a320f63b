#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: xDS snapshot generation, push-and-poll timing, load-generator
output parsing and the Markdown report.

Standard library only (no PyYAML): snapshots are written as JSON, which the mock control
plane reads as YAML's superset.

Subcommands (each prints one line of JSON or Markdown on stdout, diagnostics on stderr):
  base        the traffic snapshot: 1 listener -> 1 RDS route config -> 1 EDS cluster -> nginx
  filters     the traffic snapshot plus two listeners whose connection managers call a peer
              first: a headers-only ext_proc round trip, and an RLS check (ratelimit filter)
  scale       the xDS-at-scale snapshot: N clusters (EDS) + their endpoints, N virtual hosts
              (one route each) over R route configs, L listeners
  push-wait   POST a snapshot to the mock, poll a URL until it answers as expected; prints
              the elapsed seconds and any NACKs the proxy sent meanwhile
  wrk         parse `wrk --latency` output
  h2load      parse `h2load` output
  report      medians and Sentinel/Envoy ratios from the results TSV, as Markdown
  splice      put a generated block into docs/benchmarks.md between its markers
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.request

# Type URLs of the resources in the snapshots.
T_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
T_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
T_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
T_CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
T_HCM = ("type.googleapis.com/envoy.extensions.filters.network."
         "http_connection_manager.v3.HttpConnectionManager")
T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

ADS = {"ads": {}, "resource_api_version": "V3"}


# --- snapshots ---------------------------------------------------------------------------------

def listener(name, port, route_config, filters=()):
    """A plain-HTTP listener whose connection manager takes its routes over RDS (ADS), with
    `filters` (HTTP filter entries) before the router."""
    return {
        "@type": T_LISTENER,
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": T_HCM,
                    "stat_prefix": name,
                    "rds": {"route_config_name": route_config, "config_source": ADS},
                    "http_filters": [*filters, {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": T_ROUTER},
                    }],
                },
            }],
        }],
    }


def cluster(name):
    """An EDS cluster (endpoints over ADS)."""
    return {
        "@type": T_CLUSTER,
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": ADS},
    }


def cla(name, port):
    """The ClusterLoadAssignment of `name`: one endpoint, nginx on loopback."""
    return {
        "@type": T_CLA,
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
    }


def vhost(name, domains, cluster_name, marker=None):
    """A virtual host with one catch-all route to `cluster_name`; `marker`, when set, adds a
    response header `x-bench-marker` on the route (used to time a one-route change)."""
    route = {"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}
    if marker is not None:
        route["response_headers_to_add"] = [
            {"header": {"key": "x-bench-marker", "value": marker}}]
    return {"name": name, "domains": domains, "routes": [route]}


def base_resources(listen_port, upstream_port):
    """The traffic config: listener -> route config -> EDS cluster -> nginx."""
    return [
        listener("bench_listener", listen_port, "bench_route"),
        {"@type": T_ROUTE, "name": "bench_route",
         "virtual_hosts": [vhost("bench", ["*"], "bench_upstream")]},
        cluster("bench_upstream"),
        cla("bench_upstream", upstream_port),
    ]


def grpc_cluster(name, port):
    """A static HTTP/2 cluster for a gRPC peer on loopback."""
    return {
        "@type": T_CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def filter_resources(a):
    """The traffic config, plus listener `ext_proc` (port a.ext_proc_port): the request headers
    go to the ext_proc peer and back (response headers skipped: one round trip per request),
    and listener `ratelimit` (port a.ratelimit_port): one RLS check per request (a generic_key
    descriptor on the route). Both fail closed, so a broken peer shows as errors, not speed."""
    ext_proc = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "bench_ext_proc"}},
            "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SKIP"},
            "message_timeout": "1s",
        },
    }
    ratelimit = {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "bench",
            "timeout": "1s",
            "failure_mode_deny": True,
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": "bench_rls"}},
                "transport_api_version": "V3",
            },
        },
    }
    limited = vhost("bench", ["*"], "bench_upstream")
    limited["routes"][0]["route"]["rate_limits"] = [
        {"actions": [{"generic_key": {"descriptor_value": "bench"}}]}]
    return base_resources(a.listen_port, a.upstream_port) + [
        listener("ext_proc", a.ext_proc_port, "bench_route", [ext_proc]),
        listener("ratelimit", a.ratelimit_port, "bench_limited", [ratelimit]),
        {"@type": T_ROUTE, "name": "bench_limited", "virtual_hosts": [limited]},
        grpc_cluster("bench_ext_proc", a.ext_proc_peer),
        grpc_cluster("bench_rls", a.rls_peer),
    ]


def cmd_filters(a):
    json.dump({"version": a.version, "resources": filter_resources(a)}, sys.stdout)


def cmd_base(a):
    resources = base_resources(a.listen_port, a.upstream_port)
    json.dump({"version": a.version, "resources": resources}, sys.stdout)


def cmd_scale(a):
    """Clusters c0..c{N-1}, each with its CLA; virtual host i (domain svc-i.bench) routes to
    cluster ci and lives in route config routes_{i mod R}; listener j (port base+j) uses
    routes_{j mod R}. The last route is svc-{N-1}.bench, reachable on the last listener whose
    route config holds it. With --keep-listen-port the traffic listener, its route and cluster
    stay in the snapshot, so requests on an already serving listener can be watched."""
    n, r, nl = a.clusters, a.route_configs, a.listeners
    resources = []
    for i in range(n):
        resources.append(cluster(f"c{i}"))
        resources.append(cla(f"c{i}", a.upstream_port))
    vhosts = [[] for _ in range(r)]
    for i in range(n):
        marker = a.marker if i == n - 1 else None
        vhosts[i % r].append(vhost(f"svc-{i}", [f"svc-{i}.bench"], f"c{i}", marker))
    for k in range(r):
        resources.append({"@type": T_ROUTE, "name": f"routes_{k}", "virtual_hosts": vhosts[k]})
    for j in range(nl):
        resources.append(listener(f"l{j}", a.listener_base_port + j, f"routes_{j % r}"))
    if a.keep_listen_port:
        resources.extend(base_resources(a.keep_listen_port, a.upstream_port))
    json.dump({"version": a.version, "resources": resources}, sys.stdout, separators=(",", ":"))


def cmd_scale_probe(a):
    """Prints `PORT HOST` of the last route: the highest listener using its route config."""
    n, r, nl = a.clusters, a.route_configs, a.listeners
    k = (n - 1) % r
    j = max(j for j in range(nl) if j % r == k)
    print(a.listener_base_port + j, f"svc-{n - 1}.bench")


# --- push and poll -----------------------------------------------------------------------------

def http_get(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def probe(port, host, path, timeout):
    """One GET through the proxy; returns (status, headers dict, body) or raises OSError."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def cmd_push_wait(a):
    """POSTs the snapshot file, then polls until the probe answers with nginx's body (and the
    expected header when given), bounded by --timeout. Reports the seconds from just before
    the POST returned to the first good answer, the last ACK's time and the NACKs seen."""
    last_seq = -1
    try:
        events = json.loads(http_get(f"{a.api}/events", 5))
        last_seq = max((e["seq"] for e in events), default=-1)
    except (OSError, ValueError) as e:
        print(f"push-wait: cannot read events: {e}", file=sys.stderr)
    with open(a.file, "rb") as f:
        body = f.read()
    # Meanwhile, requests on a listener that was already serving: the worst latency seen and
    # how many failed tell whether applying the config stalls the data plane.
    steady = {"max_ms": 0.0, "failed": 0, "count": 0}
    stop = threading.Event()

    def watch_steady():
        while not stop.is_set():
            t = time.monotonic()
            try:
                status, _, payload = probe(a.steady_port, "bench", "/", 30)
                if status != 200 or payload != a.expect_body.encode():
                    steady["failed"] += 1
            except OSError:
                steady["failed"] += 1
            steady["max_ms"] = max(steady["max_ms"], (time.monotonic() - t) * 1000)
            steady["count"] += 1
            stop.wait(0.01)

    watcher = threading.Thread(target=watch_steady, daemon=True)
    if a.steady_port:
        watcher.start()
    # The clock starts when the control plane has accepted the snapshot (the POST returned):
    # parsing a 6 MB snapshot takes the mock ~1 s, the same for both proxies, and is reported
    # apart as post_seconds.
    t_post = time.monotonic()
    req = urllib.request.Request(f"{a.api}/snapshot/{a.node}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
    t0 = time.monotonic()
    t0_unix_ms = time.time() * 1000
    t_posted = t0 - t_post
    want_header = None
    if a.expect_header:
        k, _, v = a.expect_header.partition("=")
        want_header = (k.lower(), v)
    ok, polls, last_error, answers = False, 0, "", []
    deadline = t0 + a.timeout
    while time.monotonic() < deadline:
        polls += 1
        try:
            status, headers, payload = probe(a.port, a.host, a.path, 2)
            if status == 200 and payload == a.expect_body.encode() and (
                    want_header is None or headers.get(want_header[0]) == want_header[1]):
                ok = True
                break
            last_error = f"HTTP {status} {payload[:80]!r}"
            # An answer other than the expected one before the route is served (a 404 or 503
            # from a listener whose routes or clusters are not there yet): Envoy keeps such a
            # listener warming instead, so it is worth reporting.
            if a.expect_header is None and last_error not in answers and len(answers) < 5:
                answers.append(last_error)
        except OSError as e:
            last_error = f"{type(e).__name__}: {e}"
        time.sleep(a.interval)
    seconds = time.monotonic() - t0
    stop.set()
    if a.steady_port:
        watcher.join(35)
    # What the proxy told the control plane since the push, as the control plane recorded it:
    # NACKs (with their error), and when each pushed type was ACKed at the pushed version
    # (waited for, still within --timeout, since an ACK may trail the first good answer).
    version = json.loads(body).get("version", "")
    nacks, last_ack_ms = [], None
    while True:
        try:
            events = json.loads(http_get(f"{a.api}/events?since={last_seq + 1}", 10))
        except (OSError, ValueError) as e:
            print(f"push-wait: cannot read events: {e}", file=sys.stderr)
            break
        nacks = [{"type": e.get("type_url", "").rsplit(".", 1)[-1],
                  "error": (e.get("error_detail") or "")[:400]}
                 for e in events if e.get("kind") == "NACK"]
        sent = {e["type_url"] for e in events
                if e.get("kind") == "RESPONSE" and e.get("version_info") == version}
        acked = {}
        for e in events:
            if e.get("kind") == "ACK" and e.get("version_info") == version:
                acked.setdefault(e["type_url"], e.get("unix_ms", 0))
        if sent and sent <= acked.keys():
            last_ack_ms = max(acked[t] for t in sent)
            break
        if nacks or not ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    ack = round((last_ack_ms - t0_unix_ms) / 1000, 3) if last_ack_ms else "nan"
    stall = f"{steady['max_ms']:.1f}" if steady["count"] else "nan"
    # Line 1 for `read`: ok seconds ack_seconds nack_count steady_max_ms steady_failed
    # early_answers.
    # Line 2: details for humans.
    print(f"{int(ok)} {seconds:.3f} {ack} {len(nacks)} {stall} {steady['failed']} {len(answers)}")
    print(json.dumps({"post_seconds": round(t_posted, 3), "polls": polls,
                      "last_error": last_error[:300], "answers_before_served": answers,
                      "steady_requests": steady["count"], "nacks": nacks[:3]}))


# --- load generator output ---------------------------------------------------------------------

def to_ms(text):
    """wrk durations: 812.00us, 1.23ms, 2.01s, 1.00m."""
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
    for unit in ("us", "ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def shell_words(out, keys):
    """One line of space-separated values in `keys` order ("nan" for missing), for `read`."""
    return " ".join("nan" if out[k] is None else str(out[k]) for k in keys)


def cmd_wrk(_a):
    """Parses wrk --latency output from stdin; prints `rps p50_ms p99_ms requests errors
    non2xx` (errors = socket errors of every kind)."""
    out = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": 0,
           "non2xx": 0}
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        if f[0] == "Requests/sec:":
            out["rps"] = float(f[1])
        elif f[0] == "50.000%" or f[0] == "50%":
            out["p50_ms"] = to_ms(f[1])
        elif f[0] == "99.000%" or f[0] == "99%":
            out["p99_ms"] = to_ms(f[1])
        elif len(f) > 2 and f[1] == "requests" and f[2] == "in":
            out["requests"] = int(f[0])
        elif f[0] == "Socket" and f[1] == "errors:":
            # Socket errors: connect 0, read 0, write 0, timeout 0
            out["errors"] = sum(int(x.strip(",")) for x in f[3::2])
        elif f[0] == "Non-2xx":
            out["non2xx"] = int(f[-1])
    print(shell_words(out, ("rps", "p50_ms", "p99_ms", "requests", "errors", "non2xx")))


def cmd_h2load(_a):
    """Parses h2load output from stdin; prints `rps requests succeeded failed errored non2xx`
    on the first line and the first error-looking line of the output on the second."""
    out = {"rps": None, "requests": 0, "succeeded": 0, "failed": 0, "errored": 0, "non2xx": 0,
           "errors_text": ""}
    for line in sys.stdin:
        f = line.replace(",", "").split()
        if not f:
            continue
        if f[0] == "finished" and len(f) > 4 and f[4] == "req/s":
            out["rps"] = float(f[3])
        elif f[0] == "requests:":
            # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            vals = dict(zip(f[2::2], f[1::2]))
            out["requests"] = int(vals.get("done", 0))
            out["succeeded"] = int(vals.get("succeeded", 0))
            out["failed"] = int(vals.get("failed", 0))
            out["errored"] = int(vals.get("errored", 0))
        elif f[0] == "status" and f[1] == "codes:":
            out["non2xx"] = sum(int(x) for x in f[4::2])
        elif "error" in line.lower() and not out["errors_text"]:
            out["errors_text"] = line.strip()[:200]
    print(shell_words(out, ("rps", "requests", "succeeded", "failed", "errored", "non2xx")))
    print(out["errors_text"] or "-")


# --- report ------------------------------------------------------------------------------------

# (metric key, label, unit, better) in display order. `better` says which direction wins.
METRICS = [
    ("ka_rps", "HTTP/1.1 keep-alive req/s (wrk -c64)", "req/s", "higher"),
    ("ka_p50", "HTTP/1.1 keep-alive p50 latency", "ms", "lower"),
    ("ka_p99", "HTTP/1.1 keep-alive p99 latency", "ms", "lower"),
    ("ka_cpu", "CPU per 100k keep-alive requests", "CPU-s", "lower"),
    ("h2_rps", "h2c req/s (h2load)", "req/s", "higher"),
    ("h2_cpu", "CPU per 100k h2c requests", "CPU-s", "lower"),
    ("close_rps", "new connection per request req/s (wrk, Connection: close)", "req/s",
     "higher"),
    ("close_cpu", "CPU per 100k new-connection requests", "CPU-s", "lower"),
    ("rss_idle", "RSS at idle (VmRSS)", "MB", "lower"),
    ("rss_load", "RSS peak under load (VmHWM)", "MB", "lower"),
    ("filt_plain_p50", "one request at a time (wrk -c1), router only: p50", "ms", "lower"),
    ("filt_plain_p99", "one request at a time (wrk -c1), router only: p99", "ms", "lower"),
    ("filt_extproc_p50", "... with a headers-only ext_proc round trip: p50", "ms", "lower"),
    ("filt_extproc_p99", "... with a headers-only ext_proc round trip: p99", "ms", "lower"),
    ("filt_extproc_add_p50", "added by ext_proc: p50 difference", "ms", "lower"),
    ("filt_extproc_add_p99", "added by ext_proc: p99 difference", "ms", "lower"),
    ("filt_rls_p50", "... with an RLS check (ratelimit filter): p50", "ms", "lower"),
    ("filt_rls_p99", "... with an RLS check (ratelimit filter): p99", "ms", "lower"),
    ("filt_rls_add_p50", "added by the RLS check: p50 difference", "ms", "lower"),
    ("filt_rls_add_p99", "added by the RLS check: p99 difference", "ms", "lower"),
    ("scale_rss_before", "RSS before the 10k push (VmRSS)", "MB", "lower"),
    ("scale_apply", "push of 10k clusters/routes + 1k listeners -> last route served", "s",
     "lower"),
    ("scale_ack", "push -> last ACK (as the control plane recorded it)", "s", "lower"),
    ("scale_stall", "worst latency on an already serving listener during the 10k push", "ms",
     "lower"),
    ("scale_rss", "RSS after the 10k push (VmRSS)", "MB", "lower"),
    ("scale_change", "one changed route among 10k -> visible", "s", "lower"),
    ("scale_rss_after", "RSS after the route change (VmRSS)", "MB", "lower"),
]


def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cmd_report(a):
    """Reads the TSV (proxy, concurrency, metric, round, value) and prints a Markdown table of
    medians: one row per metric and concurrency, columns nginx direct, Sentinel, Envoy, ratio."""
    data = {}
    with open(a.results) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5 or parts[0] == "proxy":
                continue
            proxy, conc, metric, _round, value = parts
            try:
                v = float(value)
            except ValueError:
                continue
            data.setdefault((metric, conc, proxy), []).append(v)
    concs = sorted({k[1] for k in data}, key=lambda c: (c == "-", c))
    med = {k: statistics.median(v) for k, v in data.items()}
    lines = [
        "| figure | workers | unit | better | nginx direct | Sentinel | Envoy | Sentinel/Envoy | n (S/E) |",
        "|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for key, label, unit, better in METRICS:
        for conc in concs:
            s = med.get((key, conc, "sentinel"))
            e = med.get((key, conc, "envoy"))
            n = med.get((key, conc, "nginx"))
            if s is None and e is None:
                continue
            ratio = f"{s / e:.2f}" if (s is not None and e) else "—"
            count = f"{len(data.get((key, conc, 'sentinel'), []))}/" \
                    f"{len(data.get((key, conc, 'envoy'), []))}"
            if n is None:
                n_direct = med.get((key, "-", "nginx"))
            else:
                n_direct = n
            lines.append(
                f"| {label} | {conc} | {unit} | {better} | {fmt(n_direct)} | {fmt(s)} | "
                f"{fmt(e)} | {ratio} | {count} |")
    print("\n".join(lines))


BEGIN = "<!-- bench.sh:begin (generated by scripts/bench.sh; edits inside are overwritten) -->"
END = "<!-- bench.sh:end -->"


def cmd_splice(a):
    """Puts the generated block between the markers of the doc, keeping everything else (the
    hand-written Profile section, for one). A doc without markers gets the block appended."""
    with open(a.block) as f:
        block = f.read().rstrip("\n")
    try:
        with open(a.doc) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks: Sentinel and Envoy side by side\n\n"
    generated = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = head + generated + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + generated + "\n"
    with open(a.doc, "w") as f:
        f.write(doc)


# --- main --------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("base")
    b.add_argument("--listen-port", type=int, required=True)
    b.add_argument("--upstream-port", type=int, required=True)
    b.add_argument("--version", required=True)
    b.set_defaults(func=cmd_base)

    f = sub.add_parser("filters")
    f.add_argument("--listen-port", type=int, required=True)
    f.add_argument("--upstream-port", type=int, required=True)
    f.add_argument("--ext-proc-port", type=int, required=True)
    f.add_argument("--ratelimit-port", type=int, required=True)
    f.add_argument("--ext-proc-peer", type=int, required=True)
    f.add_argument("--rls-peer", type=int, required=True)
    f.add_argument("--version", required=True)
    f.set_defaults(func=cmd_filters)

    for name, func in (("scale", cmd_scale), ("scale-probe", cmd_scale_probe)):
        s = sub.add_parser(name)
        s.add_argument("--clusters", type=int, default=10000)
        s.add_argument("--route-configs", type=int, default=10)
        s.add_argument("--listeners", type=int, default=1000)
        s.add_argument("--listener-base-port", type=int, required=True)
        s.add_argument("--upstream-port", type=int, default=0)
        s.add_argument("--version", default="scale")
        s.add_argument("--marker", default=None)
        s.add_argument("--keep-listen-port", type=int, default=0)
        s.set_defaults(func=func)

    w = sub.add_parser("push-wait")
    w.add_argument("--api", required=True, help="mock control plane HTTP API base URL")
    w.add_argument("--node", required=True)
    w.add_argument("--file", required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--host", required=True)
    w.add_argument("--path", default="/")
    w.add_argument("--expect-body", default="hello world\n")
    w.add_argument("--expect-header", default=None, help="name=value")
    w.add_argument("--timeout", type=float, default=120)
    w.add_argument("--interval", type=float, default=0.02)
    w.add_argument("--steady-port", type=int, default=0,
                   help="a listener already serving; its worst latency during the wait is reported")
    w.set_defaults(func=cmd_push_wait)

    sub.add_parser("wrk").set_defaults(func=cmd_wrk)
    sub.add_parser("h2load").set_defaults(func=cmd_h2load)

    r = sub.add_parser("report")
    r.add_argument("results")
    r.set_defaults(func=cmd_report)

    sp = sub.add_parser("splice")
    sp.add_argument("doc")
    sp.add_argument("block")
    sp.set_defaults(func=cmd_splice)

    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
