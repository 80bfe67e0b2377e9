#!/usr/bin/env bash
# The "million goroutines" demo: installs what is missing, then runs
# //examples:million_fibers optimised. Arguments go to the program, e.g.
#   tools/demo.sh --fibers=100000 --sleep_ms=1000 --threads=2000
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec bazel run --config=opt //examples:million_fibers -- "$@"
