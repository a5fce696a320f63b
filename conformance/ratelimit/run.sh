#!/usr/bin/env bash
# Global rate limiting against the reference peer: envoyproxy/ratelimit backed by a real Redis,
# with TWO proxies (real Envoy or Sentinel: same CLI) sharing one limit.
#
#   PROXY=/path/to/envoy-or-sentinel conformance/ratelimit/run.sh
#   PROXY="$(scripts/install-envoy.sh)" conformance/ratelimit/run.sh
#
# Starts, all on 127.0.0.1 and on free ports, all by PID and all stopped on exit:
#   redis-server (--save '' --appendonly no, its own dir), the ratelimit service
#   (bin/ratelimit, built from cmd/ when missing or stale), a Python HTTP upstream, and proxies
#   A and B, each from a static bootstrap with two listeners: "open" (failure_mode_deny: false)
#   and "deny" (failure_mode_deny: true), both with envoy.filters.http.ratelimit (domain
#   sentinel-conformance, timeout 1s, DRAFT_VERSION_03 headers) then the router.
# Limits (ratelimit config.yaml): generic_key=shared 3/minute (route /), user=<x-user-id> 2/minute
# per distinct value (route /user, request_headers action).
#
# Environment:
#   PROXY          proxy binary (required); started as
#                  $PROXY -c BOOTSTRAP --drain-time-s 1 -l $PROXY_LOG_LEVEL --concurrency 1 $PROXY_ARGS
#   PROXY_ARGS     extra proxy arguments (word-split); default none, except --use-dynamic-base-id
#                  when PROXY is real Envoy (by its --version line): two Envoys run at once
#   PROXY_LOG_LEVEL  default warn
#   RATELIMIT_BIN  ratelimit service binary, default conformance/ratelimit/bin/ratelimit
#   KEEP=1         keep the work dir (configs, logs) even when everything passed
#   VERBOSE=1      print every response's status line and headers
#
# Prints one line per check, "PASS name" or "FAIL name: why", then "N passed, M failed" alone on
# a line; exit 0 only if every check passed.
set -o nounset -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOMAIN=sentinel-conformance
PROXY_LOG_LEVEL="${PROXY_LOG_LEVEL:-warn}"
RATELIMIT_BIN="${RATELIMIT_BIN:-$here/bin/ratelimit}"

say() { echo "run.sh: $*" >&2; }

if [ -z "${PROXY:-}" ] || ! command -v "$PROXY" >/dev/null 2>&1; then
  say "set PROXY to an executable envoy or sentinel binary (PROXY='${PROXY:-}')"
  exit 2
fi
for tool in redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { say "$tool not found (scripts/install-deps.sh installs it)"; exit 2; }
done
if [ -n "${PROXY_ARGS+set}" ]; then
  read -r -a proxy_args <<<"$PROXY_ARGS"
elif [[ "$(timeout 10 "$PROXY" --version 2>/dev/null)" =~ version:\ [0-9a-f]{40}/[0-9.]+/ ]]; then
  # Real Envoy (Sentinel's --version line is not a 40-hex-digit build): two run at once here,
  # so each takes a free hot-restart base id. (Not `| grep -q`: with pipefail, grep exiting
  # early can SIGPIPE the proxy and make the pipeline fail at random.)
  proxy_args=(--use-dynamic-base-id)
else
  proxy_args=()
fi

# --- the ratelimit binary ------------------------------------------------------------------------
stale=0
[ -x "$RATELIMIT_BIN" ] || stale=1
if [ "$stale" = 0 ] && [ "$RATELIMIT_BIN" = "$here/bin/ratelimit" ]; then
  for f in "$here/cmd/go.mod" "$here/cmd/go.sum" "$here/cmd/main.go"; do
    [ "$f" -nt "$RATELIMIT_BIN" ] && stale=1
  done
