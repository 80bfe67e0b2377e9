// Semaphore between fibers and threads, with the scheduler linked.

#include "sync/semaphore.h"

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/chan.h"
#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"
#include "sync/context.h"
#include "sync/testing/fibers.h"
#include "sync/wait_group.h"

namespace gort {
namespace {

constexpr int kScale = testing::kStressScale;

class SemaphoreTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, SemaphoreTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

// Polls (behaviour, not speed: the test's own timeout is the limit).
template <typename Pred>
void Await(Pred pred) {
  while (!pred()) absl::SleepFor(absl::Microseconds(200));
}

TEST(SemaphoreDeathTest, OverReleaseIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Semaphore sem(3);
        (void)sem.TryAcquire(2);
        sem.Release(3);
      },
      "fatal: semaphore: released more than held");
  EXPECT_DEATH(
      {
        Semaphore sem(3);
        sem.Release(1);
      },
      "fatal: semaphore: released more than held");
}

// Weights and sizes are >= 0 (semaphore.h): a negative one is fatal, in
// every member that takes one, before anything changes.
TEST(SemaphoreDeathTest, NegativeWeightOrSizeIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH({ Semaphore sem(-1); }, "fatal: semaphore: negative size -1");
  EXPECT_DEATH(
      {
        Semaphore sem(3);
        (void)sem.Acquire(Background(), -2);
      },
      "fatal: semaphore: negative weight -2");
  EXPECT_DEATH(
      {
        Semaphore sem(3);
        (void)sem.TryAcquire(-1);
      },
      "fatal: semaphore: negative weight -1");
  EXPECT_DEATH(
      {
        Semaphore sem(3);
        (void)sem.TryAcquire(2);
        sem.Release(-1);
      },
      "fatal: semaphore: negative weight -1");
  // Zero is a valid weight and size.
  Semaphore empty(0);
  EXPECT_TRUE(empty.TryAcquire(0));
  EXPECT_TRUE(empty.Acquire(Background(), 0).ok());
  empty.Release(0);
}

TEST_P(SemaphoreTest, Weights) {
  Semaphore sem(10);
  EXPECT_EQ(sem.size(), 10);
  EXPECT_TRUE(sem.TryAcquire(3));
  EXPECT_TRUE(sem.TryAcquire(7));
  EXPECT_FALSE(sem.TryAcquire(1));
  EXPECT_TRUE(sem.TryAcquire(0));
  EXPECT_EQ(sem.HeldForTest(), 10);
  sem.Release(5);
  EXPECT_FALSE(sem.TryAcquire(6));
  EXPECT_TRUE(sem.Acquire(Background(), 5).ok());
  sem.Release(10);
  EXPECT_EQ(sem.HeldForTest(), 0);
  EXPECT_TRUE(sem.Acquire(Background(), 10).ok());
  EXPECT_FALSE(sem.TryAcquire(1));
  sem.Release(4);
  sem.Release(6);  // in any pieces
  EXPECT_FALSE(sem.TryAcquire(11));
  EXPECT_EQ(sem.HeldForTest(), 0);
}

TEST_P(SemaphoreTest, AcquireWaitsForARelease) {
  Semaphore sem(2);
  ASSERT_TRUE(sem.TryAcquire(2));
  int written_before_release = 0;  // plain int: TSan checks the ordering
  WaitGroup wg;
  wg.Add(2);
  Go([&] {
    EXPECT_TRUE(sem.Acquire(Background(), 1).ok());
    EXPECT_EQ(written_before_release, 1);
    wg.Done();
  });
  std::thread t([&] {
    EXPECT_TRUE(sem.Acquire(Background(), 1).ok());
    EXPECT_EQ(written_before_release, 1);
    wg.Done();
  });
  Await([&] { return sem.WaitersForTest() == 2; });
  written_before_release = 1;
  sem.Release(2);  // wakes both
  wg.Wait();
  t.join();
  EXPECT_EQ(sem.HeldForTest(), 2);
  sem.Release(2);
}

