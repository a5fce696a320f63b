#!/usr/bin/env bash
# Every test, on a fresh machine: installs what the tests need, then runs
#   1. the Rust tests (unit, in-process end-to-end, property tests), fmt and clippy;
#   2. `--mode validate` on the examples;
#   3. real Envoy 1.40 against the mock control plane (the mock speaks real xDS);
#   4. go-control-plane's integration scenario against real Envoy and against Sentinel;
#   5. the conformance suite against real Envoy and against Sentinel;
#   6. the global rate limit shared by two proxies through envoyproxy/ratelimit and Redis;
#   7. ext_proc against a processor written with a third-party SDK (envoy-extproc-sdk);
#   8. the README demo.
# Exit status: 0 only if every suite passed. SKIP_INSTALL=1 skips step 0.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  scripts/install-deps.sh || { echo "test.sh: installing dependencies failed" >&2; exit 1; }
fi
ENVOY="$(scripts/install-envoy.sh 2>/dev/null)" || { echo "test.sh: no Envoy" >&2; exit 1; }
export ENVOY

passed=0
failed=0
failures=()
suite() { # suite NAME COMMAND...
  local name="$1"; shift
  echo
  echo "=== $name"
  local t0=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "=== $name: PASS ($((SECONDS - t0))s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "=== $name: FAIL ($((SECONDS - t0))s)"
  fi
}

validate_examples() {
  local bad
  target/debug/sentinel --mode validate -c examples/bootstrap.yaml || return 1
  target/debug/sentinel --mode validate -c examples/bootstrap-delta.yaml || return 1
  bad="$(mktemp --suffix=.yaml)"
  printf 'static_resources:\n  clusters:\n  - name: c\n    connect_timeout: soon\n' >"$bad"
  if target/debug/sentinel --mode validate -c "$bad" 2>"$bad.err"; then
    echo "a broken bootstrap validated" >&2
    return 1
  fi
  grep -q "static_resources.clusters\[0\].connect_timeout" "$bad.err" || { cat "$bad.err" >&2; return 1; }
  echo "broken bootstrap refused: $(head -1 "$bad.err")"
}

suite "cargo fmt" cargo fmt --all -- --check
suite "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
suite "cargo test" cargo test --workspace
suite "validate examples" validate_examples
suite "mock control plane with real Envoy" scripts/check-mock-with-envoy.sh
suite "go-control-plane with Envoy" env PROXY="$ENVOY" conformance/go-control-plane/run.sh ads,xds,delta,delta-ads
suite "go-control-plane with Sentinel" env PROXY="$root/target/debug/sentinel" \
  conformance/go-control-plane/run.sh ads,xds,delta,delta-ads --scopedhttp=0 --vhdshttp=0 --tcp=0
if [ -x conformance/run.sh ]; then
  suite "conformance with Envoy and Sentinel" conformance/run.sh both
fi
suite "global rate limit (envoyproxy/ratelimit + Redis) with Envoy" env PROXY="$ENVOY" conformance/ratelimit/run.sh
suite "global rate limit (envoyproxy/ratelimit + Redis) with Sentinel" env PROXY="$root/target/debug/sentinel" \
  conformance/ratelimit/run.sh
suite "ext_proc with a third-party processor (envoy-extproc-sdk) with Envoy" env PROXY="$ENVOY" conformance/ext_proc_sdk/run.sh
suite "ext_proc with a third-party processor (envoy-extproc-sdk) with Sentinel" env PROXY="$root/target/debug/sentinel" \
  conformance/ext_proc_sdk/run.sh
suite "demo" scripts/demo.sh --check

echo
echo "suites: $passed passed, $failed failed"
[ "$failed" = 0 ] || { printf 'failed: %s\n' "${failures[@]}"; exit 1; }
