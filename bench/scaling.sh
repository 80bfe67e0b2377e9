#!/usr/bin/env bash
# Scheduler scaling beside Go: W1 spawn, skewed load and the park/unpark
# ping-pong at each number of Ps in $PROCS (default 1 2 4 8 16), gort's
# //sched:sched_bench (3 repetitions, medians) and the matching Go 1.19
# programs (3 runs each). Meant for a machine with that many cores.
#   PROCS="1 2 4 8 16" bench/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
procs=${PROCS:-1 2 4 8 16}
bazel build --config=opt //sched:sched_bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for prog in spawn skewed pingpong; do
  (cd "bench/go/$prog" && go build -o "$tmp/$prog" .)
done
echo "== gort"
GORT_BENCH_PROCS=$(echo "$procs" | tr ' ' ',') bazel-bin/sched/sched_bench \
  --benchmark_filter='Spawn|SkewedLoad|ParkUnpark' --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true 2>&1 | grep -E 'median'
echo "== Go 1.19 (ns per op, three runs)"
for p in $procs; do
  for prog in spawn skewed pingpong; do
    runs=$(for r in 1 2 3; do "$tmp/$prog" -procs="$p" | awk '{print $2}'; done | paste -sd' ')
    echo "$prog procs=$p $runs"
  done
done
