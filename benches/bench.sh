#!/usr/bin/env bash
# Times the multithreaded fixture (4 threads, 200,400 allocator calls) natively, under
# `rltrace record` (ptrace engine, full CFI stacks) and under `ltrace -f -e malloc+free`,
# in one run, and prints time per traced call and the ratios. Installs ltrace if missing.
# Usage: benches/bench.sh [runs]   (default 3; the best run of each is kept)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
if ! command -v ltrace >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ltrace >/dev/null
  else
    echo "bench: ltrace is not installed (apt-get install ltrace)" >&2
    exit 1
  fi
fi
cargo build --release --quiet
out=target/bench
mkdir -p "$out"
cc -O1 -g -pthread tests/fixtures/c/mt.c -o "$out/mt"
calls=200400

best() { # best wall time in seconds of "$@" over $runs runs
  local b=""
  for _ in $(seq "$runs"); do
    local t0 t1 t
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    t=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}

native=$(best "$out/mt")
rl=$(best ./target/release/rltrace record -o "$out/mt.rlt" -- "$out/mt")
lt=$(best ltrace -f -e malloc+free -o /dev/null "$out/mt")
size=$(stat -c %s "$out/mt.rlt")
records=$(./target/release/rltrace dump "$out/mt.rlt" | grep -c -E '^(Enter|Exit)')

per() { echo "($1 - $native) * 1000000 / $calls" | bc -l; }
printf 'workload: %s allocator calls, 4 threads; best of %s runs\n' "$calls" "$runs"
printf '%-34s %10s %14s\n' tool "wall (s)" "us per call"
printf '%-34s %10.3f %14s\n' native "$native" -
printf '%-34s %10.3f %14.2f\n' "rltrace record (ptrace, stacks)" "$rl" "$(per "$rl")"
printf '%-34s %10.3f %14.2f\n' "ltrace -f -e malloc+free" "$lt" "$(per "$lt")"
printf 'ltrace / rltrace time per call: %.1fx\n' "$(echo "($lt - $native) / ($rl - $native)" | bc -l)"
printf 'recording: %s bytes for %s call/return records (%.2f bytes each, stacks included)\n' \
  "$size" "$records" "$(echo "$size / $records" | bc -l)"
