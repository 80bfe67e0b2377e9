#!/usr/bin/env bash
# Cross-compiles //stack and //fiber for AArch64 (g++-aarch64-linux-gnu) and,
# where qemu-user is installed, runs tools/aarch64_smoke.cc on them.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  echo "gort aarch64 check: installing g++-aarch64-linux-gnu"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Abseil's headers are architecture-independent; /usr/include provides them.
flags=(-std=c++20 -O2 -Wall -Wextra -Wno-unused-parameter -fno-omit-frame-pointer
       -I. -idirafter /usr/include)
srcs=(fiber/fiber.cc fiber/internal/fatal.cc fiber/internal/switch_aarch64.S
      fiber/internal/switch_x86_64.S stack/stack.cc stack/internal/slab.cc
      stack/internal/pool.cc stack/internal/overflow.cc)
for f in "${srcs[@]}"; do
  aarch64-linux-gnu-g++ "${flags[@]}" -c "$f" -o "$out/$(basename "$f").o"
done
echo "gort aarch64 check: ${#srcs[@]} files compiled for AArch64"
aarch64-linux-gnu-g++ "${flags[@]}" -static -pthread tools/aarch64_smoke.cc \
  "$out"/*.o -o "$out/smoke"
if command -v qemu-aarch64 >/dev/null; then
  qemu-aarch64 "$out/smoke"
else
  echo "gort aarch64 check: qemu-aarch64 not installed; built, not run"
fi
