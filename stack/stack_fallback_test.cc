// The mprotect guard fallback (kernels without MADV_GUARD_INSTALL), forced by
// a test hook before the pool starts. Test order matters: the budget test
// exhausts the mprotect guards, so it runs last.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "stack/internal/pool.h"
#include "stack/internal/test_hooks.h"
#include "stack/internal/test_util.h"
#include "stack/stack.h"

namespace gort {
namespace {

using stack_internal::MappingCount;
using stack_internal::MaxMapCount;
using stack_internal::OverflowMessageRegex;
using stack_internal::RecurseForever;
using stack_internal::ResidentPages;
using stack_internal::RunOnStack;

const bool kFallbackForced = [] {
  stack_internal::ForceFallbackGuardsForTesting();
  return true;
}();

TEST(StackFallbackTest, UsesMprotectGuards) {
  ASSERT_TRUE(kFallbackForced);
  Stack s = Stack::Allocate();
  const StackStats stats = GetStackStats(false);
  EXPECT_FALSE(stats.lightweight_guards);
  EXPECT_GE(stats.mprotect_guarded, 1u);
  EXPECT_EQ(stats.unguarded, 0u);
  EXPECT_EQ(stats.guard_budget, MaxMapCount() / 4);
}

TEST(StackFallbackTest, AllocateWriteReleaseReuse) {
  Stack a = Stack::Allocate();
  std::memset(a.base(), 0x11, a.size());
  void* top = a.top();
  a.Release();
  Stack b = Stack::Allocate();
  EXPECT_EQ(b.top(), top);
  std::memset(b.base(), 0x22, b.size());
}

TEST(StackFallbackTest, EachGuardCostsAboutTwoMappings) {
  constexpr std::size_t kStacks = 100;
  const std::size_t maps_before = MappingCount();
  std::vector<Stack> stacks;
  for (std::size_t i = 0; i < kStacks; ++i) {
    stacks.push_back(Stack::Allocate(48 * 1024));  // fresh slots
  }
  const std::size_t maps_after = MappingCount();
  EXPECT_GE(maps_after - maps_before, 2 * kStacks - 2);
  // Fresh slots are carved a thread-cache batch at a time.
  EXPECT_LE(maps_after - maps_before,
            2 * (kStacks + stack_internal::kThreadCacheBatch) + 8);
}

TEST(StackFallbackTest, TrimmingWorksAcrossProtectedGuards) {
  std::vector<Stack> stacks;
  std::vector<std::pair<void*, std::size_t>> regions;
  for (int i = 0; i < 50; ++i) {
    stacks.push_back(Stack::Allocate());
    std::memset(stacks.back().base(), 1, stacks.back().size());
    regions.emplace_back(stacks.back().base(), stacks.back().size());
  }
  stacks.clear();
  ReleaseStackCache();
  for (const auto& [base, size] : regions) {
    EXPECT_EQ(ResidentPages(base, size), 0u);
  }
}

TEST(StackFallbackDeathTest, OverflowIsReported) {
  Stack stack = Stack::Allocate();
  stack.SetOwnerId(77);
  EXPECT_EXIT(RunOnStack(stack, RecurseForever, nullptr),
              testing::KilledBySignal(SIGABRT),
              OverflowMessageRegex(stack, 77));
}

TEST(StackFallbackDeathTest, OtherFaultsGetTheDefaultAction) {
  // No handler was installed before ours: the default action applies.
  Stack stack = Stack::Allocate();
  auto fault = [] {
    volatile std::uintptr_t address = 16;  // opaque to the optimizer
    *reinterpret_cast<volatile int*>(address) = 1;
  };
#ifdef GORT_SANITIZED
  // The sanitizer's own SEGV report comes first.
  EXPECT_DEATH(fault(), "SEGV");
#else
  EXPECT_EXIT(fault(), testing::KilledBySignal(SIGSEGV), "");
#endif
}

// Runs last: uses up the mprotect budget.
TEST(StackFallbackTest, PastTheBudgetStacksAreUnguardedWithOneWarning) {
  const StackStats before = GetStackStats(false);
  ASSERT_LT(before.mprotect_guarded, before.guard_budget);
  const std::size_t remaining = before.guard_budget - before.mprotect_guarded;
  constexpr std::size_t kOver = 50;
  testing::internal::CaptureStderr();
  std::vector<Stack> stacks;
  for (std::size_t i = 0; i < remaining + kOver; ++i) {
    stacks.push_back(Stack::Allocate(16 * 1024));  // fresh slots
  }
  const std::string err = testing::internal::GetCapturedStderr();
  const StackStats after = GetStackStats(false);
  EXPECT_EQ(after.mprotect_guarded, before.guard_budget);
  EXPECT_EQ(after.unguarded, kOver);
  EXPECT_LT(MappingCount(), MaxMapCount() * 3 / 4);
  // Exactly one warning line.
  const std::string needle = "stack guard budget exhausted";
  const std::size_t first = err.find(needle);
  EXPECT_NE(first, std::string::npos) << err;
  EXPECT_EQ(err.find(needle, first + 1), std::string::npos);
  // Unguarded stacks still work.
  std::memset(stacks.back().base(), 1, stacks.back().size());
  stacks.clear();
  EXPECT_EQ(GetStackStats(false).live, before.live);
}

}  // namespace
}  // namespace gort
