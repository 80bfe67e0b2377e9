// A gtest-free smoke test of //fiber for AArch64, run under qemu-user by
// tools/check_aarch64.sh: generator round trips, per-fiber FPCR (rounding
// mode), per-fiber exception state, deep recursion, and a fiber migrating
// between threads. Prints "aarch64 smoke: N passed, 0 failed".
#include <cfenv>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "fiber/fiber.h"

namespace {
int g_failed = 0, g_passed = 0;
void Check(bool ok, const char* what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAILED: %s\n", what);
  }
}

__attribute__((noinline)) int Recurse(int depth) {
  volatile char buf[512];
  buf[0] = 1;
  if (depth == 0) return buf[0] - 1;
  return Recurse(depth - 1) + depth + (buf[0] - 1);
}
}  // namespace

int main() {
  using gort::Fiber;
  // Generator.
  int value = -1, sum = 0;
  Fiber* gen = Fiber::Create([&] {
    for (int i = 0; i < 1000; ++i) {
      value = i;
      Fiber::Suspend();
    }
  });
  for (gen->Resume(); !gen->finished(); gen->Resume()) sum += value;
  Check(sum == 999 * 1000 / 2, "generator sum");
  Fiber::Destroy(gen);

  // FPCR (rounding mode) is per fiber.
  int inside = -1;
  Fiber* fp = Fiber::Create([&] {
    std::fesetround(FE_UPWARD);
    Fiber::Suspend();
    inside = std::fegetround();
  });
  fp->Resume();
  Check(std::fegetround() == FE_TONEAREST, "rounding mode restored");
  std::fesetround(FE_DOWNWARD);
  fp->Resume();
  Check(inside == FE_UPWARD, "rounding mode kept in fiber");
  std::fesetround(FE_TONEAREST);
  Fiber::Destroy(fp);

  // A switch never clears a fiber's exception flags (FPSR).
  int fiber_sees = -1;
  volatile double three = 3.0, zero = 0.0;
  std::feclearexcept(FE_ALL_EXCEPT);
  Fiber* fl = Fiber::Create([&] {
    volatile double x = 1.0 / three;  // inexact
    (void)x;
    Fiber::Suspend();
    fiber_sees = std::fetestexcept(FE_INEXACT);
  });
  fl->Resume();
  Check(std::fetestexcept(FE_INEXACT) == 0, "fiber's flag stays in the fiber");
  volatile double y = three / zero;  // divide-by-zero
  (void)y;
  fl->Resume();
  Check(fiber_sees != 0, "fiber's flag kept across switches");
  Check(std::fetestexcept(FE_DIVBYZERO) != 0, "our flag kept across switches");
  std::feclearexcept(FE_ALL_EXCEPT);
  Fiber::Destroy(fl);

  // Exception state per fiber.
  std::string rethrown;
  Fiber* ex = Fiber::Create([&] {
    try {
      throw std::runtime_error("a");
    } catch (...) {
      Fiber::Suspend();
      try {
        throw;
      } catch (const std::exception& e) {
        rethrown = e.what();
      }
    }
  });
  ex->Resume();
  try {
    throw std::logic_error("main");
  } catch (...) {
  }
  ex->Resume();
  Check(rethrown == "a", "exception per fiber");
  Fiber::Destroy(ex);

  // Deep recursion within the default stack.
  int r = -1;
  Fiber* deep = Fiber::Create([&] { r = Recurse(300); });
  deep->Resume();
  Check(r == 300 * 301 / 2, "deep recursion");
  Fiber::Destroy(deep);

  // Migration to another thread.
  Fiber* before = nullptr;
  Fiber* after = nullptr;
  Fiber* mig = Fiber::Create([&] {
    before = Fiber::Current();
    Fiber::Suspend();
    after = Fiber::Current();
  });
  mig->Resume();
  std::thread([&] { mig->Resume(); }).join();
  Check(before == mig && after == mig && mig->finished(), "migration");
  Fiber::Destroy(mig);

  std::printf("aarch64 smoke: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
