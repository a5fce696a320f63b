#!/usr/bin/env bash
# Proves control-plane-mock speaks real xDS: runs it with the example snapshot and demo
# upstream, points a real Envoy at it (SotW ADS, then delta ADS) and checks that
#   1. Envoy ACKs CDS, EDS, LDS and RDS and NACKs nothing,
#   2. a request through Envoy's listener reaches the demo upstream,
#   3. a snapshot POSTed to the HTTP API is pushed, ACKed and served (a response header),
#   4. an invalid listener is NACKed and the NACK is recorded with Envoy's message.
#
# Usage: ENVOY=/path/to/envoy scripts/check-mock-with-envoy.sh
#   (scripts/install-envoy.sh prints such a path)
# Env: MODES ("sotw delta"), MOCK_BIN (default: build with cargo), and the ports
#   XDS_PORT HTTP_PORT UPSTREAM_PORT LISTENER_PORT ADMIN_PORT (defaults 28000 28001 28080
#   20000 29901, away from the examples' defaults that other tools use).
# Starts only its own processes, kills them by PID, and exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${ENVOY:?set ENVOY to the envoy binary (see scripts/install-envoy.sh)}"
MODES="${MODES:-sotw delta}"
XDS_PORT="${XDS_PORT:-28000}"
HTTP_PORT="${HTTP_PORT:-28001}"
UPSTREAM_PORT="${UPSTREAM_PORT:-28080}"
LISTENER_PORT="${LISTENER_PORT:-20000}"
ADMIN_PORT="${ADMIN_PORT:-29901}"
API="http://127.0.0.1:${HTTP_PORT}"

if [[ -z "${MOCK_BIN:-}" ]]; then
  (cd "$ROOT" && cargo build -q -p control-plane-mock)
  MOCK_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/control-plane-mock"
fi

WORK="$(mktemp -d /tmp/check-mock-envoy.XXXXXX)"
MOCK_PID=""
ENVOY_PID=""

