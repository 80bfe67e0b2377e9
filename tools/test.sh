#!/usr/bin/env bash
# The whole test suite: installs what is missing, then `bazel test //...`.
# Extra arguments go to bazel (e.g. tools/test.sh --config=tsan).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec bazel test "$@" //...
