#include "stack/stack.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif
#include "stack/internal/overflow.h"
#include "stack/internal/pool.h"
#include "stack/internal/test_hooks.h"
#include "stack/internal/test_util.h"

namespace gort {
namespace {

using stack_internal::KernelHasGuardMarkers;
using stack_internal::MappingCount;
using stack_internal::MaxMapCount;
using stack_internal::ProcessRssBytes;
using stack_internal::ResidentPages;

std::size_t Page() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

std::uintptr_t Addr(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

// Sets the pool limit for one test and restores the default afterwards.
class ScopedPoolLimit {
 public:
  explicit ScopedPoolLimit(std::size_t limit) : old_(GetStackPoolLimit()) {
    SetStackPoolLimit(limit);
  }
  ~ScopedPoolLimit() { SetStackPoolLimit(old_); }

 private:
  std::size_t old_;
};

TEST(StackTest, EmptyStack) {
  Stack s;
  EXPECT_FALSE(s);
  EXPECT_EQ(s.top(), nullptr);
  EXPECT_EQ(s.base(), nullptr);
  EXPECT_EQ(s.size(), 0u);
  s.Release();  // no-op
  EXPECT_FALSE(s);
  static_assert(sizeof(Stack) == sizeof(void*));
}

TEST(StackTest, DefaultStackIsAlignedAndWholeRegionIsWritable) {
  Stack s = Stack::Allocate();
  ASSERT_TRUE(s);
  EXPECT_EQ(s.size(), kDefaultStackSize);
  EXPECT_EQ(Addr(s.top()) % 16, 0u);
  EXPECT_EQ(Addr(s.top()) % Page(), 0u);
  EXPECT_EQ(Addr(s.base()) + s.size(), Addr(s.top()));
  std::memset(s.base(), 0xab, s.size());
  const unsigned char* p = static_cast<const unsigned char*>(s.base());
  EXPECT_EQ(p[0], 0xab);
  EXPECT_EQ(p[s.size() - 1], 0xab);
}

TEST(StackTest, MoveTransfersOwnership) {
  Stack a = Stack::Allocate();
  void* top = a.top();
  Stack b(std::move(a));
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.top(), top);
  Stack c;
  c = std::move(b);
  EXPECT_FALSE(b);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.top(), top);
  // Assigning over a non-empty stack releases the old one.
  const std::size_t live = GetStackStats(false).live;
  c = Stack::Allocate();
  EXPECT_EQ(GetStackStats(false).live, live);
  c = Stack();
  EXPECT_EQ(GetStackStats(false).live, live - 1);
}

TEST(StackTest, ReleasedStackIsReusedLifo) {
  Stack a = Stack::Allocate();
  Stack b = Stack::Allocate();
  void* top_a = a.top();
  void* top_b = b.top();
  EXPECT_NE(top_a, top_b);
  a.Release();
  EXPECT_FALSE(a);
  b.Release();
  // The most recently released (b, still hot in cache and RAM) comes first.
  Stack c = Stack::Allocate();
  Stack d = Stack::Allocate();
  EXPECT_EQ(c.top(), top_b);
  EXPECT_EQ(d.top(), top_a);
}

TEST(StackTest, ReleaseDoesNotTouchTheObjectAfterwards) {
  // The fiber layer keeps the Stack inside the stack it owns.
  Stack s = Stack::Allocate();
  void* top = s.top();
  Stack* inside = new (static_cast<char*>(s.top()) - 64) Stack(std::move(s));
  inside->Release();  // under ASan, a write after poisoning would fail here
  Stack again = Stack::Allocate();
  EXPECT_EQ(again.top(), top);
}

#if defined(__SANITIZE_ADDRESS__)
TEST(StackTest, PooledStacksArePoisonedUnderAsan) {
  Stack s = Stack::Allocate();
  char* base = static_cast<char*>(s.base());
  char* top = static_cast<char*>(s.top());
  EXPECT_FALSE(__asan_address_is_poisoned(base));
  EXPECT_FALSE(__asan_address_is_poisoned(top - 1));
  s.Release();
  EXPECT_TRUE(__asan_address_is_poisoned(base));
  EXPECT_TRUE(__asan_address_is_poisoned(top - 1));
  EXPECT_DEATH(top[-1] = 1, "use-after-poison");
  Stack again = Stack::Allocate();
  ASSERT_EQ(static_cast<char*>(again.top()), top);
  EXPECT_FALSE(__asan_address_is_poisoned(base));
  EXPECT_FALSE(__asan_address_is_poisoned(top - 1));
}
#endif

TEST(StackTest, SizesRoundUpToPagesAndGetTheirOwnSlots) {
  EXPECT_EQ(Stack::Allocate(1).size(), Page());
  EXPECT_EQ(Stack::Allocate(0).size(), kDefaultStackSize);
  EXPECT_EQ(Stack::Allocate(kDefaultStackSize - 1).size(), kDefaultStackSize);
  const std::size_t odd = 100000;
  Stack s = Stack::Allocate(odd);
  EXPECT_EQ(s.size(), (odd + Page() - 1) / Page() * Page());
  EXPECT_EQ(Addr(s.top()) % Page(), 0u);
  EXPECT_EQ(Addr(s.base()) + s.size(), Addr(s.top()));

  std::vector<Stack> stacks;
  for (std::size_t size : {std::size_t{16} << 10, std::size_t{64} << 10,
                           std::size_t{1} << 20, std::size_t{8} << 20}) {
    for (int i = 0; i < 3; ++i) stacks.push_back(Stack::Allocate(size));
  }
  for (Stack& st : stacks) {
    std::memset(st.base(), 0x5a, st.size());
  }
  // No two stacks overlap, guards included.
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
  for (Stack& st : stacks) {
    ranges.emplace_back(Addr(st.base()) - kStackGuardSize, Addr(st.top()));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    EXPECT_LE(ranges[i - 1].second, ranges[i].first);
  }
  EXPECT_GE(GetStackStats(false).size_classes, 7u);
}

TEST(StackTest, MaximumSize) {
  Stack s = Stack::Allocate(kMaxStackSize);
  EXPECT_EQ(s.size(), kMaxStackSize);
  static_cast<char*>(s.top())[-1] = 1;
  static_cast<char*>(s.base())[0] = 1;
}

TEST(StackDeathTest, TooLargeIsFatal) {
  EXPECT_DEATH((void)Stack::Allocate(kMaxStackSize + 1),
               "fatal: fiber stack size [0-9]+ exceeds the maximum");
}

TEST(StackTest, OwnerIdIsKeptOutsideTheStackAndResetOnRelease) {
  Stack s = Stack::Allocate();
  std::memset(s.base(), 0xff, s.size());
  EXPECT_EQ(s.owner_id(), 0u);
  s.SetOwnerId(12345);
  EXPECT_EQ(s.owner_id(), 12345u);
  std::memset(s.base(), 0, s.size());
  EXPECT_EQ(s.owner_id(), 12345u);
  Stack t = Stack::Allocate();
  t.SetOwnerId(7);
  EXPECT_EQ(s.owner_id(), 12345u);
  void* top = s.top();
  s.Release();
  Stack again = Stack::Allocate();
  ASSERT_EQ(again.top(), top);
  EXPECT_EQ(again.owner_id(), 0u);
  EXPECT_EQ(t.owner_id(), 7u);
}

TEST(StackTest, CodeRunsOnTheStack) {
  Stack s = Stack::Allocate();
  struct Probe {
    std::uintptr_t local_address = 0;
  } probe;
  stack_internal::RunOnStack(
      s,
      [](void* arg) {
        // The frame, not a local: ASan may put locals on its fake stack.
        static_cast<Probe*>(arg)->local_address =
            Addr(__builtin_frame_address(0));
      },
      &probe);
  EXPECT_GE(probe.local_address, Addr(s.base()));
  EXPECT_LT(probe.local_address, Addr(s.top()));
}

TEST(StackTest, StatsAccounting) {
  const StackStats before = GetStackStats();
  EXPECT_EQ(before.lightweight_guards, KernelHasGuardMarkers());
  EXPECT_GE(before.guard_bytes, kStackGuardSize);
  EXPECT_EQ(before.pool_limit, GetStackPoolLimit());
  std::vector<Stack> stacks;
  for (int i = 0; i < 100; ++i) stacks.push_back(Stack::Allocate());
  const StackStats during = GetStackStats();
  EXPECT_EQ(during.live, before.live + 100);
  EXPECT_GE(during.slabs, 1u);
  EXPECT_EQ(during.reserved_bytes, during.slabs * (std::size_t{1} << 30));
  EXPECT_GT(during.resident_bytes_estimate, 0u);
  stacks.clear();
  const StackStats after = GetStackStats();
  EXPECT_EQ(after.live, before.live);
  EXPECT_EQ(after.pooled, during.pooled + 100);
  EXPECT_LE(after.thread_cached, after.pooled);
}

// A fiber that uses 3 KiB of a 256 KiB stack costs one or two pages.
TEST(StackTest, PagesAreCommittedOnlyWhenTouched) {
  ReleaseStackCache();  // every pooled stack is now non-resident
  constexpr int kStacks = 64;
  std::vector<Stack> stacks;
  for (int i = 0; i < kStacks; ++i) stacks.push_back(Stack::Allocate());
  // Only the top page is resident: the pool pre-faults it (one batched
  // MADV_POPULATE_WRITE instead of a page fault per new fiber).
  for (Stack& s : stacks) {
    EXPECT_LE(ResidentPages(s.base(), s.size()),
              stack_internal::kPrefaultBytes / 4096);
  }
  const std::size_t rss_before = ProcessRssBytes();
  for (Stack& s : stacks) {
    std::memset(static_cast<char*>(s.top()) - 3072, 1, 3072);
  }
  const std::size_t rss_after = ProcessRssBytes();
  for (Stack& s : stacks) {
    const std::size_t pages = ResidentPages(s.base(), s.size());
    EXPECT_GE(pages, 1u);
    EXPECT_LE(pages, 2u);
  }
  // Far below the 16 MiB that committing the stacks would cost.
  EXPECT_LT(rss_after - std::min(rss_after, rss_before),
            kStacks * kDefaultStackSize / 8);
}

// Stacks pooled during one period are kept; those still unused at the next
// TrimIdleStacks() call lose their pages, down to `keep`.
TEST(StackTest, TrimIdleStacksReleasesOnlyStacksIdleForAPeriod) {
  ReleaseStackCache();
  constexpr std::size_t kStacks = 300;
  std::vector<std::pair<void*, std::size_t>> regions;
  {
    std::vector<Stack> stacks;
    for (std::size_t i = 0; i < kStacks; ++i) {
      stacks.push_back(Stack::Allocate());
      std::memset(static_cast<char*>(stacks.back().top()) - 8192, 1, 8192);
      regions.emplace_back(stacks.back().base(), stacks.back().size());
    }
  }                     // all freed: most go to the shared pool, resident
  ReleaseStackCache();  // (also flushes this thread's cache, then trims all)
  std::vector<Stack> again;
  for (std::size_t i = 0; i < kStacks; ++i) {
    again.push_back(Stack::Allocate());
    std::memset(static_cast<char*>(again.back().top()) - 8192, 1, 8192);
  }
  again.clear();
  const StackStats pooled = GetStackStats(false);
  TrimIdleStacks(16);  // starts the period: nothing was idle for one yet
  EXPECT_EQ(GetStackStats(false).pooled_resident, pooled.pooled_resident);
  TrimIdleStacks(16);  // idle for a whole period now
  // 16 kept in the shared pool, plus what this thread's cache holds.
  EXPECT_LE(GetStackStats(false).pooled_resident,
            16u + stack_internal::kThreadCacheCapacity);
  EXPECT_LT(GetStackStats(false).pooled_resident, pooled.pooled_resident);
  ReleaseStackCache();
}

// A period's idle stacks can be trimmed in slices: the sweep goes on until
// the last slice; the next period began with the sweep.
TEST(StackTest, TrimIdleStacksGoesInSlicesWithinOnePeriod) {
  ReleaseStackCache();
  TrimExcessStacks();
  {
    std::vector<Stack> stacks;
    for (int i = 0; i < 200; ++i) {
      stacks.push_back(Stack::Allocate());
      static_cast<char*>(stacks.back().top())[-1] = 1;
    }
  }
  ReleaseStackCache();  // (trims them: the next 200 come back trimmed)
  {
    std::vector<Stack> stacks;
    for (int i = 0; i < 200; ++i) {
      stacks.push_back(Stack::Allocate());
      static_cast<char*>(stacks.back().top())[-1] = 1;
    }
  }
  const auto shared = [] {
    const StackStats s = GetStackStats(false);
    return s.pooled_resident - s.thread_cached;
  };
  const std::size_t resident = shared();
  ASSERT_GT(resident, 16u + 3 * 10u);
  EXPECT_FALSE(TrimIdleStacks(16, 10));  // a sweep with nothing idle yet
  EXPECT_EQ(shared(), resident);
  std::size_t expected = resident;
  while (expected - 16 > 10) {
    EXPECT_TRUE(TrimIdleStacks(16, 10));  // a slice of the same period
    expected -= 10;
    ASSERT_EQ(shared(), expected);
  }
  EXPECT_FALSE(TrimIdleStacks(16, 10));  // the last slice: the sweep ends
  EXPECT_EQ(shared(), 16u);
  // The 16 kept were pooled when this sweep began: idle for the next one.
  EXPECT_FALSE(TrimIdleStacks(0, 100));
  EXPECT_EQ(shared(), 0u);
  ReleaseStackCache();
}

// Up to `pages` compact pages both of whose slots are ours: the lower slot
// of each in *lower, the upper one in *upper (the other stacks allocated on
// the way are freed).
void HoldCompactPages(std::size_t pages, std::vector<Stack>* lower,
                      std::vector<Stack>* upper) {
  std::vector<Stack> all;
  for (std::size_t i = 0; i < 6 * pages; ++i) {
    all.push_back(Stack::AllocateCompact());
  }
  std::sort(all.begin(), all.end(),
            [](const Stack& a, const Stack& b) { return a.top() < b.top(); });
  for (std::size_t i = 0; i + 1 < all.size() && upper->size() < pages; ++i) {
    if (Addr(all[i].top()) == Addr(all[i + 1].base()) &&
        Addr(all[i].base()) % Page() == 0) {
      lower->push_back(std::move(all[i]));
      upper->push_back(std::move(all[i + 1]));
      ++i;
    }
  }
}

// Compact stacks kept for a page-mate in use do not stall the slices.
TEST(StackTest, TrimIdleSlicesMakeProgressPastCompactStacksKeptForTheirMates) {
  if (kCompactStackSize * 2 != Page()) {
    GTEST_SKIP() << "written for two compact stacks to a page";
  }
  ReleaseStackCache();
  std::vector<Stack> kept, uppers;
  HoldCompactPages(100, &kept, &uppers);
  ASSERT_EQ(uppers.size(), 100u);
  ReleaseStackCache();
  uppers.clear();
  ReleaseStackCache();  // every upper half is kept now, for its mate
  for (int period = 0; period < 3; ++period) {
    int rounds = 0;
    while (rounds < 1000 && TrimIdleStacks(0, 4)) ++rounds;
    EXPECT_LT(rounds, 1000) << "the slices kept retrying kept stacks";
  }
  // With their mates back in the pool, the pages come back within a few
  // sweeps (a kept slot is retried with its mate once both are orphans).
  std::vector<std::pair<void*, std::size_t>> pages;
  for (const Stack& k : kept) pages.emplace_back(k.base(), Page());
  // Freed on a thread that exits: its cache goes to the shared pool whole.
  std::thread([kept = std::move(kept)]() mutable { kept.clear(); }).join();
  for (int period = 0; period < 6; ++period) {
    int rounds = 0;
    while (rounds < 1000 && TrimIdleStacks(0, 4)) ++rounds;
    ASSERT_LT(rounds, 1000);
  }
  std::size_t resident = 0;
  for (const auto& [base, size] : pages) resident += ResidentPages(base, size);
  EXPECT_EQ(resident, 0u);
  ReleaseStackCache();
}

std::size_t StacksWithResidentPages(
    const std::vector<std::pair<void*, std::size_t>>& v);

// One period for every size class: a class whose idle stacks were all
// trimmed in the first slice keeps the stacks pooled after the sweep began
// while the slices go on with another class.
TEST(StackTest, ASweepIsOnePeriodForEveryClass) {
  ReleaseStackCache();
  TrimExcessStacks();
  constexpr std::size_t kOtherSize = 72 * 1024;  // a class of its own
  const auto make = [](std::size_t n, std::size_t size) {
    std::vector<Stack> v;
    for (std::size_t i = 0; i < n; ++i) {
      v.push_back(Stack::Allocate(size));
      static_cast<char*>(v.back().top())[-1] = 1;
    }
    return v;
  };
  make(80, kDefaultStackSize);  // freed at once: most reach the shared pool
  make(250, kOtherSize);
  EXPECT_FALSE(TrimIdleStacks(16));  // a sweep with nothing idle yet
  // The next sweep: the default class comes first and is done within the
  // first slice; the other class goes on.
  ASSERT_TRUE(TrimIdleStacks(16, 40));
  // Default stacks pooled after the sweep began: freed on a thread that
  // exits, so that they all reach the shared pool.
  std::vector<std::pair<void*, std::size_t>> late;
  std::thread([&] {
    std::vector<Stack> v = make(40, kDefaultStackSize);
    for (const Stack& st : v) late.emplace_back(st.base(), st.size());
  }).join();
  int rounds = 0;
  while (rounds < 1000 && TrimIdleStacks(16, 40)) ++rounds;
  ASSERT_LT(rounds, 1000);
  ASSERT_GT(rounds, 0);
  // Not idle for the period that sweep trimmed: every one still resident.
  EXPECT_EQ(StacksWithResidentPages(late), late.size());
  ReleaseStackCache();
}

std::size_t StacksWithResidentPages(
    const std::vector<std::pair<void*, std::size_t>>& v) {
  std::size_t n = 0;
  for (const auto& [base, size] : v) n += ResidentPages(base, size) != 0;
  return n;
}

TEST(StackTest, PoolTrimsPastTheHighWaterMark) {
  constexpr std::size_t kLimit = 16;
  ScopedPoolLimit limit(kLimit);
  constexpr std::size_t kStacks = 600;
  std::vector<Stack> stacks;
  std::vector<std::pair<void*, std::size_t>> regions;
  for (std::size_t i = 0; i < kStacks; ++i) {
    stacks.push_back(Stack::Allocate());
    Stack& s = stacks.back();
    std::memset(static_cast<char*>(s.top()) - 16384, 1, 16384);
    regions.emplace_back(s.base(), s.size());
  }
  EXPECT_EQ(StacksWithResidentPages(regions), kStacks);
  const StackStats before = GetStackStats(false);
  stacks.clear();
  const StackStats after = GetStackStats(false);
  // At most the high-water mark, its slack, and this thread's cache remain.
  const std::size_t bound = kLimit + stack_internal::TrimSlack(kLimit) +
                            stack_internal::kThreadCacheCapacity;
  EXPECT_LE(StacksWithResidentPages(regions), bound);
  EXPECT_LE(after.pooled_resident, bound + before.pooled_resident);
  EXPECT_GE(after.trimmed_stacks - before.trimmed_stacks, kStacks - bound);
  // Releasing the cache gives every page back.
  ReleaseStackCache();
  EXPECT_EQ(StacksWithResidentPages(regions), 0u);
  EXPECT_EQ(GetStackStats(false).thread_cached, 0u);
}

TEST(StackTest, TheCompactPoolKeepsAsManyPagesAsAnyOther) {
  if (kCompactStackSize * 2 != Page()) {
    GTEST_SKIP() << "written for two compact stacks to a page";
  }
  constexpr std::size_t kLimit = 16;
  ScopedPoolLimit limit(kLimit);
  // The compact class's limit counts pages: per page, page / size stacks.
  const std::size_t per_page =
      std::max<std::size_t>(1, Page() / kCompactStackSize);
  const std::size_t scaled = kLimit * per_page;
  constexpr std::size_t kStacks = 600;
  std::vector<Stack> stacks;
  for (std::size_t i = 0; i < kStacks; ++i) {
    stacks.push_back(Stack::AllocateCompact());
    static_cast<char*>(stacks.back().top())[-1] = 1;
  }
  const StackStats before = GetStackStats(false);
  stacks.clear();
  const StackStats after = GetStackStats(false);
  // The limit, its slack, this thread's cache and a few slots kept for
  // their page-mates remain.
  const std::size_t bound = scaled + stack_internal::TrimSlack(scaled) +
                            stack_internal::kThreadCacheCapacity + 8;
  EXPECT_LE(after.pooled_resident, before.pooled_resident + bound);
  EXPECT_GE(after.trimmed_stacks - before.trimmed_stacks, kStacks - bound);
  ReleaseStackCache();
}

TEST(StackTest, TrimCoalescesAdjacentStacks) {
  ReleaseStackCache();
  // A size no other test uses: fresh, adjacent slots in carving order.
  constexpr std::size_t kSize = 60 * 1024;
  constexpr std::size_t kStacks = 1000;
  std::vector<Stack> stacks;
  for (std::size_t i = 0; i < kStacks; ++i) {
    stacks.push_back(Stack::Allocate(kSize));
    static_cast<char*>(stacks.back().top())[-1] = 1;
  }
  const StackStats before = GetStackStats(false);
  stacks.clear();
  ReleaseStackCache();
  const StackStats after = GetStackStats(false);
  EXPECT_GE(after.trimmed_stacks - before.trimmed_stacks, kStacks);
  // One madvise per run of adjacent stacks: one run here (a second if the
  // slab ran out), not one per stack.
  EXPECT_LE(after.trim_calls - before.trim_calls, 2u);
}

// While trimming is deferred (a runtime's monitor trims instead of the
// thread that frees), for the length of a scope.
class ScopedTrimmingDeferred {
 public:
  ScopedTrimmingDeferred() { SetStackTrimmingDeferred(true); }
  ~ScopedTrimmingDeferred() { SetStackTrimmingDeferred(false); }
  ScopedTrimmingDeferred(const ScopedTrimmingDeferred&) = delete;
  ScopedTrimmingDeferred& operator=(const ScopedTrimmingDeferred&) = delete;
};

// Stacks resident in the shared pools (not in a thread cache).
std::size_t SharedResident() {
  const StackStats s = GetStackStats(false);
  return s.pooled_resident - s.thread_cached;
}

// Frees `n` default stacks whose top page was touched, all at once, into a
// pool that starts empty with nothing pending.
void FreeTouchedStacks(std::size_t n) {
  std::vector<Stack> stacks;
  for (std::size_t i = 0; i < n; ++i) {
    stacks.push_back(Stack::Allocate());
    static_cast<char*>(stacks.back().top())[-1] = 1;
  }
  stacks.clear();
}

void StartWithAnEmptyPool() {
  ReleaseStackCache();
  TrimExcessStacks();
  ASSERT_EQ(SharedResident(), 0u);
  ASSERT_FALSE(StackTrimmingPending());
}

// Limit 64 and slack 32: past 96 the pool wants trimming down to 64; past
// 128 it trims on the spot even while deferred.
constexpr std::size_t kDeferLimit = 64;

TEST(StackTest, TrimmingPastTheMarkIsLeftToTheTrimmerWhileDeferred) {
  ASSERT_EQ(stack_internal::TrimSlack(kDeferLimit), 32u);
  StartWithAnEmptyPool();
  ScopedPoolLimit limit(kDeferLimit);
  ScopedTrimmingDeferred deferred;
  const StackStats before = GetStackStats(false);
  FreeTouchedStacks(140);  // the shared pool gets 108-124 of them
  const std::size_t shared = SharedResident();
  ASSERT_GT(shared, 96u);
  ASSERT_LE(shared, 128u);
  EXPECT_EQ(GetStackStats(false).trimmed_stacks, before.trimmed_stacks);
  EXPECT_TRUE(StackTrimmingPending());

  EXPECT_FALSE(TrimExcessStacks());
  EXPECT_FALSE(StackTrimmingPending());
  EXPECT_EQ(SharedResident(), kDeferLimit);
  const StackStats after = GetStackStats(false);
  EXPECT_EQ(after.trimmed_stacks - before.trimmed_stacks, shared - kDeferLimit);
  EXPECT_EQ(after.deferred_trimmed_stacks - before.deferred_trimmed_stacks,
            shared - kDeferLimit);
}

TEST(StackTest, TheTrimmerTrimsAsMuchAsItIsToldAndSaysWhatRemains) {
  StartWithAnEmptyPool();
  ScopedPoolLimit limit(kDeferLimit);
  ScopedTrimmingDeferred deferred;
  FreeTouchedStacks(140);
  const std::size_t shared = SharedResident();
  ASSERT_GT(shared, 96u);
  const std::size_t trimmed_before = GetStackStats(false).trimmed_stacks;
  EXPECT_TRUE(TrimExcessStacks(0));  // only tells
  EXPECT_EQ(SharedResident(), shared);
  EXPECT_TRUE(TrimExcessStacks(10));
  EXPECT_EQ(GetStackStats(false).trimmed_stacks - trimmed_before, 10u);
  EXPECT_EQ(SharedResident(), shared - 10);
  EXPECT_TRUE(StackTrimmingPending());
  EXPECT_FALSE(TrimExcessStacks(1000));
  EXPECT_FALSE(StackTrimmingPending());
  EXPECT_EQ(SharedResident(), kDeferLimit);
  EXPECT_FALSE(TrimExcessStacks(0));
}

TEST(StackTest, APoolFarPastTheMarkTrimsOnTheSpotEvenWhileDeferred) {
  StartWithAnEmptyPool();
  ScopedPoolLimit limit(kDeferLimit);
  ScopedTrimmingDeferred deferred;
  const std::size_t trimmed_before = GetStackStats(false).trimmed_stacks;
  FreeTouchedStacks(1000);
  // Never more than the limit, twice the slack and one batch.
  EXPECT_LE(SharedResident(),
            kDeferLimit + 64 + stack_internal::kThreadCacheBatch);
  EXPECT_GE(GetStackStats(false).trimmed_stacks - trimmed_before,
            1000 - kDeferLimit - 64 - stack_internal::kThreadCacheBatch -
                stack_internal::kThreadCacheCapacity);
  TrimExcessStacks();
}

// Past the second slack the freeing thread trims too, but a bounded share
// (kBackstopTrimStacks past that bound), not all the way down to the mark:
// at the default mark that was 65,536 stacks, and stalled an M's fibers for
// 30-70 ms. The trimmer does the rest.
TEST(StackTest, ThePoolsOwnTrimWhileDeferredIsBounded) {
  StartWithAnEmptyPool();
  constexpr std::size_t kLimit = 4096;
  constexpr std::size_t kSlack = stack_internal::TrimSlack(kLimit);
  constexpr std::size_t kBatch = stack_internal::kThreadCacheBatch;
  ScopedPoolLimit limit(kLimit);
  ScopedTrimmingDeferred deferred;
  const std::size_t trimmed_before = GetStackStats(false).trimmed_stacks;
  // Past the second slack by about 600, less what stays in this thread's
  // cache: the backstop fires once.
  FreeTouchedStacks(kLimit + 2 * kSlack + 600);
  const std::size_t trimmed =
      GetStackStats(false).trimmed_stacks - trimmed_before;
  EXPECT_GT(trimmed, 0u);
  EXPECT_LE(trimmed, stack_internal::kBackstopTrimStacks + 2 * kBatch);
  EXPECT_GE(
      SharedResident(),
      kLimit + 2 * kSlack - stack_internal::kBackstopTrimStacks - 2 * kBatch);
  EXPECT_TRUE(StackTrimmingPending());
  EXPECT_FALSE(TrimExcessStacks());
  EXPECT_EQ(SharedResident(), kLimit);
}

TEST(StackTest, DeferringNestsAndTheLastToStopTrimsWhatIsPending) {
  StartWithAnEmptyPool();
  ScopedPoolLimit limit(kDeferLimit);
  {
    ScopedTrimmingDeferred outer;
    {
      ScopedTrimmingDeferred inner;
      FreeTouchedStacks(140);
      ASSERT_TRUE(StackTrimmingPending());
    }
    // Still deferred: the outer one has not stopped.
    EXPECT_TRUE(StackTrimmingPending());
    EXPECT_GT(SharedResident(), kDeferLimit);
  }
  EXPECT_FALSE(StackTrimmingPending());
  EXPECT_EQ(SharedResident(), kDeferLimit);
  // Not deferred now: past the mark, the freeing thread trims at once.
  FreeTouchedStacks(140);
  EXPECT_FALSE(StackTrimmingPending());
  EXPECT_LE(SharedResident(), 96u + stack_internal::kThreadCacheBatch);
}

// Compact stacks whose page-mate is still in use cannot be trimmed; a
// deferred trimmer with a small budget must still get the pool back under
// its limit rather than retry them round after round.
TEST(StackTest, TheTrimmerMakesProgressPastCompactStacksKeptForTheirMates) {
  if (kCompactStackSize * 2 != Page()) {
    GTEST_SKIP() << "written for two compact stacks to a page";
  }
  StartWithAnEmptyPool();
  ScopedPoolLimit limit(16);  // compact: 32 kept, trims past 48, 64 at once
  // Pages both of whose slots we hold: keep the lower, free the upper.
  std::vector<Stack> kept, uppers;
  HoldCompactPages(81, &kept, &uppers);
  ASSERT_EQ(uppers.size(), 81u);
  ReleaseStackCache();
  TrimExcessStacks();
  const StackStats before = GetStackStats(false);
  {
    ScopedTrimmingDeferred deferred;
    uppers.clear();  // 64 reach the shared pool: past 48, not past 64
    ASSERT_TRUE(StackTrimmingPending());
    int rounds = 0;
    while (rounds < 1000 && TrimExcessStacks(4)) ++rounds;
    EXPECT_LT(rounds, 1000) << "the trimmer kept retrying kept stacks";
    EXPECT_FALSE(StackTrimmingPending());
    // Nothing could be given back: every page is half in use.
    EXPECT_EQ(GetStackStats(false).trimmed_stacks, before.trimmed_stacks);
  }
  kept.clear();
  ReleaseStackCache();
}

TEST(StackDeathTest, StoppingADeferralNeverStartedIsFatal) {
  EXPECT_DEATH(SetStackTrimmingDeferred(false),
               "SetStackTrimmingDeferred\\(false\\) without a matching");
}

TEST(StackTest, CompactStacksArePackedWithoutGuards) {
  std::vector<Stack> stacks;
  for (int i = 0; i < 64; ++i) stacks.push_back(Stack::AllocateCompact());
  std::sort(stacks.begin(), stacks.end(),
            [](const Stack& a, const Stack& b) { return a.top() < b.top(); });
  for (const Stack& s : stacks) {
    EXPECT_TRUE(s.is_compact());
    EXPECT_EQ(s.size(), kCompactStackSize);
    EXPECT_EQ(Addr(s.top()) % kCompactStackSize, 0u);
    std::memset(s.base(), 0x5a, s.size());  // all of it is usable
  }
  // Slots are carved side by side, with no guard between them: among 64
  // (from the pool, or fresh) some are neighbours.
  int adjacent = 0;
  for (std::size_t i = 1; i < stacks.size(); ++i) {
    if (stacks[i].base() == stacks[i - 1].top()) ++adjacent;
  }
  EXPECT_GT(adjacent, 0);
  EXPECT_FALSE(Stack::Allocate().is_compact());
  // A regular class of the same size is a different, guarded class.
  Stack same_size = Stack::Allocate(kCompactStackSize);
  EXPECT_FALSE(same_size.is_compact());
  EXPECT_GE(same_size.size(), kCompactStackSize);
  if (kCompactStackSize < Page()) {
    EXPECT_EQ(Page() % kCompactStackSize, 0u);  // several to a page
  }
}

TEST(StackTest, CompactStackCanaryDetectsAWriteBelowTheStack) {
  Stack s = Stack::AllocateCompact();
  s.SetOwnerId(77);
  EXPECT_EQ(s.owner_id(), 77u);
  s.ArmCanary();
  EXPECT_TRUE(s.CanaryIntact());
  static_cast<char*>(s.top())[-1] = 1;  // the top is not the canary
  EXPECT_TRUE(s.CanaryIntact());
  static_cast<volatile char*>(s.base())[kStackCanaryBytes - 1] ^= 1;
  EXPECT_FALSE(s.CanaryIntact());
  s.ArmCanary();
  EXPECT_TRUE(s.CanaryIntact());
  // A canary copied to another address does not pass for an intact one.
  Stack other = Stack::AllocateCompact();
  std::memcpy(other.base(), s.base(), kStackCanaryBytes);
  EXPECT_FALSE(other.CanaryIntact());
}

TEST(StackTest, GuardedTellsWhichStacksNeedACanary) {
  EXPECT_FALSE(Stack().guarded());
  EXPECT_FALSE(Stack::AllocateCompact().guarded());
  if (GetStackStats(false).unguarded == 0) {  // every slot so far is guarded
    EXPECT_TRUE(Stack::Allocate().guarded());
    EXPECT_TRUE(Stack::Allocate(kCompactStackSize).guarded());
    EXPECT_TRUE(Stack::Allocate(3 * Page()).guarded());
  }
}

// Run in a child process of its own (the guard mode and budget are fixed when
// the pool starts): the mprotect fallback with a budget of kTinyBudget guards.
// Checks that exactly the first slots carved have a guard, that the others
// say so (guarded() false) whatever happens to them in the pool, and exits 0
// with "unguarded slots: ok" or 1 with what failed.
constexpr std::size_t kTinyBudget = 4;

[[noreturn]] void CheckSlotsPastATinyGuardBudget() {
  stack_internal::ForceFallbackGuardsForTesting();
  stack_internal::SetGuardBudgetForTesting(kTinyBudget);
  int failures = 0;
  auto check = [&failures](bool ok, const char* what) {
    if (!ok) {
      std::fprintf(stderr, "FAILED: %s\n", what);
      ++failures;
    }
  };
  // Three thread-cache batches of fresh default slots, all handed out: the
  // first batch is carved (and guarded) in address order.
  constexpr std::size_t kStacks = 3 * stack_internal::kThreadCacheBatch;
  std::vector<Stack> stacks;
  for (std::size_t i = 0; i < kStacks; ++i) stacks.push_back(Stack::Allocate());
  const StackStats stats = GetStackStats(false);
  check(!stats.lightweight_guards, "the fallback is forced");
  check(stats.guard_budget == kTinyBudget, "the budget is the tiny one");
  check(stats.mprotect_guarded == kTinyBudget, "the budget is used up");
  check(stats.unguarded == stats.live + stats.pooled - kTinyBudget,
        "every other carved slot is unguarded");
  std::sort(stacks.begin(), stacks.end(),
            [](const Stack& a, const Stack& b) { return a.top() < b.top(); });
  std::map<void*, bool> guarded;  // by top
  for (std::size_t i = 0; i < kStacks; ++i) {
    check(stacks[i].guarded() == (i < kTinyBudget),
          "the lowest (first carved) slots are guarded, the rest are not");
    guarded[stacks[i].top()] = stacks[i].guarded();
  }
  check(guarded.size() == kStacks, "distinct stacks");
  // The owner id lives next to the guard state: neither disturbs the other.
  for (Stack& s : stacks) s.SetOwnerId(~std::uint64_t{0});
  for (std::size_t i = 0; i < kStacks; ++i) {
    check(stacks[i].guarded() == (i < kTinyBudget), "kept by SetOwnerId");
  }
  // An unguarded stack takes a canary like a compact one.
  Stack& unguarded = stacks.back();
  unguarded.ArmCanary();
  check(unguarded.CanaryIntact(), "canary armed");
  static_cast<volatile char*>(unguarded.base())[0] ^= 1;
  check(!unguarded.CanaryIntact(), "canary broken");
  // Reused from the thread cache and the shared pool, then after trimming:
  // every slot keeps its state.
  for (int round = 0; round < 2; ++round) {
    stacks.clear();
    if (round == 1) ReleaseStackCache();  // trims every pooled stack
    for (std::size_t i = 0; i < kStacks; ++i) {
      stacks.push_back(Stack::Allocate());
      const auto it = guarded.find(stacks.back().top());
      check(it != guarded.end(), "a reused slot");
      if (it != guarded.end()) {
        check(stacks.back().guarded() == it->second,
              round == 0 ? "kept through the pool" : "kept through trimming");
      }
    }
  }
  check(GetStackStats(false).unguarded == stats.unguarded, "no new slots");
  // Other guarded classes past the budget, and the compact class.
  check(!Stack::Allocate(48 * 1024).guarded(), "another size, unguarded");
  check(!Stack::AllocateCompact().guarded(), "compact");
  if (failures == 0) std::fprintf(stderr, "unguarded slots: ok\n");
  std::_Exit(failures == 0 ? 0 : 1);
}

TEST(StackDeathTest, SlotsCarvedPastTheGuardBudgetAreMarkedUnguarded) {
  // A fresh process (re-executed), whose pool has not started.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(CheckSlotsPastATinyGuardBudget(), testing::ExitedWithCode(0),
              "unguarded slots: ok");
  GTEST_FLAG_SET(death_test_style, "fast");
}