fi
if [ "$stale" = 1 ]; then
  if [ "$RATELIMIT_BIN" != "$here/bin/ratelimit" ]; then say "RATELIMIT_BIN=$RATELIMIT_BIN is not executable"; exit 2; fi
  command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"
  say "building bin/ratelimit (cmd/, a few minutes the first time)"
  (cd "$here/cmd" && timeout 900 go build -trimpath -buildvcs=false -o ../bin/ratelimit .) || { say "go build failed"; exit 2; }
fi

# --- work dir, processes, cleanup ----------------------------------------------------------------
work="$(mktemp -d /tmp/sentinel-ratelimit.XXXXXX)"
pids=()       # every process we started, in start order
rl_pid=""     # the ratelimit service's PID, also in pids
# shellcheck source=conformance/scenario.sh
source "$here/../scenario.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, all distinct (bound together, then released).
read -r P_REDIS P_RL_GRPC P_RL_HTTP P_RL_DEBUG P_UP P_A_ADMIN P_A_OPEN P_A_DENY P_B_ADMIN P_B_OPEN P_B_DENY < <(free_ports 11)
[ -n "${P_B_DENY:-}" ] || { say "could not pick free ports"; exit 2; }


# --- redis ----------------------------------------------------------------------------------------
mkdir -p "$work/redis"
redis-server --bind 127.0.0.1 --port "$P_REDIS" --dir "$work/redis" --save '' --appendonly no \
  --daemonize no --protected-mode yes --logfile "$work/redis.log" >/dev/null 2>&1 &
pids+=($!)
rcli() { timeout 5 redis-cli -h 127.0.0.1 -p "$P_REDIS" "$@"; }
redis_up() { [ "$(rcli ping 2>/dev/null)" = PONG ]; }
wait_until 15 "${pids[-1]}" redis_up || fatal "redis-started" "redis-server did not answer PING in 15 s" "$work/redis.log"

# --- upstream -------------------------------------------------------------------------------------
cat >"$work/upstream.py" <<'EOF'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"upstream ok\n"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", "python")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
python3 "$work/upstream.py" "$P_UP" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_until 15 "${pids[-1]}" port_open "$P_UP" || fatal "upstream-started" "upstream not listening in 15 s" "$work/upstream.log"

# --- ratelimit service ----------------------------------------------------------------------------
mkdir -p "$work/runtime/ratelimit/config"
cat >"$work/runtime/ratelimit/config/config.yaml" <<EOF
domain: $DOMAIN
descriptors:
  - key: generic_key
    value: shared
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: user
    rate_limit:
      name: per-user
      unit: minute
      requests_per_unit: 2
  - key: generic_key
    value: hits
    rate_limit: { unit: minute, requests_per_unit: 5 }
  - key: generic_key
    value: hitsh
    rate_limit: { unit: minute, requests_per_unit: 5 }
  - key: generic_key
    value: legacyhits
    rate_limit: { unit: minute, requests_per_unit: 5 }
EOF
cat >"$work/runtime/ratelimit/config/other.yaml" <<EOF
domain: $DOMAIN-other
descriptors:
  - key: generic_key
    value: dom
    rate_limit: { unit: minute, requests_per_unit: 1 }
