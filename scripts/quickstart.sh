#!/usr/bin/env bash
# Builds the gateway and the echo backend, then runs config/gateway.yaml in front of it.
# Ctrl-C stops both. Try:  curl -i http://127.0.0.1:8080/api/hello
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p gateway -p backends --bins

target/release/echo --listen 127.0.0.1:9001 --name echo &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT

target/release/gateway check --config config/gateway.yaml
echo "gateway on http://127.0.0.1:8080 (admin on http://127.0.0.1:9100); Ctrl-C to stop"
target/release/gateway run --config config/gateway.yaml