TEST(StackTest, TrimmingACompactStackSparesThePageItSharesWithALiveOne) {
  if (kCompactStackSize * 2 != Page()) {
    GTEST_SKIP() << "written for two compact stacks to a page";
  }
  ReleaseStackCache();
  std::vector<Stack> stacks;
  for (int i = 0; i < 16; ++i) stacks.push_back(Stack::AllocateCompact());
  // Two stacks that share a page: keep the lower one, trim the upper one.
  std::size_t lower = stacks.size();
  for (std::size_t i = 0; i < stacks.size() && lower == stacks.size(); ++i) {
    const std::uintptr_t page = Addr(stacks[i].base()) & ~(Page() - 1);
    if (page != Addr(stacks[i].base())) continue;  // not at a page start
    for (std::size_t j = 0; j < stacks.size(); ++j) {
      if (stacks[j].base() == stacks[i].top()) lower = i;
    }
  }
  ASSERT_LT(lower, stacks.size());
  Stack kept = std::move(stacks[lower]);
  std::memset(kept.base(), 0x6b, kept.size());
  const StackStats before = GetStackStats(false);
  stacks.clear();  // the upper half of kept's page among them
  ReleaseStackCache();
  const StackStats after = GetStackStats(false);
  // The upper half stays resident (and pooled) with its live page-mate.
  EXPECT_GE(after.trimmed_stacks - before.trimmed_stacks, 10u);
  EXPECT_GE(after.pooled_resident, 1u);
  const auto* bytes = static_cast<const unsigned char*>(kept.base());
  EXPECT_EQ(std::count(bytes, bytes + kept.size(), 0x6b),
            static_cast<std::ptrdiff_t>(kept.size()));
  EXPECT_EQ(ResidentPages(kept.base(), Page()), 1u);
  // Once both halves are pooled, the page goes back.
  void* page = kept.base();
  kept.Release();
  ReleaseStackCache();
  EXPECT_EQ(ResidentPages(page, Page()), 0u);
}

