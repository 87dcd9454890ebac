#!/usr/bin/env bash
# DMB side by side with centrifuge (the Go library Centrifugo is built on)
# and Socket.IO 4, on this machine: the same Node clients (ws) connect to
# one server at a time; each server broadcasts M messages at R/s to all N.
# Prints one JSON line per run: idle memory per connection (the server's RSS
# growth / N), deliveries, the server's CPU seconds (DMB's with and without
# Redis's), deliveries per CPU-second. Needs Go, Node 20+, redis-server, and
# the network once (npm install, go build fetch socket.io and centrifuge).
#
#   bash scripts/compare/run.sh [N=2000] [M=200] [R=20] [ROUNDS=3]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
(cd "$root" && go build -o "$BIN/dmb" .)
(cd "$here/centrifuge" && go build -o "$BIN/centrifuge-server" .)
(cd "$here" && npm install --no-audit --no-fund --silent)
for _ in $(seq "${4:-3}"); do
  for server in dmb cf sio; do
    node "$here/bench.mjs" "$server" "${1:-2000}" "${2:-200}" "${3:-20}"
  done
done
