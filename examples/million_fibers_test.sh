#!/usr/bin/env bash
# Smoke test of the demo the README's first command runs: a small run of
# both parts (fibers, then threads) must finish and print every figure.
set -euo pipefail
demo="$1"
out="$("$demo" --fibers=2000 --sleep_ms=10 --threads=20)"
echo "$out"
fail() { echo "FAIL: $*" >&2; exit 1; }
grep -Eq '^gort: 2,000 fibers, each Sleep\(10ms\) -> wall [0-9.]+ s, peak RSS [0-9.]+ [KMGT]?B \(\+[0-9.]+ [KMGT]?B: [0-9.]+ [KMGT]?B per fiber started; [0-9,]+ alive at peak, [0-9.]+ [KMGT]?B each\)$' <<<"$out" ||
  fail "no fiber line"
grep -Eq '^threads: 20 std::threads, each sleep_for\(10ms\) -> wall [0-9.]+ s' <<<"$out" ||
  fail "no thread line"
grep -Eq '^fibers vs threads: [0-9.]+x the start rate' <<<"$out" || fail "no contrast line"
# Bad flags are refused with a usage message and exit code 2.
set +e
"$demo" --fibers=0 >/dev/null 2>&1
[[ $? -eq 2 ]] || fail "--fibers=0 was not refused"
"$demo" --no_such_flag >/dev/null 2>&1
[[ $? -eq 2 ]] || fail "an unknown flag was not refused"
echo PASS
