#!/usr/bin/env bash
# Userspace instructions per request, gateway against nginx and against `hyperfloor` (about the
# least a hyper 1.x proxy does), counted by callgrind.
#
# Shared machines make req/s and CPU time noisy; instruction counts are not: the same binary and
# input give the same count whatever else runs. Each proxy serves one keep-alive connection of
# sequential GETs of /bytes/256 from the echo backend, under callgrind, twice (WARM and N
# requests); the difference divided by N - WARM leaves out start-up. Kernel work (the syscalls,
# equal for both) is not counted, and instructions are not time: this compares the work each
# proxy's own code does, which is where they differ.
#
#   benches/instructions.sh               # needs valgrind and curl; nginx is skipped if missing
#   N=20000 benches/instructions.sh       # more requests
#   GATEWAY_BIN=/tmp/old/gateway benches/instructions.sh   # another build of the gateway (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
WARM=${WARM:-2000}
PROXY_PORT=${PROXY_PORT:-18180}
ECHO_PORT=${ECHO_PORT:-18181}
for tool in valgrind curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done

cargo build --release --quiet -p gateway -p backends -p benches --bin gateway --bin echo --bin hyperfloor
bin=target/release
gateway_bin=${GATEWAY_BIN:-$bin/gateway}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/echo" --listen "127.0.0.1:$ECHO_PORT" >/dev/null 2>&1 &

cat >"$work/gateway.yaml" <<EOF
listeners:
  - name: main
    address: 127.0.0.1:$PROXY_PORT
upstreams:
  echo:
    endpoints: [http://127.0.0.1:$ECHO_PORT]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: echo
EOF

# The same header work as the gateway's, as in loadbench's nginx (benches/src/nginx.rs), in one
# process so that callgrind sees it all.
cat >"$work/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx/client_body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    keepalive_requests 100000000;
    upstream echo {
        server 127.0.0.1:$ECHO_PORT;
        keepalive 256;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header Forwarded "for=\$remote_addr;host=\"\$http_host\";proto=\$scheme";
            proxy_set_header X-Request-Id \$request_id;
            proxy_set_header traceparent "00-\$request_id-00f067aa0ba902b7-00";
            add_header X-Request-Id \$request_id always;
        }
    }
}
EOF

# One curl process sends all its URLs on one connection, one after another.
urls() {
  for _ in $(seq "$1"); do
    printf 'url = "http://127.0.0.1:%s/bytes/256"\noutput = "/dev/null"\n' "$PROXY_PORT"
  done >"$work/urls"
}

# Total instructions of one run of proxy "$@" serving $1 requests (gateway: SIGTERM drains it;
# nginx: SIGQUIT; hyperfloor: SIGTERM ends it).
count() {
  local requests=$1 signal=$2
  shift 2
  urls "$requests"
  valgrind --tool=callgrind --callgrind-out-file="$work/out" "$@" >"$work/log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do
    curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/bytes/256" && break
    sleep 0.1
  done
  curl -s --fail -K "$work/urls" || { echo "requests failed; log:" >&2; cat "$work/log" >&2; exit 1; }
  kill "-$signal" "$pid"
  wait "$pid" || true
  awk '/^totals:/ {print $2}' "$work/out"
}

per_request() {
  local name=$1
  shift
  local small large
  small=$(count "$WARM" "$@")
  large=$(count "$N" "$@")
  echo "$name $(( (large - small) / (N - WARM) ))"
}

results=$(per_request gateway TERM "$gateway_bin" run --config "$work/gateway.yaml")
results+=$'\n'$(per_request hyper-floor TERM "$bin/hyperfloor" --listen "127.0.0.1:$PROXY_PORT" \
  --upstream "127.0.0.1:$ECHO_PORT" --workers 1)
if command -v nginx >/dev/null; then
  mkdir -p "$work/nginx"/{client_body,proxy,fastcgi,uwsgi,scgi}
  results+=$'\n'$(per_request nginx QUIT nginx -p "$work/nginx" -c "$work/nginx.conf")
else
  echo "nginx is not installed (apt-get install nginx): gateway only" >&2
fi

echo "userspace instructions per request ($((N - WARM)) sequential keep-alive GETs of /bytes/256, callgrind):"
echo "$results" | awk '{printf "  %-11s %7d\n", $1, $2; v[$1]=$2} END {
  printf "  gateway / hyper-floor %.2fx\n", v["gateway"] / v["hyper-floor"]
  if (v["nginx"]) printf "  gateway / nginx %.2fx\n  hyper-floor / nginx %.2fx\n", v["gateway"] / v["nginx"], v["hyper-floor"] / v["nginx"]
}'
