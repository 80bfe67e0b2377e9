#!/usr/bin/env bash
# Installs what gort needs on Debian 12 / Ubuntu: idempotent, prints what it installs.
#
#   tools/setup.sh            # build + test dependencies (Bazel, Abseil, GoogleTest, Benchmark, gperftools)
#   tools/setup.sh --bench    # plus the comparison baselines (Go 1.19, Boost.Fiber)
#   tools/setup.sh --cross    # plus the AArch64 cross-compiler and qemu-user (tools/check_aarch64.sh)
set -euo pipefail

pkgs=(
  bazel-bootstrap        # Bazel 4.2.3
  bazel-rules-java       # rules_java, used as a local_repository (see WORKSPACE)
  g++                    # C++20 compiler (g++ 12)
  libabsl-dev            # @com_google_absl
  libgtest-dev libgmock-dev googletest  # @com_google_googletest
  libbenchmark-dev       # @com_github_google_benchmark
  libgoogle-perftools-dev google-perftools  # @com_github_gperftools (profiler, tcmalloc) + google-pprof
  libboost-context-dev   # Boost.Context: the switch baseline in //fiber:fiber_bench
)
for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(golang-go libboost-fiber-dev) ;;
    --cross) pkgs+=(g++-aarch64-linux-gnu qemu-user) ;;
    *) echo "usage: tools/setup.sh [--bench] [--cross]" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "gort setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "gort setup: all packages present"
fi
