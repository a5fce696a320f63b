#!/usr/bin/env bash
# The demo: Sentinel fed by the bundled mock control plane, in front of a bundled upstream.
#
#   scripts/demo.sh           # set up, start, show a request, then keep serving until Ctrl-C
#   scripts/demo.sh --check   # the same, but stop after the request (used by scripts/test.sh)
#
# Ports: xDS 127.0.0.1:18000, mock HTTP API 18001, upstream 18080, proxy 10000, admin 9901.
# Edit examples/snapshots/sentinel-demo.yaml while it runs: the mock pushes the change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
check=0
[ "${1:-}" = "--check" ] && check=1

# Setup on a fresh machine: the build needs cmake (pingora builds zlib-ng).
if ! command -v cmake >/dev/null 2>&1; then
  SKIP_ENVOY=1 SKIP_GO_MODULES=1 scripts/install-deps.sh
fi
cargo build -p sentinel -p control-plane-mock --bins

logs="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

target/debug/control-plane-mock --xds-addr 127.0.0.1:18000 --http-addr 127.0.0.1:18001 \
  --snapshots examples/snapshots --upstream 127.0.0.1:18080 >"$logs/mock.log" 2>&1 &
pids+=($!)
target/debug/sentinel -c examples/bootstrap.yaml --drain-time-s 1 -l info >"$logs/sentinel.log" 2>&1 &
pids+=($!)

ready=0
for _ in $(seq 1 100); do
  if curl -fsS 127.0.0.1:9901/ready >/dev/null 2>&1 && curl -fsS 127.0.0.1:10000/ >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "demo: Sentinel did not come up; logs:" >&2
  tail -20 "$logs/mock.log" "$logs/sentinel.log" >&2
  exit 1
fi

echo "\$ curl -s localhost:10000/hello"
curl -sS 127.0.0.1:10000/hello
echo
echo "\$ curl -s localhost:9901/ready"
curl -sS 127.0.0.1:9901/ready
if [ "$check" = 1 ]; then
  echo "demo: OK"
  exit 0
fi
echo
echo "Sentinel serves on localhost:10000 (admin: localhost:9901/config_dump)."
echo "Logs: $logs. Edit examples/snapshots/sentinel-demo.yaml to push a new config. Ctrl-C stops."
wait "${pids[1]}"
