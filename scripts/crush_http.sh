#!/usr/bin/env bash
# Crush test over real HTTP with a real load generator, on loopback only.
#
#   scripts/crush_http.sh [full|queue|baseline] [seconds]
#
# Installs wrk from Debian's packages when it is missing (needs root and apt-get), starts the
# example server (examples/crush_http.rs --serve: 4 workers x 20 ms = 200 requests/s) on a port
# the OS picks, and drives it with wrk paced to 3x its capacity (96 connections, each waiting
# 80 ms before every request; 1 s timeout like the callers of the tokio run). wrk is a closed-loop
# generator: when the server slows down, so does wrk (coordinated omission), so against the FIFO
# baseline it offers less than 3x. The open-loop figures come from
# `cargo run --release --example crush_http`, which this script runs instead when wrk cannot be
# installed. Everything is bounded: wrk runs for `seconds` (default 10, at most 60), the server
# stops by itself 4 s later.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-full}
SECONDS_RUN=${2:-10}
CONNECTIONS=${WRK_CONNECTIONS:-96}
[[ "$MODE" == full || "$MODE" == queue || "$MODE" == baseline ]] || { echo "usage: $0 [full|queue|baseline] [seconds]" >&2; exit 2; }
(( SECONDS_RUN >= 1 && SECONDS_RUN <= 60 )) || { echo "seconds must be in 1..60" >&2; exit 2; }

if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  echo "installing wrk from Debian's packages..."
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; } || true
fi

cargo build --release --quiet --example crush_http
BIN=${CARGO_TARGET_DIR:-target}/release/examples/crush_http

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk is not available here: running the bounded tokio load generator instead"
  exec "$BIN"
fi

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
"$BIN" --serve $((SECONDS_RUN + 4)) "$MODE" >"$LOG" 2>&1 &
SERVER=$!
URL=""
for _ in $(seq 1 100); do
  URL=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$LOG")
  [[ -n "$URL" ]] && break
  sleep 0.1
done
[[ -n "$URL" ]] || { echo "the server did not start" >&2; cat "$LOG" >&2; kill "$SERVER"; exit 1; }
case "$URL" in http://127.0.0.1:*) ;; *) echo "refusing a non-loopback URL: $URL" >&2; kill "$SERVER"; exit 1;; esac

echo "== $MODE server at $URL; wrk: $CONNECTIONS connections, each waiting ${WRK_DELAY_MS:-80} ms before each request for ${SECONDS_RUN} s"
wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_RUN}s" --timeout 1s --latency -s scripts/wrk_paced.lua "$URL"
wait "$SERVER"
echo "== server side"
cat "$LOG"