stop() { # stop PID: SIGTERM, wait up to 5 s, then SIGKILL
  local pid="$1"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop "$ENVOY_PID"; ENVOY_PID=""
  stop "$MOCK_PID"; MOCK_PID=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT

fail() {
  echo "FAIL: $*" >&2
  for log in "$WORK"/*.log; do
    [[ -f "$log" ]] && { echo "--- tail of $log" >&2; tail -n 30 "$log" >&2; }
  done
  exit 1
}

# wait_until SECONDS CMD...: runs CMD every 0.25 s until it succeeds or time runs out.
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

# Rewrites the examples' ports into this run's ports.
ports() {
  sed -e "s/port_value: 18000/port_value: ${XDS_PORT}/" \
      -e "s/port_value: 18080/port_value: ${UPSTREAM_PORT}/" \
      -e "s/port_value: 10000/port_value: ${LISTENER_PORT}/" \
      -e "s/port_value: 9901/port_value: ${ADMIN_PORT}/" "$1"
}

# events_ok SINCE TYPES...: every type ACKed since SINCE and nothing NACKed.
events_ok() {
  local since="$1"; shift
  curl -sf "${API}/events?since=${since}" | python3 -c '
import json, sys
events = json.load(sys.stdin)
nacks = [e for e in events if e["kind"] == "NACK"]
if nacks:
    print("NACK:", nacks[0]["type_url"], nacks[0]["error_detail"], file=sys.stderr)
    sys.exit(2)
acked = {e["type_url"].rsplit(".", 1)[-1] for e in events if e["kind"] == "ACK"}
sys.exit(0 if set(sys.argv[1:]) <= acked else 1)
' "$@"
}

# nack_recorded SINCE: a Listener NACK naming the bad address.
nack_recorded() {
  curl -sf "${API}/events?since=$1" | python3 -c '
import json, sys
sys.exit(0 if any(e["kind"] == "NACK" and e["type_url"].endswith("Listener")
                  and "not-an-ip" in (e["error_detail"] or "") for e in json.load(sys.stdin)) else 1)'
}

next_seq() {
  curl -sf "${API}/events" | python3 -c '
import json, sys
events = json.load(sys.stdin)
print(events[-1]["seq"] + 1 if events else 0)'
}

body_ok() { curl -sf -m 2 "http://127.0.0.1:${LISTENER_PORT}/check/$1" | grep -q "GET /check/$1"; }
header_ok() { curl -sf -m 2 -D - -o /dev/null "http://127.0.0.1:${LISTENER_PORT}/" | grep -qi '^x-snapshot: two'; }

run_mode() {
  local mode="$1" bootstrap
  case "$mode" in
    sotw) bootstrap="$ROOT/examples/bootstrap.yaml" ;;
    delta) bootstrap="$ROOT/examples/bootstrap-delta.yaml" ;;
    *) fail "unknown mode $mode" ;;
  esac
  echo "== $mode: $(basename "$bootstrap")"
  rm -rf "$WORK/snapshots" && mkdir -p "$WORK/snapshots"
  ports "$ROOT/examples/snapshots/sentinel-demo.yaml" > "$WORK/snapshots/sentinel-demo.yaml"
  ports "$bootstrap" > "$WORK/bootstrap.yaml"

  "$MOCK_BIN" --xds-addr "127.0.0.1:${XDS_PORT}" --http-addr "127.0.0.1:${HTTP_PORT}" \
    --snapshots "$WORK/snapshots" --upstream "127.0.0.1:${UPSTREAM_PORT}" \
    > "$WORK/mock-$mode.log" 2>&1 &
  MOCK_PID=$!
  wait_until 20 curl -sf "${API}/healthz" || fail "$mode: mock did not come up"

  "$ENVOY" -c "$WORK/bootstrap.yaml" --drain-time-s 1 -l info --disable-hot-restart \
    > "$WORK/envoy-$mode.log" 2>&1 &
  ENVOY_PID=$!

  wait_until 30 events_ok 0 Cluster ClusterLoadAssignment Listener RouteConfiguration \
    || fail "$mode: no ACK for all of CDS/EDS/LDS/RDS, or a NACK"
  echo "   ACKed CDS, EDS, LDS, RDS; no NACK"
  wait_until 20 body_ok "$mode" || fail "$mode: no upstream body through Envoy"
  echo "   curl through Envoy: $(curl -s -m 2 "http://127.0.0.1:${LISTENER_PORT}/check/$mode")"

  # A pushed snapshot: the route gains a response header.
  local since
  since="$(next_seq)"
  python3 - "$WORK/snapshots/sentinel-demo.yaml" > "$WORK/v2.yaml" <<'EOF'
import sys
text = open(sys.argv[1]).read()
text = text.replace("resources:", 'version: "two"\nresources:', 1)
text = text.replace("route: { cluster: demo_upstream }",
    "route: { cluster: demo_upstream }\n"
    "            response_headers_to_add: [ { header: { key: x-snapshot, value: two } } ]", 1)
print(text)
EOF
  curl -sf -X POST --data-binary @"$WORK/v2.yaml" "${API}/snapshot/sentinel-demo" > /dev/null \
    || fail "$mode: POST /snapshot rejected"
  wait_until 20 events_ok "$since" RouteConfiguration || fail "$mode: pushed route not ACKed"
  wait_until 20 header_ok || fail "$mode: pushed route not served"
  echo "   pushed snapshot ACKed and served"

  # An invalid listener must be NACKed and recorded.
  since="$(next_seq)"
  sed -e 's/version: "two"/version: "three"/' \
      -e "0,/address: 127.0.0.1, port_value: ${LISTENER_PORT}/s//address: not-an-ip, port_value: ${LISTENER_PORT}/" \
      "$WORK/v2.yaml" > "$WORK/v3.yaml"
  curl -sf -X POST --data-binary @"$WORK/v3.yaml" "${API}/snapshot/sentinel-demo" > /dev/null \
    || fail "$mode: POST /snapshot rejected"
  wait_until 20 nack_recorded "$since" || fail "$mode: invalid listener not NACKed"
  echo "   invalid listener NACKed and recorded"

  cleanup
}

for mode in $MODES; do
  run_mode "$mode"
done
echo "PASS: control-plane-mock works with $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo "$ENVOY")"
