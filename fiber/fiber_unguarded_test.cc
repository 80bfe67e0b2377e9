// Fibers on stacks carved without a guard: an old kernel (no
// MADV_GUARD_INSTALL) past its mprotect guard budget. Forced by //stack's
// test hooks, with a budget of four guards, before the stack pool starts: its
// own binary, since the guard mode is fixed at the first allocation.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fiber/fiber.h"
#include "gtest/gtest.h"
#include "stack/internal/test_hooks.h"
#include "stack/stack.h"

namespace gort {
namespace {

constexpr std::size_t kBudget = 4;

const bool kFallbackForced = [] {
  stack_internal::ForceFallbackGuardsForTesting();
  stack_internal::SetGuardBudgetForTesting(kBudget);
  return true;
}();

// A default-size stack with (or without) a guard below it. Past the first
// few carved slots, most are unguarded.
Stack DefaultStack(bool guarded) {
  std::vector<Stack> others;  // returned to the pool at the end
  for (int i = 0; i < 1000; ++i) {
    Stack s = Stack::Allocate();
    if (s.guarded() == guarded) return s;
    others.push_back(std::move(s));
  }
  ADD_FAILURE() << "no " << (guarded ? "guarded" : "unguarded") << " stack";
  return Stack();
}

// Recurses, writing its frames in full, until they reach `limit`: an overrun
// that ends below the stack's bottom. Uninstrumented, so that ASan keeps the
// frames on the real stack.
__attribute__((noinline, no_sanitize("address"))) int RecurseDownTo(
    std::uintptr_t limit) {
  volatile char buf[512];
  for (auto& c : buf) c = 1;
  if (reinterpret_cast<std::uintptr_t>(&buf[0]) < limit) return buf[0];
  return RecurseDownTo(limit) + buf[511];
}

TEST(FiberUnguardedTest, TheFallbackIsForcedWithATinyBudget) {
  ASSERT_TRUE(kFallbackForced);
  std::vector<Stack> stacks;
  for (int i = 0; i < 20; ++i) stacks.push_back(Stack::Allocate());
  const StackStats stats = GetStackStats(false);
  EXPECT_FALSE(stats.lightweight_guards);
  EXPECT_EQ(stats.mprotect_guarded, kBudget);
  EXPECT_GT(stats.unguarded, 0u);
}

TEST(FiberUnguardedTest, AFiberOnAnUnguardedStackArmsItsCanary) {
  Stack stack = DefaultStack(/*guarded=*/false);
  ASSERT_FALSE(stack.guarded());
  ASSERT_FALSE(stack.is_compact());
  // Whatever the stack's previous user left at its bottom.
  std::memset(stack.base(), 0, kStackCanaryBytes);
  int steps = 0;
  int depth = -1;
  Fiber* f = Fiber::Create(
      [&] {
        for (int i = 0; i < 3; ++i) {
          ++steps;
          Fiber::Suspend();  // checked at every switch: intact
        }
        // Deep, but within the stack: the canary stays intact.
        const auto base =
            reinterpret_cast<std::uintptr_t>(Fiber::Current()->stack().base());
        depth = RecurseDownTo(base + 32 * 1024);
      },
      std::move(stack), "shallow");
  EXPECT_FALSE(f->stack().guarded());
  EXPECT_EQ(f->stack().size(), kDefaultStackSize);
  EXPECT_TRUE(f->stack().CanaryIntact());
  while (f->Resume(), !f->finished()) {
  }
  EXPECT_EQ(steps, 3);
  EXPECT_GT(depth, 1);
  EXPECT_TRUE(f->stack().CanaryIntact());
  Fiber::Destroy(f);
}

TEST(FiberUnguardedTest, AFiberOnAGuardedStackHasNoCanaryToCheck) {
  Stack stack = DefaultStack(/*guarded=*/true);
  ASSERT_TRUE(stack.guarded());
  // Writing where a canary would be is not an overrun here: the guard is
  // below, and nothing checks the bottom of the stack.
  Fiber* f = Fiber::Create(
      [] {
        std::memset(Fiber::Current()->stack().base(), 0, kStackCanaryBytes);
        Fiber::Suspend();
      },
      std::move(stack));
  while (f->Resume(), !f->finished()) {
  }
  Fiber::Destroy(f);
}

constexpr char kUnguardedOverrun[] =
    "fatal: fiber stack overflow: fiber [0-9]+ \\(%s\\) overran its "
    "unguarded stack \\[0x[0-9a-f]+, 0x[0-9a-f]+\\) \\(262144 bytes\\): the "
    "kernel has no MADV_GUARD_INSTALL and the mprotect guard budget was "
    "exhausted";

std::string UnguardedOverrunRegex(const char* name) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), kUnguardedOverrun, name);
  return buf;
}

TEST(FiberUnguardedDeathTest, AWriteIntoTheCanaryIsReportedAtTheNextSwitch) {
  EXPECT_DEATH(
      {
        Fiber::Create(
            [] {
              // What a frame too deep for the stack leaves behind.
              std::memset(Fiber::Current()->stack().base(), 0, 16);
              Fiber::Suspend();
            },
            DefaultStack(/*guarded=*/false), "tiny")
            ->Resume();
      },
      UnguardedOverrunRegex("tiny"));
}

TEST(FiberUnguardedDeathTest, ARecursionPastTheBottomIsReportedWhenItExits) {
  // 8 KiB past the bottom: into the unused guard space below the stack.
  EXPECT_DEATH(
      {
        Fiber::Create(
            [] {
              const auto base = reinterpret_cast<std::uintptr_t>(
                  Fiber::Current()->stack().base());
              RecurseDownTo(base - 8 * 1024);
            },
            DefaultStack(/*guarded=*/false), "deep")
            ->Resume();
      },
      UnguardedOverrunRegex("deep"));
}

}  // namespace
}  // namespace gort
