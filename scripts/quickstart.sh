#!/usr/bin/env bash
# Builds the gateway and the backends, makes development certificates (once), then runs
# config/quickstart.yaml in front of them: HTTP on 8080, HTTPS on 8443, admin on 9100.
# Backends: echo on 9001, and the demo shop: auth on 9002, product on 9003, cart on 9004.
# Ctrl-C stops them all. Try:
#   curl -i http://127.0.0.1:8080/api/hello
#   curl -i --cacert certs/ca.crt https://localhost:8443/api/hello
#   curl -s -X POST http://127.0.0.1:8080/auth/token -H 'content-type: application/json' \
#        -d '{"username":"alice","password":"alice-demo-password"}'
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p gateway -p backends --bins

[ -f certs/localhost.crt ] || target/release/gateway certs dev --out certs

issuer=http://127.0.0.1:9002
jwks=$issuer/.well-known/jwks.json
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
target/release/echo --listen 127.0.0.1:9001 --name echo & pids+=($!)
target/release/auth --listen 127.0.0.1:9002 --issuer $issuer --audience shop --users config/demo-users.json & pids+=($!)
target/release/product --listen 127.0.0.1:9003 --issuer $issuer --audience shop --jwks-url $jwks & pids+=($!)
target/release/cart --listen 127.0.0.1:9004 --issuer $issuer --audience shop --jwks-url $jwks & pids+=($!)

target/release/gateway check --config config/quickstart.yaml
echo "gateway on http://127.0.0.1:8080 and https://localhost:8443 (admin on http://127.0.0.1:9100); Ctrl-C to stop"
target/release/gateway run --config config/quickstart.yaml
