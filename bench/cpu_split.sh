#!/bin/bash
# A server's CPU per request split into user (Python, the loop) and system (kernel) time.
#
#   bench/cpu_split.sh PORT MODE CONNS -- SERVER COMMAND...
#   e.g. bench/cpu_split.sh 23001 echo 50 -- .venv/bench/bin/python asyncio_protocol.py --uvloop
#        bench/cpu_split.sh 23002 udp 50 -- .venv/bench/bin/python sockserve_async.py --udp
#        bench/cpu_split.sh 23003 echo 1000 -- ../build/echo_epoll tcp {port}
#
# The server gets "--port PORT", or PORT in place of "{port}" in its arguments.  Pick
# a PORT outside the ephemeral range (32768-60999 on Linux), which the load
# generator's own connections may still hold.
#
# Runs the server (from bench/servers, on CPU 0) and the C load generator (CPU 1, built
# by run.py) for 5 s, and reads the server's utime/stime from /proc over 2 s of it.
# The kernel counts in 10 ms ticks: expect a few tenths of a microsecond of noise.
set -eu
PORT=$1; MODE=$2; CONNS=$3; shift 4
BENCH=$(cd "$(dirname "$0")" && pwd)
cd "$BENCH/servers"
ARGS=()
for arg in "$@"; do ARGS+=("${arg//\{port\}/$PORT}"); done
[[ " $* " == *"{port}"* ]] || ARGS+=(--port "$PORT")
taskset -c 0 "${ARGS[@]}" > /dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
sleep 1.5  # the server binds and announces itself
OUT=$(mktemp)
taskset -c 1 "$BENCH/build/loadgen" --mode "$MODE" --port "$PORT" --conns "$CONNS" \
    --size 64 --duration 5 --warmup 0.5 > "$OUT" &
LOAD=$!
sleep 2
read -ra BEFORE < "/proc/$SERVER/stat"
sleep 2
read -ra AFTER < "/proc/$SERVER/stat"
wait $LOAD
python3 - "$OUT" "${BEFORE[13]}" "${BEFORE[14]}" "${AFTER[13]}" "${AFTER[14]}" <<'PY'
import json, os, sys
out, u1, s1, u2, s2 = sys.argv[1], *map(int, sys.argv[2:])
rate = json.loads(open(out).read().strip().splitlines()[-1])["rate"]
tick = os.sysconf("SC_CLK_TCK")
per = lambda ticks: ticks / tick / 2 / rate * 1e6
print(f"{rate:,.0f} req/s; CPU per request: user {per(u2 - u1):.2f} µs, "
      f"system {per(s2 - s1):.2f} µs")
os.unlink(out)
PY