TEST(StackTest, ThreadCacheIsFlushedAtThreadExit) {
  const StackStats before = GetStackStats(false);
  std::thread([] {
    std::vector<Stack> stacks;
    for (int i = 0; i < 20; ++i) stacks.push_back(Stack::Allocate());
    stacks.clear();  // into this thread's cache
    EXPECT_GE(GetStackStats(false).thread_cached, 20u);
  }).join();
  const StackStats after = GetStackStats(false);
  EXPECT_EQ(after.live, before.live);
  EXPECT_EQ(after.thread_cached, before.thread_cached);
}

TEST(StackTest, StackFreedOnAnotherThread) {
  const std::size_t live = GetStackStats(false).live;
  std::vector<Stack> stacks;
  for (int i = 0; i < 100; ++i) stacks.push_back(Stack::Allocate());
  std::thread([&stacks] {
    stacks.clear();
    // The thread now caches stacks, so it can run on them: it has an
    // alternate signal stack for overflow reports.
    stack_t ss;
    ASSERT_EQ(sigaltstack(nullptr, &ss), 0);
    EXPECT_EQ(ss.ss_flags & SS_DISABLE, 0);
  }).join();
  EXPECT_EQ(GetStackStats(false).live, live);
}

TEST(StackTest, PrepareThreadForStacksGivesAnAltStack) {
  std::thread([] {
    stack_t before;
    ASSERT_EQ(sigaltstack(nullptr, &before), 0);
    PrepareThreadForStacks();
    PrepareThreadForStacks();  // idempotent
    stack_t after;
    ASSERT_EQ(sigaltstack(nullptr, &after), 0);
    EXPECT_EQ(after.ss_flags & SS_DISABLE, 0);
    if ((before.ss_flags & SS_DISABLE) == 0) {
      EXPECT_EQ(after.ss_sp, before.ss_sp);  // kept (e.g. ASan's)
    } else {
      EXPECT_GE(after.ss_size, stack_internal::kMinAltStackSize);
    }
  }).join();
}