// A large waiter at the head holds back later small ones that would fit,
// and waiters are granted in arrival order.
TEST_P(SemaphoreTest, FifoFairness) {
  Semaphore sem(10);
  ASSERT_TRUE(sem.TryAcquire(10));
  Chan<int> order = MakeChan<int>(8);
  WaitGroup wg;
  wg.Add(3);
  Go([&] {  // A: 5, first in line
    EXPECT_TRUE(sem.Acquire(Background(), 5).ok());
    order.Send(0);
    wg.Done();
  });
  Await([&] { return sem.WaitersForTest() == 1; });
  std::thread b([&] {  // B: 1, behind A
    EXPECT_TRUE(sem.Acquire(Background(), 1).ok());
    order.Send(1);
    wg.Done();
  });
  Await([&] { return sem.WaitersForTest() == 2; });
  Go([&] {  // C: 2, behind B
    EXPECT_TRUE(sem.Acquire(Background(), 2).ok());
    order.Send(2);
    wg.Done();
  });
  Await([&] { return sem.WaitersForTest() == 3; });

  sem.Release(1);  // 1 free: B would fit, but A is first
  EXPECT_EQ(sem.HeldForTest(), 9);
  EXPECT_EQ(sem.WaitersForTest(), 3);
  EXPECT_FALSE(sem.TryAcquire(1));  // nobody jumps the queue
  sem.Release(3);                   // 4 free: still not enough for A
  EXPECT_EQ(sem.WaitersForTest(), 3);
  sem.Release(2);  // 6 free: A (5), then B (1); C (2) must wait
  EXPECT_EQ(sem.HeldForTest(), 10);
  EXPECT_EQ(sem.WaitersForTest(), 1);
  // A and B are through (in either order of their sends); C is not.
  std::vector<int> got = {*order.Recv(), *order.Recv()};
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{0, 1}));
  EXPECT_EQ(order.Len(), 0u);
  sem.Release(2);  // C
  EXPECT_EQ(*order.Recv(), 2);
  EXPECT_EQ(sem.WaitersForTest(), 0);
  wg.Wait();
  b.join();
  EXPECT_EQ(sem.HeldForTest(), 10);
  sem.Release(10);
}

TEST_P(SemaphoreTest, AcquireWithADoneContextReturnsItsErrorAndHoldsNothing) {
  Semaphore sem(4);
  auto [ctx, cancel] = WithCancel(Background());
  cancel();
  // Even with units free, a done context wins.
  EXPECT_TRUE(absl::IsCancelled(sem.Acquire(ctx, 1)));
  EXPECT_EQ(sem.HeldForTest(), 0);

  auto [expired, cancel_expired] =
      WithTimeout(Background(), absl::ZeroDuration());
  EXPECT_TRUE(absl::IsDeadlineExceeded(sem.Acquire(expired, 1)));
  EXPECT_EQ(sem.HeldForTest(), 0);
}

TEST_P(SemaphoreTest, CancelledWaiterReturnsTheErrorAndLeaksNoUnits) {
  Semaphore sem(2);
  ASSERT_TRUE(sem.TryAcquire(2));
  auto [ctx, cancel] = WithCancel(Background());
  WaitGroup wg;
  wg.Add(2);
  Go([&, ctx = ctx] {
    EXPECT_TRUE(absl::IsCancelled(sem.Acquire(ctx, 1)));
    wg.Done();
  });
  std::thread t([&, ctx = ctx] {
    EXPECT_TRUE(absl::IsCancelled(sem.Acquire(ctx, 2)));
    wg.Done();
  });
  Await([&] { return sem.WaitersForTest() == 2; });
  cancel();
  wg.Wait();
  t.join();
  EXPECT_EQ(sem.WaitersForTest(), 0);
  EXPECT_EQ(sem.HeldForTest(), 2);
  sem.Release(2);
  EXPECT_TRUE(sem.TryAcquire(2));  // all units are back
  sem.Release(2);

  // A deadline works the same way, with its own error.
  ASSERT_TRUE(sem.TryAcquire(1));
  auto [timed, cancel_timed] = WithTimeout(Background(), absl::Milliseconds(2));
  EXPECT_TRUE(absl::IsDeadlineExceeded(sem.Acquire(timed, 2)));
  EXPECT_EQ(sem.HeldForTest(), 1);
  EXPECT_EQ(sem.WaitersForTest(), 0);
  sem.Release(1);
}

// When the head of the queue gives up, the ones behind it that now fit are
// served.
TEST_P(SemaphoreTest, CancelledHeadUnblocksTheQueue) {
  Semaphore sem(10);
  ASSERT_TRUE(sem.TryAcquire(8));
  auto [ctx, cancel] = WithCancel(Background());
  WaitGroup wg;
  wg.Add(2);
  Go([&, ctx = ctx] {
    EXPECT_TRUE(absl::IsCancelled(sem.Acquire(ctx, 5)));
    wg.Done();
  });
  Await([&] { return sem.WaitersForTest() == 1; });
  Go([&] {
    EXPECT_TRUE(sem.Acquire(Background(), 2).ok());  // fits, but queued
    wg.Done();
  });
  Await([&] { return sem.WaitersForTest() == 2; });
  EXPECT_EQ(sem.HeldForTest(), 8);
  cancel();
  wg.Wait();
  EXPECT_EQ(sem.HeldForTest(), 10);
  sem.Release(10);
}

// A request larger than the semaphore waits only for its context, and does
// not block anyone.
TEST_P(SemaphoreTest, OversizedRequestWaitsForItsContextOnly) {
  Semaphore sem(3);
  auto [ctx, cancel] = WithCancel(Background());
  WaitGroup wg;
  wg.Add(1);
  Go([&, ctx = ctx] {
    EXPECT_TRUE(absl::IsCancelled(sem.Acquire(ctx, 4)));
    wg.Done();
  });
  EXPECT_TRUE(sem.Acquire(Background(), 3).ok());
  sem.Release(3);
  cancel();
  wg.Wait();
  EXPECT_EQ(sem.HeldForTest(), 0);
}