EOF
rl_healthy() { [ "$(curl -s --max-time 2 "http://127.0.0.1:$P_RL_HTTP/healthcheck" 2>/dev/null)" = OK ]; }
start_ratelimit() {
  env REDIS_SOCKET_TYPE=tcp REDIS_URL="127.0.0.1:$P_REDIS" USE_STATSD=false LOG_LEVEL=warn \
    RUNTIME_ROOT="$work/runtime" RUNTIME_SUBDIRECTORY=ratelimit RUNTIME_WATCH_ROOT=false \
    HOST=127.0.0.1 PORT="$P_RL_HTTP" GRPC_HOST=127.0.0.1 GRPC_PORT="$P_RL_GRPC" \
    DEBUG_HOST=127.0.0.1 DEBUG_PORT="$P_RL_DEBUG" \
    "$RATELIMIT_BIN" >>"$work/ratelimit.log" 2>&1 &
  rl_pid=$!
  pids+=("$rl_pid")
  wait_until 20 "$rl_pid" rl_healthy && wait_until 5 "$rl_pid" port_open "$P_RL_GRPC"
}
start_ratelimit || fatal "ratelimit-started" "ratelimit service not healthy in 20 s" "$work/ratelimit.log"

# --- proxies --------------------------------------------------------------------------------------
listener() { # listener NAME PORT DENY(true|false)
  cat <<EOF
  - name: $1
    address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config:
            name: $1
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /user }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - request_headers: { header_name: x-user-id, descriptor_key: user }
              - match: { prefix: /hits-legacy }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_value: legacyhits }
                    hits_addend: { number: 2 }
              - match: { prefix: /hits-header }
                route: { cluster: upstream }
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    rate_limits:
                    - actions:
                      - generic_key: { descriptor_value: hitsh }
                      hits_addend: { format: "%REQ(x-hits)%" }
              - match: { prefix: /hits }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_value: shared }
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    rate_limits:
                    - actions:
                      - generic_key: { descriptor_value: hits }
                      hits_addend: { number: 2 }
              - match: { prefix: /other-domain }
                route: { cluster: upstream }
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    domain: $DOMAIN-other
                    rate_limits:
                    - actions:
                      - generic_key: { descriptor_value: dom }
              - match: { prefix: /unlimited }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_value: shared }
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: / }
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: { descriptor_value: shared }
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: $DOMAIN
              failure_mode_deny: $3
              timeout: 1s
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                grpc_service: { envoy_grpc: { cluster_name: ratelimit } }
                transport_api_version: V3
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}
bootstrap() { # bootstrap NAME ADMIN OPEN DENY
  cat <<EOF
node: { id: ratelimit-$1, cluster: sentinel-conformance }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
static_resources:
  listeners:
$(listener open "$3" false)
$(listener deny "$4" true)
  clusters:
  - name: ratelimit
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: ratelimit
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $P_RL_GRPC } } }
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $P_UP } } }
EOF
}
proxy_ready() { # proxy_ready ADMIN OPEN DENY
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/ready")" = 200 ] &&
    port_open "$2" && port_open "$3"
}
start_proxy() { # start_proxy NAME ADMIN OPEN DENY
  bootstrap "$1" "$2" "$3" "$4" >"$work/bootstrap-$1.yaml"
  "$PROXY" -c "$work/bootstrap-$1.yaml" --drain-time-s 1 -l "$PROXY_LOG_LEVEL" --concurrency 1 \
    "${proxy_args[@]}" >"$work/proxy-$1.log" 2>&1 &
  pids+=($!)
  say "proxy $1: pid $! admin $2 open $3 deny $4 ($work/proxy-$1.log)"
  if ! wait_until 30 "${pids[-1]}" proxy_ready "$2" "$3" "$4"; then
    if kill -0 "${pids[-1]}" 2>/dev/null; then
      fatal "proxy-$1-started" "not ready in 30 s (admin /ready 200 and both listeners)" "$work/proxy-$1.log"
    fi
    wait "${pids[-1]}"
    fatal "proxy-$1-started" "exited with code $? before it was ready (bootstrap rejected?)" "$work/proxy-$1.log"
  fi
}
start_proxy A "$P_A_ADMIN" "$P_A_OPEN" "$P_A_DENY"
start_proxy B "$P_B_ADMIN" "$P_B_OPEN" "$P_B_DENY"
ok "setup (redis, ratelimit, upstream, proxies A and B ready)"

