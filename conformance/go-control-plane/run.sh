#!/usr/bin/env bash
# go-control-plane's own integration test (pkg/test/main + scripts/integration.sh),
# run against a proxy binary: real Envoy or Sentinel.
#
#   PROXY=/path/to/envoy-or-sentinel ./run.sh MODE [extra test flags...]
#
# MODE: ads | xds | delta | delta-ads | rest | xds-mux, a comma-separated list of them,
#       or "all" (= ads,xds,delta,delta-ads,rest).
# Extra flags go to the test driver unchanged, e.g. --scopedhttp=0 --vhdshttp=0 --tcp=0.
#
# Environment:
#   PROXY         proxy binary (required); started as
#                 $PROXY -c bootstrap/bootstrap-MODE.yaml --drain-time-s 1 -l $PROXY_LOG_LEVEL $PROXY_ARGS
#   PROXY_ARGS    extra proxy arguments (word-split); default none, except
#                 --use-dynamic-base-id when PROXY is real Envoy (by its --version line)
#   PORT_WAIT     seconds to wait for the scenario's ports to be free, default 60
#   PROXY_LOG_LEVEL  default info
#   TEST_TIMEOUT  seconds one mode may take, default 180
#   LOG_DIR       where logs go, default ./logs (proxy.MODE.log, test.MODE.log)
#   DEBUG=1       pass -debug to the test driver (logs every xDS request)
#   STRICT=0      drop -strict (upstream's verdict only: traffic flows). By default a version
#                 must also be ACKed by the proxy (LDS, CDS and every type sent) with no NACK.
#
# Prints one line per mode, "go-control-plane MODE: PASS|FAIL (...) [extra flags]", then
# "go-control-plane: N passed, N failed"; exit 0 only if every mode passed.
set -o nounset -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2
  exit 2
}

