// WaitGroup between plain std::threads, with ONLY //sync linked: no
// scheduler, so every task parks as a thread on a futex.

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "sync/wait_group.h"

namespace gort {
namespace sync_internal {

// Test-only access to a WaitGroup's state word and queue lock (a friend of
// WaitGroup).
struct WaitGroupPeer {
  static std::uint64_t State(const WaitGroup& wg) {
    return wg.state_.load(std::memory_order_acquire);
  }
  static sched_internal::Lock& QueueLock(WaitGroup& wg) { return wg.lock_; }
};

}  // namespace sync_internal
namespace {

using sync_internal::WaitGroupPeer;

#if defined(GORT_SANITIZED)
constexpr int kScale = 10;
#else
constexpr int kScale = 1;
#endif

TEST(WaitGroupThreadTest, NoSchedulerIsLinked) {
  EXPECT_EQ(Parker::Current()->kind(), Parker::Kind::kThread);
}

TEST(WaitGroupThreadTest, WaitWithZeroCounterReturnsAtOnce) {
  WaitGroup wg;
  wg.Wait();
  wg.Add(3);
  wg.Add(-3);
  wg.Wait();
  EXPECT_EQ(wg.count(), 0);
}

TEST(WaitGroupThreadTest, WaitSeesEveryThreadsWork) {
  constexpr int kThreads = 8;
  std::vector<int> results(kThreads, 0);
  WaitGroup wg;
  wg.Add(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      results[i] = i + 1;
      wg.Done();
    });
  }
  wg.Wait();
  for (int i = 0; i < kThreads; ++i) EXPECT_EQ(results[i], i + 1);
  for (auto& t : threads) t.join();
}

TEST(WaitGroupThreadTest, ManyWaitingThreadsAllReturn) {
  constexpr int kWaiters = 16;
  WaitGroup wg, ready, finished;
  std::atomic<int> returned{0};
  int payload = 0;
  std::atomic<int> saw_payload{0};
  wg.Add(1);
  ready.Add(kWaiters);
  finished.Add(kWaiters);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&] {
      ready.Done();
      wg.Wait();
      if (payload == 7) saw_payload.fetch_add(1);
      returned.fetch_add(1);
      finished.Done();
    });
  }
  ready.Wait();
  EXPECT_EQ(returned.load(), 0);  // the counter is still 1
  payload = 7;
  wg.Done();
  finished.Wait();
  EXPECT_EQ(returned.load(), kWaiters);
  EXPECT_EQ(saw_payload.load(), kWaiters);
  for (auto& t : threads) t.join();
}

// Persistent threads in lock-step rounds on one reused WaitGroup.
TEST(WaitGroupThreadTest, StressRoundsOfAddDoneWait) {
  const int kRounds = 2000 / kScale;
  constexpr int kThreads = 4, kChurn = 8;
  auto gates = std::make_unique<WaitGroup[]>(kRounds);
  std::vector<int> slots(kRounds * kThreads, 0);
  std::atomic<int> incomplete{0};
  WaitGroup work, finished;
  for (int r = 0; r < kRounds; ++r) gates[r].Add(1);
  std::vector<std::thread> threads;
  for (int me = 0; me < kThreads; ++me) {
    threads.emplace_back([&, me] {
      for (int r = 0; r < kRounds; ++r) {
        gates[r].Wait();
        for (int c = 0; c < kChurn; ++c) {
          work.Add(1);
          work.Done();
        }
        slots[r * kThreads + me] = r + 1;
        work.Done();
        work.Wait();
        for (int i = 0; i < kThreads; ++i) {
          if (slots[r * kThreads + i] != r + 1) incomplete.fetch_add(1);
        }
        finished.Done();
      }
    });
  }
  for (int r = 0; r < kRounds; ++r) {
    work.Add(kThreads);
    finished.Add(kThreads);
    gates[r].Done();
    finished.Wait();
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(incomplete.load(), 0);
  EXPECT_EQ(work.count(), 0);
}

// The waiter owns the WaitGroup and destroys it as soon as Wait returns,
// while the releasing thread may still be finishing its Done.
TEST(WaitGroupThreadTest, WaiterMayDestroyTheWaitGroupAfterWait) {
  const int kIterations = 500 / kScale;
  for (int i = 0; i < kIterations; ++i) {
    auto wg = std::make_unique<WaitGroup>();
    wg->Add(2);
    std::thread a([p = wg.get()] { p->Done(); });
    std::thread b([p = wg.get()] { p->Done(); });
    wg->Wait();
    wg.reset();
    a.join();
    b.join();
  }
}

// The counter's full range, INT32_MAX (Go's limit), works.
TEST(WaitGroupThreadTest, TheCounterGoesUpToInt32Max) {
  constexpr std::int64_t kMax = std::numeric_limits<std::int32_t>::max();
  WaitGroup wg;
  wg.Add(kMax);
  EXPECT_EQ(wg.count(), kMax);
  std::thread t([&] { wg.Wait(); });
  wg.Add(-(kMax - 1));
  wg.Done();
  t.join();
  EXPECT_EQ(wg.count(), 0);
  wg.Add(kMax - 1);
  wg.Add(1);
  wg.Add(-kMax);
  wg.Wait();
}

// Never a silent wrap: a counter past INT32_MAX, or a delta outside 32 bits
// (which used to be truncated: Add(1 << 32) did nothing), is fatal with its
// own message; a delta below INT32_MIN makes the counter negative.
TEST(WaitGroupThreadDeathTest, CounterOverflowIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  constexpr std::int64_t kMax = std::numeric_limits<std::int32_t>::max();
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(std::int64_t{1} << 32);
      },
      "fatal: sync: WaitGroup counter overflow");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(kMax + 1);
      },
      "fatal: sync: WaitGroup counter overflow");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(kMax);
        wg.Add(1);
      },
      "fatal: sync: WaitGroup counter overflow");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(5);
        wg.Add(std::numeric_limits<std::int64_t>::max());
      },
      "fatal: sync: WaitGroup counter overflow");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(5);
        wg.Add(-(std::int64_t{1} << 32));
      },
      "fatal: sync: negative WaitGroup counter");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(std::numeric_limits<std::int64_t>::min());
      },
      "fatal: sync: negative WaitGroup counter");
}

// An Add inside the release window of a round (the counter has just reached
// zero and the waiters are being released) is the misuse WaitGroup reports.
// Made deterministic by holding the queue lock, so that the releaser stalls
// inside its window.
TEST(WaitGroupThreadDeathTest, AddWhileTheWaitersAreReleasedIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        constexpr std::uint64_t kOne = std::uint64_t{1} << 32;
        WaitGroup wg;
        wg.Add(1);
        std::thread waiter([&] { wg.Wait(); });
        // Counter 1, one waiter counted.
        while (WaitGroupPeer::State(wg) != (kOne | 1))
          std::this_thread::yield();
        WaitGroupPeer::QueueLock(wg).lock();
        std::thread releaser([&] { wg.Done(); });
        // Counter 0 with the waiter still counted: the window is open.
        while (WaitGroupPeer::State(wg) != 1) std::this_thread::yield();
        wg.Add(1);
        WaitGroupPeer::QueueLock(wg).unlock();
        releaser.join();
        waiter.join();
      },
      "fatal: sync: WaitGroup misuse: Add called concurrently with Wait");
}

TEST(WaitGroupThreadDeathTest, NegativeCounterIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(1);
        wg.Done();
        wg.Done();
      },
      "fatal: sync: negative WaitGroup counter");
}

}  // namespace
}  // namespace gort