# --- requests -------------------------------------------------------------------------------------
n_req=0
# req PORT PATH [curl args...]: sets $code and $t (seconds); headers in $work/h.N, body in $work/b.N ($hf, $bf)
req() {
  local port="$1" path="$2"; shift 2
  n_req=$((n_req + 1))
  hf="$work/h.$n_req"; bf="$work/b.$n_req"
  local out
  out="$(curl -s --max-time 5 -o "$bf" -D "$hf" -w '%{http_code} %{time_total}' "$@" "http://127.0.0.1:$port$path")" || true
  code="${out%% *}"; t="${out#* }"
  [ -n "$code" ] || code=000
  tr -d '\r' <"$hf" >"$hf.tmp" 2>/dev/null && mv "$hf.tmp" "$hf"
  if [ "${VERBOSE:-0}" = 1 ]; then
    echo "  > GET 127.0.0.1:$port$path $*" >&2
    sed 's/^/  < /' "$hf" >&2
    [ -s "$bf" ] && { echo "  < body: $(head -c 200 "$bf" | tr '\n' '|')" >&2; }
  fi
}
# hdr NAME: the values of response header NAME from the last req, joined by "|" if repeated
hdr() { grep -i "^$1:" "$hf" | sed 's/^[^:]*: *//' | paste -sd'|' -; }
in_range() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x + 0 >= lo && x + 0 <= hi) }'; }
has_hdr() { grep -qi "^$1:" "$hf"; }
body() { cat "$bf"; }

