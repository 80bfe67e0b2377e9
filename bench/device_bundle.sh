#!/usr/bin/env bash
# Packs what a many-core machine without Bazel or Go needs to run gort's
# benchmarks beside Go's: the --config=opt benchmark binaries, every shared
# library they load (the loader and libc included, so the target's own
# libraries do not matter), the Go programs of bench/go (static) and
# devbench/run.sh, which runs them all and writes its figures to a folder.
#   bench/device_bundle.sh            # builds devbench/ (in .gitignore)
#   devbench/run.sh OUTDIR            # on the other machine
# x86-64 Linux only (it carries and calls ld-linux-x86-64.so.2).
# run.sh does: scheduler scaling at 1, 2, 4, 8, 16 Ps (as bench/scaling.sh),
# the switch against Boost.Context, channels, mutexes and the million-fiber
# demo beside Go's, each on as many cores as the machine has and at 2 Ps.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=(sched/sched_bench fiber/fiber_bench chan/chan_bench sync/mutex_bench
  examples/million_fibers)
labels=()
for b in "${bins[@]}"; do labels+=("//${b%/*}:${b#*/}"); done
bazel build --config=opt "${labels[@]}"
rm -rf devbench
mkdir -p devbench/bin devbench/lib devbench/go
for b in "${bins[@]}"; do cp "bazel-bin/$b" devbench/bin/; done
# Each library once (cp -n exits 1 on an existing file with newer coreutils).
for b in "${bins[@]}"; do
  ldd "bazel-bin/$b" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | sort -u | xargs -r cp -L -t devbench/lib/
(cd bench/go && for p in spawn skewed pingpong yield chan_pingpong \
  chan_buffered chan_select mutex rwmutex sleepers; do
  CGO_ENABLED=0 go build -o "../../devbench/go/$p" "./$p"
done)
cat >devbench/run.sh <<'EOF'
#!/usr/bin/env bash
# Written by bench/device_bundle.sh; see there.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: run.sh OUTDIR}
mkdir -p "$out"
g() {  # runs one of the bundled gort binaries with the bundled libraries
  local b=$1; shift
  "$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" "$here/bin/$b" "$@"
}
med() {  # runs a Go program three times; prints the median and all three
  local key=$1; shift
  local v
  v=$(for r in 1 2 3; do "$@" | awk -v k="$key" '$1 == k {print $2}'; done |
    sort -g | paste -sd' ')
  echo "$(echo "$v" | awk '{print $2}') ($v)"
}
ncpu=$(nproc)
{
  echo "== machine"; date -u; nproc; uname -r
  grep -m1 'model name' /proc/cpuinfo; free -g | head -2
} >"$out/machine.txt" 2>&1
agg=(--benchmark_repetitions=3 --benchmark_report_aggregates_only=true)
{
  echo "== gort sched (medians of 3)"
  GORT_BENCH_PROCS=1,2,4,8,16 g sched_bench \
    --benchmark_filter='Spawn|SkewedLoad|ParkUnpark|Yield' "${agg[@]}" 2>&1 |
    grep -E 'median'
  echo "== Go 1.19 (medians of 3 runs, ns per op)"
  for p in 1 2 4 8 16; do
    for prog in spawn skewed pingpong; do
      echo "$prog procs=$p $(med ns_per_op "$here/go/$prog" -procs="$p")"
    done
  done
  echo "yield $(med ns_per_op "$here/go/yield")"
} >"$out/sched.txt" 2>&1
{
  g fiber_bench --benchmark_filter='Switch|Create' "${agg[@]}" 2>&1 | grep median
} >"$out/fiber.txt" 2>&1
{
  echo "== gort chan (medians of 3)"
  g chan_bench --benchmark_filter='Chan_PingPong|Chan_Buffered|Chan_Select' \
    "${agg[@]}" 2>&1 | grep median
  echo "== Go"
  for p in 1 2; do
    echo "chan_pingpong procs=$p $(med ns_per_op "$here/go/chan_pingpong" -procs=$p)"
  done
  for n in 1 4; do
    echo "chan_buffered producers=$n $(med ns_per_op "$here/go/chan_buffered" -producers=$n)"
  done
  echo "chan_select $(med ns_per_op "$here/go/chan_select")"
  echo "== gort sync (medians of 3)"
  g mutex_bench --benchmark_filter='Contended/2|StdMutex_ContendedThreads|Uncontended$|RWMutex_90Read' \
    "${agg[@]}" 2>&1 | grep median
  echo "== Go"
  echo "mutex $(med ns_per_op "$here/go/mutex")"
  echo "rwmutex $(med ns_per_op "$here/go/rwmutex")"
} >"$out/chan_sync.txt" 2>&1
{
  for p in $(printf '%s\n' 2 "$ncpu" | sort -un); do
    echo "== demo at $p Ps: gort three runs, then Go three runs"
    for r in 1 2 3; do
      GORT_MAXPROCS=$p g million_fibers --threads=0 2>&1 | grep -iE 'wall|rss|fibers' | paste -sd' '
    done
    for r in 1 2 3; do "$here/go/sleepers" -procs="$p"; done
  done
} >"$out/demo.txt" 2>&1
echo done >"$out/done.txt"
EOF
chmod +x devbench/run.sh
du -sh devbench
