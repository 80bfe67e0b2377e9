#!/usr/bin/env bash
# Every *_bench binary writes a gperftools CPU profile when CPUPROFILE is set
# (tools/build_defs.bzl links the profiler into gort_cc_bench targets).
#
#   bench_profile_test.sh [--sanitized] BENCH FILTER [BENCH FILTER ...]
#
# Runs each BENCH with CPUPROFILE set, only the benchmarks FILTER matches
# (one fast one) and a tiny minimum time, and checks that the profile exists
# and starts with the profile header (words 0, 3, 0: header count, version).
# Under --sanitized (ASan/TSan builds, where the profiler is not linked) it
# only says so and passes.
set -euo pipefail

if [[ "${1:-}" == "--sanitized" ]]; then
  echo "skipped: the CPU profiler is not linked under sanitizers"
  exit 0
fi
if (( $# == 0 || $# % 2 != 0 )); then
  echo "usage: $0 [--sanitized] BENCH FILTER [BENCH FILTER ...]" >&2
  exit 2
fi

tmp="${TEST_TMPDIR:-$(mktemp -d)}"
failed=0
while (( $# > 0 )); do
  bench="$1" filter="$2"
  shift 2
  name="$(basename "${bench}")"
  prof="${tmp}/${name}.prof"
  log="${tmp}/${name}.log"
  rm -f "${prof}"
  if ! CPUPROFILE="${prof}" "${bench}" --benchmark_filter="${filter}" \
      --benchmark_min_time=0.001 >"${log}" 2>&1; then
    echo "FAIL: ${name} exited with an error:"
    cat "${log}"
    failed=1
    continue
  fi
  if ! grep -q '^BM_' "${log}"; then
    echo "FAIL: ${name}: the filter '${filter}' ran no benchmark:"
    cat "${log}"
    failed=1
  fi
  if [[ ! -s "${prof}" ]]; then
    echo "FAIL: ${name} wrote no profile to ${prof} (is libprofiler linked?)"
    failed=1
    continue
  fi
  # The first three 8-byte words of the header: 0, 3, 0.
  header="$(od -A n -t u8 -N 24 "${prof}" | tr -s ' \n' ' ')"
  if [[ "${header}" != " 0 3 0 " ]]; then
    echo "FAIL: ${name}: ${prof} does not start with a CPU profile header" \
      "(words:${header})"
    failed=1
    continue
  fi
  echo "ok: ${name} wrote $(stat -c %s "${prof}") bytes of profile"
done
exit "${failed}"