// Conservation: every stack is handed to at most one owner at a time. Threads
// tag each stack they own, check the tags before freeing, and free some of
// their stacks on other threads.
class StackStressTest : public testing::TestWithParam<int> {};

TEST_P(StackStressTest, EveryStackHasOneOwnerAtATime) {
  const int threads = GetParam();
#ifdef GORT_SANITIZED
  constexpr int kRounds = 200;
#else
  constexpr int kRounds = 5000;
#endif
  const std::size_t live_before = GetStackStats(false).live;
  std::mutex mu;
  std::unordered_map<std::uintptr_t, int> owners;  // top -> thread
  std::vector<Stack> handoff;                      // guarded by mu
  std::atomic<int> violations{0};
  auto claim = [&](const Stack& s, int me) {
    std::lock_guard<std::mutex> lock(mu);
    if (!owners.emplace(Addr(s.top()), me).second) ++violations;
  };
  auto unclaim = [&](const Stack& s) {
    std::lock_guard<std::mutex> lock(mu);
    if (owners.erase(Addr(s.top())) != 1) ++violations;
  };
  auto worker = [&](int me) {
    std::mt19937 rng(me);
    std::vector<std::pair<Stack, std::uint64_t>> mine;
    std::uint64_t seq = 0;
    for (int round = 0; round < kRounds; ++round) {
      const int n = 1 + static_cast<int>(rng() % 48);
      for (int i = 0; i < n; ++i) {
        const std::size_t size = rng() % 4 == 0 ? 64 * 1024 : kDefaultStackSize;
        Stack s = Stack::Allocate(size);
        claim(s, me);
        const std::uint64_t tag =
            (static_cast<std::uint64_t>(me) << 48) | ++seq;
        static_cast<std::uint64_t*>(s.top())[-1] = tag;
        static_cast<std::uint64_t*>(s.base())[0] = tag;
        mine.emplace_back(std::move(s), tag);
      }
      std::shuffle(mine.begin(), mine.end(), rng);
      const std::size_t keep = rng() % 8;
      while (mine.size() > keep) {
        auto [s, tag] = std::move(mine.back());
        mine.pop_back();
        if (static_cast<std::uint64_t*>(s.top())[-1] != tag ||
            static_cast<std::uint64_t*>(s.base())[0] != tag) {
          ++violations;
        }
        unclaim(s);
        if (rng() % 4 == 0) {
          std::lock_guard<std::mutex> lock(mu);
          handoff.push_back(std::move(s));  // freed by whoever comes next
        } else {
          s.Release();
        }
      }
      std::vector<Stack> theirs;
      {
        std::lock_guard<std::mutex> lock(mu);
        theirs.swap(handoff);
      }
    }
    for (auto& [s, tag] : mine) unclaim(s);
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  for (std::thread& t : pool) t.join();
  handoff.clear();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_TRUE(owners.empty());
  EXPECT_EQ(GetStackStats(false).live, live_before);
}

INSTANTIATE_TEST_SUITE_P(Threads, StackStressTest, testing::Values(1, 2, 4),
                         testing::PrintToStringParamName());

// A million live stacks on a stock kernel (vm.max_map_count = 65530): slabs
// keep the mapping count in the hundreds.
TEST(StackTest, OneMillionLiveStacks) {
#ifdef GORT_SANITIZED
  constexpr std::size_t kStacks = 20000;
#else
  constexpr std::size_t kStacks = 1000000;
#endif
  const StackStats before = GetStackStats(false);
  const std::size_t maps_before = MappingCount();
  std::vector<Stack> stacks;
  stacks.reserve(kStacks);
  for (std::size_t i = 0; i < kStacks; ++i) {
    stacks.push_back(Stack::Allocate());
    if (i % 64 == 0) static_cast<std::size_t*>(stacks.back().top())[-1] = i;
  }
  const StackStats during = GetStackStats(false);
  const std::size_t maps_during = MappingCount();
  EXPECT_EQ(during.live, before.live + kStacks);
  if (during.lightweight_guards) {
    EXPECT_EQ(during.unguarded, 0u);
    EXPECT_LT(maps_during, MaxMapCount() / 16);
    EXPECT_LT(maps_during - std::min(maps_during, maps_before),
              kStacks / 1000 + 16);
  } else {
    // The fallback stays within its budget of half the mappings.
    EXPECT_LT(maps_during, MaxMapCount() * 3 / 4);
  }
  std::vector<std::uintptr_t> tops;
  tops.reserve(kStacks);
  for (std::size_t i = 0; i < kStacks; ++i) {
    tops.push_back(Addr(stacks[i].top()));
    if (i % 64 == 0) {
      EXPECT_EQ(static_cast<std::size_t*>(stacks[i].top())[-1], i);
    }
  }
  std::sort(tops.begin(), tops.end());
  EXPECT_EQ(std::adjacent_find(tops.begin(), tops.end()), tops.end());
  stacks.clear();
  stacks.shrink_to_fit();
  const StackStats after = GetStackStats(false);
  EXPECT_EQ(after.live, before.live);
  // The burst was trimmed as it came back, with few syscalls.
  EXPECT_LE(after.pooled_resident,
            after.pool_limit + stack_internal::TrimSlack(after.pool_limit) +
                stack_internal::kThreadCacheCapacity + before.pooled_resident);
  EXPECT_LT(after.trim_calls - before.trim_calls, kStacks / 64);
  ReleaseStackCache();
}

}  // namespace
}  // namespace gort