flush() { [ "$(rcli flushall 2>/dev/null)" = OK ] || say "redis FLUSHALL failed"; }
# ratelimit's windows are wall-clock minutes: keep a case inside one of them.
fit_in_minute() { # fit_in_minute SECONDS_NEEDED
  local s
  s=$((10#$(date +%S)))
  if [ $((s + $1)) -ge 60 ]; then
    say "waiting $((61 - s)) s for the next minute window"
    sleep $((61 - s))
  fi
}

# --- case 1: one limit shared by two proxies ------------------------------------------------------
flush
fit_in_minute 15
codes=""
limits=()
remains=()
resets=()
for p in "$P_A_OPEN" "$P_B_OPEN" "$P_A_OPEN"; do
  req "$p" /shared
  codes="$codes $code"
  limits+=("$(hdr x-ratelimit-limit)")
  remains+=("$(hdr x-ratelimit-remaining)")
  resets+=("$(hdr x-ratelimit-reset)")
  up_ok="$(hdr x-upstream)"
done
if [ "$codes" = " 200 200 200" ] && [ "$up_ok" = python ]; then ok "shared/first-3-pass (A, B, A: 200 from the upstream)"
else bad "shared/first-3-pass" "statuses A,B,A:$codes (want 200 200 200)"; fi

req "$P_B_OPEN" /shared
c4="$code"; h4="$hf"; b4="$bf"
if [ "$c4" = 429 ]; then ok "shared/4th-on-B-is-429"; else bad "shared/4th-on-B-is-429" "got $c4"; fi
v="$(hdr x-envoy-ratelimited)"
if [ "$v" = true ]; then ok "shared/429-has-x-envoy-ratelimited-true"; else bad "shared/429-has-x-envoy-ratelimited-true" "x-envoy-ratelimited='$v'"; fi
if ! has_hdr x-upstream && [ ! -s "$b4" ]; then ok "shared/429-is-local-reply-empty-body"
else bad "shared/429-is-local-reply-empty-body" "x-upstream='$(hdr x-upstream)' body='$(head -c 100 "$b4")'"; fi
limit4="$(hdr x-ratelimit-limit)"; remain4="$(hdr x-ratelimit-remaining)"; reset4="$(hdr x-ratelimit-reset)"

req "$P_A_OPEN" /shared
if [ "$code" = 429 ] && [ "$(hdr x-envoy-ratelimited)" = true ]; then ok "shared/5th-on-A-is-429"
else bad "shared/5th-on-A-is-429" "got $code x-envoy-ratelimited='$(hdr x-envoy-ratelimited)'"; fi

# The counter lives in Redis: one key for domain/descriptor/window, counting every hit (5).
keys="$(rcli --scan --pattern "${DOMAIN}_generic_key_shared_*" 2>/dev/null | paste -sd' ' -)"
if [ -n "$keys" ] && [ "$(echo "$keys" | wc -w)" = 1 ] && [ "$(rcli get "$keys" 2>/dev/null)" = 5 ]; then
  ok "shared/redis-counter ($keys = 5)"
else
  bad "shared/redis-counter" "keys '$keys' value '$( [ -n "$keys" ] && rcli get "${keys%% *}")' (want one key = 5)"
fi

# --- case 2: X-RateLimit-* headers (DRAFT_VERSION_03) ---------------------------------------------
want_limit="3, 3;w=60"
if [ "${limits[0]}" = "$want_limit" ] && [ "${limits[1]}" = "$want_limit" ] && [ "${limits[2]}" = "$want_limit" ] && [ "$limit4" = "$want_limit" ]; then
  ok "headers/x-ratelimit-limit ('$want_limit' on 200s and the 429)"
else
  bad "headers/x-ratelimit-limit" "got '${limits[0]}' '${limits[1]}' '${limits[2]}' / 429 '$limit4' (want '$want_limit')"
fi
if [ "${remains[*]} $remain4" = "2 1 0 0" ]; then ok "headers/x-ratelimit-remaining (2, 1, 0 across A/B, 0 on the 429)"
else bad "headers/x-ratelimit-remaining" "got '${remains[*]}' then '$remain4' (want 2 1 0 then 0)"; fi
resets_ok=yes
for r in "${resets[@]}" "$reset4"; do
  [[ "$r" =~ ^[0-9]+$ ]] && [ "$r" -ge 1 ] && [ "$r" -le 60 ] || resets_ok=""
done
if [ -n "$resets_ok" ]; then ok "headers/x-ratelimit-reset (seconds left in the minute: ${resets[*]} $reset4)"
else bad "headers/x-ratelimit-reset" "got '${resets[*]}' then '$reset4' (want seconds 1..60 on every response)"; fi

# --- case 3: request_headers descriptor (per x-user-id value) ------------------------------------
flush
fit_in_minute 15
codes=""; named=""
for p in "$P_A_OPEN" "$P_B_OPEN" "$P_A_OPEN"; do
  req "$p" /user -H 'x-user-id: alice'; codes="$codes $code"
  named="$named[$(hdr x-ratelimit-limit)]"
done
if [ "$codes" = " 200 200 429" ]; then ok "user/alice-limited-at-3rd-across-A-B (200 200 429)"
else bad "user/alice-limited-at-3rd-across-A-B" "got$codes (want 200 200 429)"; fi
# A limit with a name in the service's config: draft 03 appends ;name="..." to the quota policy.
want_named='[2, 2;w=60;name="per-user"]'
if [ "$named" = "$want_named$want_named$want_named" ]; then ok "headers/x-ratelimit-limit-named ('2, 2;w=60;name=\"per-user\"')"
else bad "headers/x-ratelimit-limit-named" "got $named (want $want_named on all three)"; fi
req "$P_B_OPEN" /user -H 'x-user-id: bob'
if [ "$code" = 200 ] && [ "$(hdr x-ratelimit-remaining)" = 1 ]; then ok "user/bob-has-own-counter (200, remaining 1)"
else bad "user/bob-has-own-counter" "got $code remaining '$(hdr x-ratelimit-remaining)'"; fi
codes=""; any_rl=""
for p in "$P_A_OPEN" "$P_B_OPEN" "$P_A_OPEN"; do
  req "$p" /user; codes="$codes $code"
  has_hdr x-ratelimit-limit && any_rl=yes
done
if [ "$codes" = " 200 200 200" ] && [ -z "$any_rl" ]; then ok "user/no-header-no-descriptor-no-limit (200 x3, no x-ratelimit-*)"
else bad "user/no-header-no-descriptor-no-limit" "got$codes x-ratelimit headers: ${any_rl:-none}"; fi
ukeys="$(rcli --scan --pattern "${DOMAIN}_user_*" 2>/dev/null | sort | paste -sd' ' -)"
if [[ "$ukeys" == "${DOMAIN}_user_alice_"*" ${DOMAIN}_user_bob_"* ]]; then ok "user/redis-keys-per-value"
else bad "user/redis-keys-per-value" "keys '$ukeys'"; fi

# --- case 3b: hits_addend, per-route rate_limits and domain, filter disabled per route ----------
flush
fit_in_minute 15
got=""
for p in "$P_A_OPEN" "$P_B_OPEN" "$P_A_OPEN"; do
  req "$p" /hits; got="$got $code/$(hdr x-ratelimit-remaining)"
done
# 5 per minute, 2 hits each: 3 left, 1 left, then over (the route's own rate_limits are replaced).
if [ "$got" = " 200/3 200/1 429/0" ]; then ok "hits/number-2-per-request (200/3 200/1 429/0 across A/B)"
else bad "hits/number-2-per-request" "status/remaining:$got (want 200/3 200/1 429/0)"; fi
req "$P_B_OPEN" /hits-header -H 'x-hits: 4'; got="$code/$(hdr x-ratelimit-remaining)"
req "$P_A_OPEN" /hits-header -H 'x-hits: 2'; got="$got $code/$(hdr x-ratelimit-remaining)"
req "$P_A_OPEN" /hits-header -H 'x-hits: lots'; got="$got $code/$(hdr x-ratelimit-remaining)"
if [ "$got" = "200/1 429/0 200/" ]; then ok "hits/format-from-request-header (4 then 2 of 5: 200/1 429/0; not a number: no descriptor)"
else bad "hits/format-from-request-header" "status/remaining: $got (want 200/1 429/0 200/)"; fi
req "$P_A_OPEN" /hits-legacy; got="$code/$(hdr x-ratelimit-remaining)"
if [ "$got" = "200/4" ]; then ok "hits/ignored-in-route-level-rate-limits (200/4, as Envoy)"
else bad "hits/ignored-in-route-level-rate-limits" "status/remaining: $got (want 200/4)"; fi
req "$P_A_OPEN" /other-domain; c1="$code"
req "$P_B_OPEN" /other-domain; c2="$code"
dkeys="$(rcli --scan --pattern "${DOMAIN}-other_generic_key_dom_*" 2>/dev/null | paste -sd' ' -)"
if [ "$c1 $c2" = "200 429" ] && [ -n "$dkeys" ]; then ok "per-route-domain (1 per minute in $DOMAIN-other: 200 429)"
else bad "per-route-domain" "got $c1 $c2, keys '$dkeys'"; fi
codes=""
for p in "$P_A_OPEN" "$P_B_OPEN" "$P_A_OPEN" "$P_B_OPEN"; do
  req "$p" /unlimited; codes="$codes $code"
done
if [ "$codes" = " 200 200 200 200" ] && ! has_hdr x-ratelimit-limit; then ok "filter-disabled-per-route (4 x 200, no x-ratelimit-*)"
else bad "filter-disabled-per-route" "got$codes"; fi

# --- case 4: failure_mode_deny: true listener works while the service is up -----------------------
flush
req "$P_A_DENY" /shared
if [ "$code" = 200 ] && [ "$(hdr x-ratelimit-remaining)" = 2 ]; then ok "deny-listener/200-while-service-up"
else bad "deny-listener/200-while-service-up" "got $code remaining '$(hdr x-ratelimit-remaining)'"; fi

# --- case 5: the ratelimit service stopped --------------------------------------------------------
stop_pid "$rl_pid"
for i in "${!pids[@]}"; do [ "${pids[i]}" = "$rl_pid" ] && unset 'pids[i]'; done
pids=("${pids[@]}")
rl_pid=""
if port_open "$P_RL_GRPC"; then say "ratelimit gRPC port still open after stopping it"; fi
flush
codes=""; rl_hdr=""
for p in "$P_A_OPEN" "$P_B_OPEN" "$P_A_OPEN" "$P_B_OPEN" "$P_A_OPEN"; do
  req "$p" /shared; codes="$codes $code"
  { has_hdr x-envoy-ratelimited || has_hdr x-ratelimit-limit; } && rl_hdr=yes
done
if [ "$codes" = " 200 200 200 200 200" ] && [ -z "$rl_hdr" ]; then ok "service-down/fail-open (5 x 200 past the limit, no rate limit headers)"
else bad "service-down/fail-open" "got$codes rate-limit headers: ${rl_hdr:-none}"; fi
for side in A B; do
  if [ "$side" = A ]; then p="$P_A_DENY"; else p="$P_B_DENY"; fi
  req "$p" /shared
  if [ "$code" = 500 ] && ! has_hdr x-upstream; then ok "service-down/failure-mode-deny-500-on-$side"
  else bad "service-down/failure-mode-deny-500-on-$side" "got $code (want 500, a local reply)"; fi
done
deny_hdrs="$(grep -vi '^date:' "$hf" | paste -sd'|' -)"; deny_body="$(body)"
say "failure_mode_deny reply: $deny_hdrs body '$deny_body'"
if [ "$(hdr x-envoy-ratelimited)" = "" ]; then ok "service-down/deny-500-without-x-envoy-ratelimited"
else bad "service-down/deny-500-without-x-envoy-ratelimited" "x-envoy-ratelimited='$(hdr x-envoy-ratelimited)'"; fi

# --- case 6: the service answers nothing: the filter's 1 s timeout ------------------------------
# A listener on the service's gRPC port that accepts connections and never reads or writes.
cat >"$work/blackhole.py" <<'EOF'
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
held = []
deadline = time.time() + 300
s.settimeout(1)
while time.time() < deadline:
    try:
        held.append(s.accept()[0])
    except socket.timeout:
        pass
EOF
python3 "$work/blackhole.py" "$P_RL_GRPC" >"$work/blackhole.log" 2>&1 &
bh_pid=$!
pids+=("$bh_pid")
if wait_until 10 "$bh_pid" port_open "$P_RL_GRPC"; then
  req "$P_A_OPEN" /shared; t_open="$t"
  if [ "$code" = 200 ] && has_hdr x-upstream && ! has_hdr x-ratelimit-limit && in_range "$t_open" 0.9 3; then
    ok "service-silent/fail-open-after-timeout (200 in ${t_open}s)"
  else bad "service-silent/fail-open-after-timeout" "got $code in ${t_open}s (want 200 from the upstream after ~1 s)"; fi
  req "$P_B_DENY" /shared; t_deny="$t"
  if [ "$code" = 500 ] && ! has_hdr x-upstream && in_range "$t_deny" 0.9 3; then
    ok "service-silent/failure-mode-deny-500-after-timeout (500 in ${t_deny}s)"
  else bad "service-silent/failure-mode-deny-500-after-timeout" "got $code in ${t_deny}s (want 500 after ~1 s)"; fi
  say "timeout deny reply: $(grep -vi '^date:' "$hf" | paste -sd'|' -) body '$(body)'"
else
  bad "service-silent/setup" "black-hole listener did not start"
fi
stop_pid "$bh_pid"
for i in "${!pids[@]}"; do [ "${pids[i]}" = "$bh_pid" ] && unset 'pids[i]'; done
pids=("${pids[@]}")

# --- case 7: the service back: limits enforced again ----------------------------------------------
if start_ratelimit; then
  flush
  fit_in_minute 20
  back=""
  deadline=$((SECONDS + 15))
  while [ $SECONDS -lt $deadline ]; do
    req "$P_A_OPEN" /user -H 'x-user-id: carol'
    if has_hdr x-ratelimit-limit; then back=yes; break; fi
    sleep 0.5
  done
  if [ -n "$back" ]; then
    req "$P_B_OPEN" /user -H 'x-user-id: carol'; c2="$code"
    req "$P_A_OPEN" /user -H 'x-user-id: carol'; c3="$code"
    if [ "$c2 $c3" = "200 429" ]; then ok "service-back/limit-enforced-again"
    else bad "service-back/limit-enforced-again" "after the first: $c2 $c3 (want 200 429)"; fi
  else
    bad "service-back/limit-enforced-again" "no x-ratelimit-limit within 15 s of the service's restart"
  fi
else
  bad "service-back/limit-enforced-again" "ratelimit service did not restart"
fi

# --- the proxies are still up ---------------------------------------------------------------------
alive=""
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || alive="$alive $pid"; done
if [ -z "$alive" ]; then ok "all-processes-still-running"; else bad "all-processes-still-running" "exited:$alive"; fi

finish
