#!/usr/bin/env bash
# Benchmarks rltrace's two engines against the anchor tools, all in one run:
#
# 1. The multithreaded fixture (4 threads) with 4,002,004 allocator calls: natively, under
#    `rltrace record --engine agent` (full CFI stacks) and under `heaptrack`.
# 2. The same fixture with 200,104 calls (the slow tools would take minutes on 4 million):
#    natively, under `rltrace record --engine ptrace` and under `ltrace -f -e malloc+free`;
#    and with `-x write` (a function the agent does not interpose) under both engines
#    together and under ptrace alone.
# 3. The Rust server fixture: requests per second natively and under the agent engine,
#    driven by benches/client.c.
# 4. A shell script of 20 short commands: the agent's cost per process start.
#
# Prints overhead per call and the ratios, and recording size per call against heaptrack's
# file. Installs ltrace and heaptrack if missing (as root). Timing belongs here, never in
# a pass/fail test.
# Usage: benches/bench.sh [runs]   (default 3; the best run of each is kept; the big
# workload and the server run at least 5 and 7 interleaved rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
need=()
command -v ltrace >/dev/null || need+=(ltrace)
command -v heaptrack >/dev/null || need+=(heaptrack)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "bench: missing ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
cargo build --release --quiet
out=target/bench
mkdir -p "$out"
cc -O1 -g -pthread tests/fixtures/c/mt.c -o "$out/mt"
cc -O1 -g -pthread -DITERS=500000 tests/fixtures/c/mt.c -o "$out/mt4m"
cc -O2 benches/client.c -o "$out/client"
(cd tests/fixtures/rust-server && cargo build --release --quiet --target-dir "../../../$out/server")
server="$out/server/release/rust-server"
# Allocator calls: per thread ITERS mallocs, ITERS frees and ITERS/1000 leaked mallocs;
# pthread_create's 4 callocs.
small=200104
big=4002004
# Allocations (malloc, calloc) in the big run: heaptrack's file is measured per allocation.
big_allocs=2002004

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

best_valid() { # like best, but a run whose command fails is dropped
  local b=""
  for _ in $(seq "$runs"); do
    local t0 t1 t
    t0=$(date +%s.%N)
    if "$@" >/dev/null 2>&1; then
      t1=$(date +%s.%N)
      t=$(echo "$t1 - $t0" | bc -l)
      if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
    fi
  done
  echo "${b:-nan}"
}
once() { # wall time in seconds of one run of "$@"
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
lower() { # the smaller of $1 (empty: none yet) and $2
  if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc -l)" = 1 ]; then echo "$2"; else echo "$1"; fi
}
# The big workload in interleaved triples (native, agent, heaptrack), so that all three
# see the same moment of this VM: run to run, its times swing by a factor of two between
# minutes, and blocks of runs of one tool then another compared different moments.
native4=""
agent4=""
heap4=""
big_ratios=()
big_runs=$((runs > 5 ? runs : 5))
for _ in $(seq "$big_runs"); do
  n=$(once "$out/mt4m")
  a=$(once ./target/release/rltrace record --engine agent -o "$out/mt4m.rlt" -- "$out/mt4m")
  h=$(once heaptrack -o "$out/ht" "$out/mt4m")
  native4=$(lower "$native4" "$n")
  agent4=$(lower "$agent4" "$a")
  heap4=$(lower "$heap4" "$h")
  big_ratios+=("$(echo "($a - $n) / ($h - $n)" | bc -l)")
done
big_median=$(printf '%s\n' "${big_ratios[@]}" | sort -n | sed -n "$(((big_runs + 1) / 2))p")
native=$(best "$out/mt")
pt=$(best ./target/release/rltrace record --engine ptrace -o "$out/mt.rlt" -- "$out/mt")
# -x naming a function the agent does not interpose: both engines together, and ptrace alone.
both_x=$(best ./target/release/rltrace record -x write -o "$out/mt-x.rlt" -- "$out/mt")
pt_x=$(best ./target/release/rltrace record --engine ptrace -x write -o "$out/mt-xp.rlt" -- "$out/mt")
# ltrace's program now and then dies of a SIGSEGV part way (seen here after 23, 12,985
# and 137,909 of 200,100 calls), or ltrace hooks nothing: a run counts only
# if its output has every malloc and free (a call split by another thread's is one
# "name(" line and one "resumed" line).
traced_ltrace() {
  ltrace -f -e malloc+free -o "$out/lt.txt" "$out/mt"
  [ "$(grep -c -E '(malloc|free)\(' "$out/lt.txt")" -ge "$((small - 4))" ]
}
lt=$(best_valid traced_ltrace)
agent_size=$(stat -c %s "$out/mt4m.rlt")
heap_size=$(stat -c %s "$(ls "$out"/ht.* | head -1)")

per() { echo "($1 - $2) * 1000000000 / $3" | bc -l; }
printf 'allocator calls, 4 threads; best of %s runs\n\n' "$runs"
printf '%-40s %9s %10s %12s\n' tool calls "wall (s)" "ns per call"
printf '%-40s %9s %10.3f %12s\n' native "$big" "$native4" -
printf '%-40s %9s %10.3f %12.0f\n' "rltrace record --engine agent" "$big" "$agent4" "$(per "$agent4" "$native4" $big)"
printf '%-40s %9s %10.3f %12.0f\n' "heaptrack" "$big" "$heap4" "$(per "$heap4" "$native4" $big)"
printf '%-40s %9s %10.3f %12s\n' native "$small" "$native" -
printf '%-40s %9s %10.3f %12.0f\n' "rltrace record --engine ptrace" "$small" "$pt" "$(per "$pt" "$native" $small)"
printf '%-40s %9s %10.3f %12.0f\n' "rltrace record -x write (agent+ptrace)" "$small" "$both_x" "$(per "$both_x" "$native" $small)"
printf '%-40s %9s %10.3f %12.0f\n' "rltrace record --engine ptrace -x write" "$small" "$pt_x" "$(per "$pt_x" "$native" $small)"
if [ "$lt" = nan ]; then
  printf '%-40s %9s %10s %12s\n' "ltrace -f -e malloc+free" "$small" "no run" "complete"
