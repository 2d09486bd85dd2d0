#!/usr/bin/env bash
# Builds the gateway and the echo backend, makes development certificates (once), then runs
# config/quickstart.yaml in front of the echo: HTTP on 8080, HTTPS on 8443, admin on 9100.
# Ctrl-C stops both. Try:
#   curl -i http://127.0.0.1:8080/api/hello
#   curl -i --cacert certs/ca.crt https://localhost:8443/api/hello
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p gateway -p backends --bins

[ -f certs/localhost.crt ] || target/release/gateway certs dev --out certs

target/release/echo --listen 127.0.0.1:9001 --name echo &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT

target/release/gateway check --config config/quickstart.yaml
echo "gateway on http://127.0.0.1:8080 and https://localhost:8443 (admin on http://127.0.0.1:9100); Ctrl-C to stop"
target/release/gateway run --config config/quickstart.yaml