// Cancellation racing with a grant: either the waiter holds the unit
// (OK) or nobody does (error). Never both, never lost.
TEST_P(SemaphoreTest, StressCancelRacesWithRelease) {
  const int kRounds = 2000 / kScale;
  Semaphore sem(1);
  int acquired = 0, cancelled = 0;
  for (int i = 0; i < kRounds; ++i) {
    ASSERT_TRUE(sem.TryAcquire(1));
    auto [ctx, cancel] = WithCancel(Background());
    Chan<bool> result = MakeChan<bool>(1);
    Go([&sem, result, ctx = ctx] { result.Send(sem.Acquire(ctx, 1).ok()); });
    if (i % 2 == 0) Yield();
    std::thread t([&sem] { sem.Release(1); });
    cancel();
    t.join();
    if (*result.Recv()) {
      ++acquired;
      EXPECT_EQ(sem.HeldForTest(), 1);
      sem.Release(1);
    } else {
      ++cancelled;
    }
    EXPECT_EQ(sem.HeldForTest(), 0);
    EXPECT_EQ(sem.WaitersForTest(), 0);
  }
  EXPECT_EQ(acquired + cancelled, kRounds);
}

// x/sync's "wait for every worker": Acquire the whole size, then destroy
// the semaphore at once, while the Release that granted it may still be
// running (ASan catches a releaser that touches it after waking us).
TEST_P(SemaphoreTest, DestroyRightAfterTheGrantingAcquireReturns) {
  constexpr int kWorkers = 4;
  const int kRounds = 300 / kScale;
  for (int round = 0; round < kRounds; ++round) {
    auto* sem = new Semaphore(kWorkers);
    ASSERT_TRUE(sem->TryAcquire(kWorkers));  // each worker holds one
    Chan<int> done = MakeChan<int>(1);
    Go([sem, done] {
      EXPECT_TRUE(sem->Acquire(Background(), kWorkers).ok());
      delete sem;
      done.Send(0);
    });
    std::vector<std::thread> workers;
    for (int w = 0; w < kWorkers; ++w) {
      if (w % 2 == 0) {
        workers.emplace_back([sem] { sem->Release(1); });
      } else {
        Go([sem] { sem->Release(1); });
      }
    }
    for (auto& t : workers) t.join();
    done.Recv();
  }
}

// Many grantees (a list linked through their records), freed by one
// Release: every one of them is granted.
TEST_P(SemaphoreTest, OneReleaseGrantsManyWaiters) {
  constexpr int kWaiters = 21;
  Semaphore sem(kWaiters);
  ASSERT_TRUE(sem.TryAcquire(kWaiters));
  WaitGroup wg;
  wg.Add(kWaiters);
  for (int i = 0; i < kWaiters; ++i) {
    Go([&] {
      EXPECT_TRUE(sem.Acquire(Background(), 1).ok());
      wg.Done();
    });
  }
  Await([&] { return sem.WaitersForTest() == kWaiters; });
  sem.Release(kWaiters);
  wg.Wait();
  EXPECT_EQ(sem.HeldForTest(), kWaiters);
  EXPECT_EQ(sem.WaitersForTest(), 0);
  sem.Release(kWaiters);
}

// Fibers and threads take random weights; the total held never exceeds the
// size, and everything is given back.
TEST_P(SemaphoreTest, StressHoldersNeverExceedTheSize) {
  constexpr std::int64_t kSize = 7;
  constexpr int kFibers = 8;
  constexpr int kThreads = 2;
  const int kIters = 2000 / kScale;
  Semaphore sem(kSize);
  std::atomic<std::int64_t> in_flight{0};
  std::atomic<std::int64_t> max_in_flight{0};
  std::atomic<int> timeouts{0};
  auto work = [&](int seed) {
    std::minstd_rand rng(seed);
    for (int i = 0; i < kIters; ++i) {
      const std::int64_t n = 1 + rng() % kSize;
      if (i % 5 == 4) {
        // Sometimes give up quickly, to mix cancellations in.
        auto [ctx, cancel] = WithTimeout(Background(), absl::Microseconds(50));
        if (!sem.Acquire(ctx, n).ok()) {
          timeouts.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
      } else if (i % 7 == 6) {
        if (!sem.TryAcquire(n)) continue;
      } else {
        ASSERT_TRUE(sem.Acquire(Background(), n).ok());
      }
      const std::int64_t now = in_flight.fetch_add(n) + n;
      EXPECT_LE(now, kSize);
      std::int64_t m = max_in_flight.load();
      while (now > m && !max_in_flight.compare_exchange_weak(m, now)) {
      }
      if (i % 3 == 0) Yield();
      in_flight.fetch_sub(n);
      sem.Release(n);
    }
  };
  testing::RunInFibersAndThreads(kFibers, kThreads, work);
  EXPECT_LE(max_in_flight.load(), kSize);
  EXPECT_GT(max_in_flight.load(), 0);
  EXPECT_EQ(sem.HeldForTest(), 0);
  EXPECT_EQ(sem.WaitersForTest(), 0);
}

}  // namespace
}  // namespace gort