else
  printf '%-40s %9s %10.3f %12.0f\n' "ltrace -f -e malloc+free" "$small" "$lt" "$(per "$lt" "$native" $small)"
fi
echo
printf 'agent overhead / heaptrack overhead:  %.2f (best runs); median of %s interleaved triples %.2f (triples: %s)\n' \
  "$(echo "($agent4 - $native4) / ($heap4 - $native4)" | bc -l)" "$big_runs" "$big_median" \
  "$(printf '%.2f ' "${big_ratios[@]}")"
printf 'agent slowdown vs native:             %.1fx (heaptrack %.1fx)\n' \
  "$(echo "$agent4 / $native4" | bc -l)" "$(echo "$heap4 / $native4" | bc -l)"
if [ "$lt" != nan ]; then
  printf 'ltrace / ptrace engine time per call: %.1fx\n' "$(echo "($lt - $native) / ($pt - $native)" | bc -l)"
else
  echo "ltrace / ptrace engine time per call: no ltrace run traced every call (it crashed the program or hooked nothing; run again)"
fi
printf 'ptrace engine / agent time per call:  %.0fx\n' \
  "$(echo "(($pt - $native) / $small) / (($agent4 - $native4) / $big)" | bc -l)"
printf 'recording size per call: agent %.3f bytes (timestamps, arguments, returns, stacks);' \
  "$(echo "$agent_size / $big" | bc -l)"
printf ' heaptrack %.3f bytes per call, %.3f per allocation\n' \
  "$(echo "$heap_size / $big" | bc -l)" "$(echo "$heap_size / $big_allocs" | bc -l)"
# The same run's size with times to the millisecond (heaptrack stores a time every 10 ms).
./target/release/rltrace record --time-resolution 1000000 -o "$out/mt4m-ms.rlt" -- "$out/mt4m" >/dev/null 2>&1
printf 'recording size per call with --time-resolution 1000000: agent %.3f bytes\n\n' \
  "$(echo "$(stat -c %s "$out/mt4m-ms.rlt") / $big" | bc -l)"

# Many short processes: a shell script running 20 coreutils commands, natively and under
# the agent (each process image connects, sends its imports and waits for the answer).
script="$out/short.sh"
cat >"$script" <<'EOS'
ls >/dev/null; cat /dev/null; sort /dev/null; uniq /dev/null; wc /dev/null >/dev/null
head /dev/null; tail /dev/null; cut -f1 /dev/null; tr a b </dev/null; od /dev/null >/dev/null
date >/dev/null; id >/dev/null; env >/dev/null; basename /a/b >/dev/null; dirname /a/b >/dev/null
stat / >/dev/null; du -s /etc/hostname >/dev/null; md5sum /dev/null >/dev/null
sha1sum /dev/null >/dev/null; seq 3 >/dev/null
EOS
short_native=$(best bash "$script")
short_agent=$(best ./target/release/rltrace record -o "$out/short.rlt" -- bash "$script")
printf 'shell script of 20 short commands: native %.3f s, agent %.3f s (%.1f ms a process more)\n\n' \
  "$short_native" "$short_agent" "$(echo "($short_agent - $short_native) * 1000 / 21" | bc -l)"

# Requests per second of the Rust server: natively and under the agent engine, in
# interleaved pairs (native, then agent) so that both see the same moment of this VM, whose
# request rates swing by a factor of three between minutes.
requests=5000
serve() { # serve CMD...: starts it, waits for its address, runs the client
  local fifo="$out/server.out"
  rm -f "$fifo"
  "$@" >"$fifo" 2>/dev/null &
  local pid=$!
  local addr=""
  for _ in $(seq 200); do
    addr=$(sed -n 's/^listening on //p' "$fifo" 2>/dev/null || true)
    [ -n "$addr" ] && break
    sleep 0.05
  done
  "$out/client" "$addr" "$requests"
  wait "$pid" || true
}
rps_native=0
rps_agent=0
ratios=()
server_runs=$((runs > 7 ? runs : 7))
for _ in $(seq "$server_runs"); do
  n=$(serve "$server"); [ "$n" -gt "$rps_native" ] && rps_native=$n
  a=$(serve ./target/release/rltrace record --engine agent -o "$out/server.rlt" -- "$server")
  [ "$a" -gt "$rps_agent" ] && rps_agent=$a
  ratios+=("$(echo "100 * $a / $n" | bc -l)")
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(((server_runs + 1) / 2))p")
printf 'Rust server, %s requests, %s interleaved pairs: best native %s req/s, best agent %s req/s (%.0f%%); median pair %.0f%% of native (pairs: %s)\n' \
  "$requests" "$server_runs" "$rps_native" "$rps_agent" "$(echo "100 * $rps_agent / $rps_native" | bc -l)" \
  "$median" "$(printf '%.0f ' "${ratios[@]}")"