[ $# -ge 1 ] || usage
modes_arg="$1"; shift
extra=("$@")

if [ -z "${PROXY:-}" ]; then
  echo "run.sh: set PROXY to the envoy or sentinel binary" >&2
  usage
fi
if ! command -v "$PROXY" >/dev/null 2>&1; then
  echo "run.sh: PROXY=$PROXY is not executable" >&2
  exit 2
fi

TEST_TIMEOUT="${TEST_TIMEOUT:-180}"
PROXY_LOG_LEVEL="${PROXY_LOG_LEVEL:-info}"
LOG_DIR="${LOG_DIR:-$here/logs}"
if [ -n "${PROXY_ARGS+set}" ]; then
  read -r -a proxy_args <<<"$PROXY_ARGS"
elif [[ "$(timeout 10 "$PROXY" --version 2>/dev/null)" =~ version:\ [0-9a-f]{40}/[0-9.]+/ ]]; then
  # Real Envoy: take a free hot-restart base id, so a second Envoy on the machine cannot
  # make this one exit with "unable to bind domain socket with base_id=0".
  proxy_args=(--use-dynamic-base-id)
else
  proxy_args=()
fi
mkdir -p "$LOG_DIR" bin

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi

echo "run.sh: building bin/gcp-integration"
build_start=$SECONDS
if ! go build -o bin/gcp-integration . ; then
  echo "go-control-plane: FAIL (go build failed)"
  exit 1
fi
echo "run.sh: built in $((SECONDS - build_start))s"

# Ports the scenario uses: xDS, REST gateway, upstream echo, access log service, proxy admin,
# and the proxy listeners from 9000 up (at most 8 with the default flags).
fixed_ports=(18000 18001 18080 18090 19000 9000 9001 9002 9003 9004 9005 9006 9007)

port_busy() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_ports_free() {
  local deadline=$((SECONDS + ${PORT_WAIT:-60})) p busy
  while :; do
    busy=""
    for p in "${fixed_ports[@]}"; do
      if port_busy "$p"; then busy="$busy $p"; fi
    done
    [ -z "$busy" ] && return 0
    if [ $SECONDS -ge $deadline ]; then
      echo "run.sh: ports still in use on 127.0.0.1:$busy (another proxy or test running?)" >&2
      return 1
    fi
    sleep 0.5
  done
}

proxy_pid=""
test_pid=""

stop_pid() { # stop_pid PID: TERM, wait up to 10 s, then KILL; only ever our own children
  local pid="$1" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "run.sh: pid $pid did not exit 10 s after SIGTERM, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  stop_pid "$test_pid"; test_pid=""
  stop_pid "$proxy_pid"; proxy_pid=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

run_mode() { # run_mode MODE -> 0 pass, 1 fail
  local mode="$1" xds bootstrap runtimes flags=() t0 rc proxy_rc
  case "$mode" in
    ads|xds|rest|delta|delta-ads) xds="$mode"; bootstrap="bootstrap/bootstrap-$mode.yaml" ;;
    xds-mux) xds=xds; bootstrap="bootstrap/bootstrap-xds.yaml"; flags+=(-mux) ;;
    *) echo "go-control-plane $mode: FAIL (unknown mode; use ads, xds, delta, delta-ads, rest, xds-mux)"; return 1 ;;
  esac
  # As upstream's scripts/integration.sh: two RTDS layers in ads mode, one otherwise.
  if [ "$xds" = ads ]; then runtimes=2; else runtimes=1; fi
  [ "${DEBUG:-0}" = 1 ] && flags+=(-debug)
  [ "${STRICT:-1}" = 0 ] || flags+=(-strict)

  local proxy_log="$LOG_DIR/proxy.$mode.log" test_log="$LOG_DIR/test.$mode.log"
  local label="go-control-plane $mode" note=""
  [ ${#extra[@]} -gt 0 ] && note=" [${extra[*]}]"

  if ! wait_ports_free; then
    echo "$label: FAIL (ports busy)$note"
    return 1
  fi

  t0=$SECONDS
  echo "run.sh: $mode: $PROXY -c $bootstrap --drain-time-s 1 -l $PROXY_LOG_LEVEL ${proxy_args[*]:-} > $proxy_log"
  "$PROXY" -c "$bootstrap" --drain-time-s 1 -l "$PROXY_LOG_LEVEL" "${proxy_args[@]}" >"$proxy_log" 2>&1 &
  proxy_pid=$!

  echo "run.sh: $mode: bin/gcp-integration --xds=$xds --runtimes=$runtimes ${flags[*]:-} ${extra[*]:-} > $test_log"
  timeout --signal=TERM --kill-after=5 "$TEST_TIMEOUT" \
    bin/gcp-integration --xds="$xds" --runtimes="$runtimes" -message=$'Hi, there!\n' \
    "${flags[@]}" "${extra[@]}" >"$test_log" 2>&1 &
  test_pid=$!

  # Wait for the test (bounded by its own timeout); stop it early if the proxy dies.
  proxy_rc=""
  while kill -0 "$test_pid" 2>/dev/null; do
    if ! kill -0 "$proxy_pid" 2>/dev/null; then
      wait "$proxy_pid" 2>/dev/null; proxy_rc=$?
      proxy_pid=""
      sleep 1 # let the test log its last batch
      stop_pid "$test_pid"
      break
    fi
    sleep 0.2
  done
  wait "$test_pid" 2>/dev/null; rc=$?
  test_pid=""
  if [ -n "$proxy_pid" ] && ! kill -0 "$proxy_pid" 2>/dev/null; then
    wait "$proxy_pid" 2>/dev/null; proxy_rc=$?
    proxy_pid=""
  fi
  stop_pid "$proxy_pid"; proxy_pid=""

  local secs=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    echo "$label: PASS (${secs}s)$note"
    grep -E "snapshot v[0-9]+: PASS" "$test_log" | sed 's/^/    /'
    return 0
  fi
  local why="test exit $rc"
  [ "$rc" -eq 124 ] && why="timed out after ${TEST_TIMEOUT}s"
  [ -n "$proxy_rc" ] && why="proxy exited early with code $proxy_rc; test stopped"
  echo "$label: FAIL ($why, ${secs}s)$note"
  echo "----- tail of $test_log -----"
  tail -n 40 "$test_log"
  echo "----- tail of $proxy_log -----"
  tail -n 60 "$proxy_log"
  echo "-----"
  return 1
}

IFS=, read -r -a modes <<<"${modes_arg//all/ads,xds,delta,delta-ads,rest}"
failed=0
passed=0
for m in "${modes[@]}"; do
  if run_mode "$m"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "go-control-plane: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
