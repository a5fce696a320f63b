#!/usr/bin/env bash
# Runs the conformance cases (conformance/cases/) against real Envoy, Sentinel, or both, and
# updates docs/conformance.md (each run rewrites its own column and keeps the other one).
#
#   conformance/run.sh envoy|sentinel|both [extra conformance flags, e.g. --filter redirect/]
#
# Builds what it needs first: `cargo build` of the conformance runner (and of sentinel when it
# runs), and real Envoy through scripts/install-envoy.sh. Exit status 0 only if every case passed
# on every proxy that ran.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WHICH="${1:-}"
case "$WHICH" in
  envoy|sentinel|both) shift ;;
  *) echo "usage: $0 envoy|sentinel|both [conformance flags]" >&2; exit 2 ;;
esac

bins=(--bin conformance -p conformance)
[[ "$WHICH" != envoy ]] && bins+=(--bin sentinel -p sentinel)
cargo build --quiet "${bins[@]}"
RUNNER="$TARGET/debug/conformance"

status=0
if [[ "$WHICH" != sentinel ]]; then
  ENVOY="$(scripts/install-envoy.sh)"
  "$RUNNER" --name envoy --report docs/conformance.md \
    --proxy "$ENVOY -c {bootstrap} --use-dynamic-base-id --drain-time-s 1 -l warn --concurrency 1" \
    "$@" || status=1
fi
if [[ "$WHICH" != envoy ]]; then
  "$RUNNER" --name sentinel --report docs/conformance.md \
    --proxy "$TARGET/debug/sentinel -c {bootstrap} --drain-time-s 1 -l warn --concurrency 1" \
    "$@" || status=1
fi
exit "$status"
