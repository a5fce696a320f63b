# Shared by the conformance scenario scripts (ratelimit/, ext_proc_sdk/): process handling,
# free ports, polling and PASS/FAIL bookkeeping. The caller defines `say`, `work` and `pids`.

passed=0
failed=0

stop_pid() { # stop_pid PID: TERM, wait up to 5 s, then KILL; only our own children
  local pid="$1" i
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}
forget_pid() { # forget_pid PID: drop it from pids (after stop_pid)
  local i
  for i in "${!pids[@]}"; do [ "${pids[i]}" = "$1" ] && unset 'pids[i]'; done
  pids=("${pids[@]}")
}
cleanup() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  pids=()
  if [ "$failed" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; else say "logs and configs kept in $work"; fi
}

free_ports() { # free_ports N: N distinct free loopback ports (bound together, then released)
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_until() { # wait_until SECONDS PID CMD...: poll CMD every 0.1 s; fail early if PID died
  local deadline=$((SECONDS + $1)) pid="$2"; shift 2
  while [ $SECONDS -lt $deadline ]; do
    "$@" && return 0
    [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && return 1
    sleep 0.1
  done
  return 1
}

ok() { echo "PASS $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && exit 0
  exit 1
}
fatal() { # a step everything after depends on failed: record it and stop
  bad "$1" "$2"
  [ -n "${3:-}" ] && { echo "----- tail of $3 -----"; tail -n 30 "$3"; echo "-----"; }
  finish
}
