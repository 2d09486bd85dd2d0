#!/usr/bin/env bash
# Builds target/pgo/gateway: the release gateway optimized with a profile of its own hot path
# (profile-guided optimization). Three steps, about 14 minutes on 2 cores from a fresh clone:
#   1. build an instrumented gateway, which counts the branches and calls it takes;
#   2. train it: loadbench drives HTTP/1.1, HTTP/2, TLS, JWT and rate-limited (in-process and
#      Redis) requests through it for a few seconds each;
#   3. merge the counts and build the gateway again with them, so the compiler lays out, inlines
#      and predicts for the paths requests really take.
# Needs llvm-profdata of rustc's LLVM major version (rustup's llvm-tools component or Debian's
# llvm-N) and redis-server; says how to install either.
#
#   scripts/build-pgo.sh
#   PGO_TRAIN_DURATION=10s scripts/build-pgo.sh                              # longer training per scenario
#   cargo run --release -p benches --bin loadbench -- --bin-dir target/pgo   # bench this build
#   GATEWAY_BIN=target/pgo/gateway benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."

llvm_version=$(rustc -vV | sed -n 's/^LLVM version: //p')
llvm_major=${llvm_version%%.*}
# rustup's llvm-tools component matches rustc's LLVM exactly; Debian's llvm-N packages do too.
rustup_profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
profdata=""
for tool in "$rustup_profdata" "llvm-profdata-$llvm_major" llvm-profdata; do
  if command -v "$tool" >/dev/null && "$tool" --version 2>/dev/null | grep -q "LLVM version $llvm_major\."; then
    profdata=$tool
    break
  fi
done
if [ -z "$profdata" ]; then
  echo "llvm-profdata for LLVM $llvm_major is missing (rustc uses LLVM $llvm_version):" \
    "rustup component add llvm-tools, or apt-get install llvm-$llvm_major" >&2
  exit 1
fi
command -v redis-server >/dev/null || {
  echo "redis-server is missing (the training load includes the Redis rate limit): apt-get install redis-server" >&2
  exit 1
}

target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
out=$target/pgo
profiles=$out/profiles
rm -rf "$profiles" "$out/train"
mkdir -p "$out/train"

echo "== 1/3 instrumented build (and the echo backend and loadbench, for the training)"
cargo build --release --locked -p backends -p benches --bins
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles" \
  cargo build --release --locked -p gateway --bin gateway --target-dir "$out/instrumented"
# RUSTFLAGS instrument build scripts too, whose counts are not wanted in the profile.
rm -rf "$profiles"

echo "== 2/3 training"
ln -sf "$out/instrumented/release/gateway" "$out/train/gateway"
ln -sf "$target/release/echo" "$out/train/echo"
"$target/release/loadbench" --bin-dir "$out/train" --duration "${PGO_TRAIN_DURATION:-3s}" --warmup 500ms --rounds 1 \
  --scenarios gateway,gateway-h2,gateway-https,gateway-jwt,gateway-local-limit,gateway-redis-limit,gateway-all \
  2>&1 | tee "$out/train.log"
# A training run with failed requests would teach the compiler the error paths.
if grep -q "transport errors\|skipping" "$out/train.log"; then
  echo "training did not run cleanly (see $out/train.log): not building with its profile" >&2
  exit 1
fi
"$profdata" merge -o "$out/gateway.profdata" "$profiles"

echo "== 3/3 optimized build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$out/gateway.profdata" \
  cargo build --release --locked -p gateway --bin gateway --target-dir "$out/optimized"
cp "$out/optimized/release/gateway" "$out/gateway"
# Beside it so that `loadbench --bin-dir target/pgo` and `E2E_BIN_DIR=target/pgo` find the backends.
for backend in echo auth product cart; do
  ln -sf "$target/release/$backend" "$out/$backend"
done
echo "built $out/gateway"
