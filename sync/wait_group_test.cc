// WaitGroup between fibers and threads, with the scheduler linked.

#include "sync/wait_group.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"

namespace gort {
namespace {

using sched_internal::Lock;

constexpr int kScale = testing::kStressScale;

// Each test gets a fresh runtime with the parameter's number of Ps, and fails
// if it leaks a fiber.
class WaitGroupTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, WaitGroupTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

// Number of live fibers parked in WaitGroup::Wait.
int FibersInWait() {
  int n = 0;
  ForEachFiber([&](const FiberInfo& info) {
    if (info.state == FiberInfo::State::kWaiting &&
        info.wait_reason == WaitReason::kWaitGroup) {
      ++n;
    }
  });
  return n;
}

TEST_P(WaitGroupTest, WaitWithZeroCounterReturnsAtOnce) {
  WaitGroup wg;
  wg.Wait();  // plain thread
  WaitGroup done;
  done.Add(1);
  Go([&] {
    wg.Wait();  // fiber
    wg.Add(2);
    wg.Add(-2);
    wg.Wait();
    done.Done();
  });
  done.Wait();
  EXPECT_EQ(wg.count(), 0);
}

TEST_P(WaitGroupTest, WaitReturnsAfterTheLastDoneAndSeesTheWork) {
  constexpr int kTasks = 100;
  std::vector<int> results(kTasks, 0);  // plain ints: TSan checks the promise
  WaitGroup wg;
  wg.Add(kTasks);
  EXPECT_EQ(wg.count(), kTasks);
  for (int i = 0; i < kTasks; ++i) {
    Go([&, i] {
      results[i] = i + 1;
      wg.Done();
    });
  }
  wg.Wait();
  EXPECT_EQ(wg.count(), 0);
  for (int i = 0; i < kTasks; ++i) EXPECT_EQ(results[i], i + 1);
}

TEST_P(WaitGroupTest, FiberWaitsForThreads) {
  constexpr int kThreads = 4;
  std::vector<int> results(kThreads, 0);
  WaitGroup wg, done;
  wg.Add(kThreads);
  done.Add(1);
  bool ok = false;
  Go([&] {
    wg.Wait();
    ok = true;
    for (int i = 0; i < kThreads; ++i) ok = ok && results[i] == i + 1;
    done.Done();
  });
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      results[i] = i + 1;
      wg.Done();
    });
  }
  done.Wait();
  EXPECT_TRUE(ok);
  for (auto& t : threads) t.join();
}

TEST_P(WaitGroupTest, AWaitingFiberIsParkedWithItsWaitReason) {
  WaitGroup wg, done;
  wg.Add(1);
  done.Add(1);
  Go([&] {
    wg.Wait();
    done.Done();
  });
  while (FibersInWait() != 1) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(wg.count(), 1);
  wg.Done();
  done.Wait();
}

// Fibers and threads wait together; the test checks that every one of them
// is really blocked before releasing them all with one Done.
TEST_P(WaitGroupTest, ManyWaitersFibersAndThreadsMixed) {
  constexpr int kFibers = 64, kThreads = 4;
  WaitGroup wg, finished;
  std::atomic<int> returned{0};
  int payload = 0;
  std::atomic<int> saw_payload{0};
  wg.Add(1);
  finished.Add(kFibers + kThreads);
  auto waiter = [&] {
    wg.Wait();
    if (payload == 42) saw_payload.fetch_add(1);
    returned.fetch_add(1);
    finished.Done();
  };
  for (int i = 0; i < kFibers; ++i) Go(waiter);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(waiter);
  while (FibersInWait() != kFibers) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(returned.load(), 0);
  // Release from a fiber: the releaser unparks fibers and threads.
  Go([&] {
    payload = 42;
    wg.Done();
  });
  finished.Wait();
  EXPECT_EQ(returned.load(), kFibers + kThreads);
  EXPECT_EQ(saw_payload.load(), kFibers + kThreads);
  for (auto& t : threads) t.join();
}

// Rounds of work on one WaitGroup, each with its own waiters. The next round
// starts as soon as the coordinator's Wait returns, while the other waiters
// of the previous round may still be on their way out (Go forbids that; gort
// makes it safe, see wait_group.h). Every waiter must see its whole round.
TEST_P(WaitGroupTest, ReuseAcrossRoundsBeforeOtherWaitersReturned) {
  const int kRounds = 1000 / kScale;
  constexpr int kWorkers = 16, kFiberWaiters = 3;
  std::vector<int> slots(kRounds * kWorkers, 0);  // written by workers
  std::atomic<int> incomplete{0};
  WaitGroup wg, finished;
  std::vector<std::thread> threads;
  for (int r = 0; r < kRounds; ++r) {
    wg.Add(kWorkers);
    auto check = [&, r] {
      wg.Wait();
      // The round may be over or a later one running; round r is complete.
      for (int i = 0; i < kWorkers; ++i) {
        if (slots[r * kWorkers + i] != 1) incomplete.fetch_add(1);
      }
      finished.Done();
    };
    finished.Add(kFiberWaiters + (r % 20 == 0 ? 1 : 0));
    for (int i = 0; i < kFiberWaiters; ++i) Go(check);
    if (r % 20 == 0) threads.emplace_back(check);
    for (int i = 0; i < kWorkers; ++i) {
      Go([&, r, i] {
        slots[r * kWorkers + i] = 1;
        wg.Done();
      });
    }
    wg.Wait();
    for (int i = 0; i < kWorkers; ++i) ASSERT_EQ(slots[r * kWorkers + i], 1);
  }
  finished.Wait();
  for (auto& t : threads) t.join();
  EXPECT_EQ(incomplete.load(), 0);
  EXPECT_EQ(wg.count(), 0);
}

// 8 fibers and 4 threads work in lock-step rounds on one reused WaitGroup:
// each churns Add(1)/Done(), does its final Done, then waits for the others;
// everyone checks that the whole round's work is visible.
TEST_P(WaitGroupTest, StressFibersAndThreadsAddDoneWaitRounds) {
  const int kRounds = 5000 / kScale;
  constexpr int kFibers = 8, kThreads = 4, kTasks = kFibers + kThreads;
  constexpr int kChurn = 8;
  auto gates = std::make_unique<WaitGroup[]>(kRounds);
  std::vector<int> slots(kRounds * kTasks, 0);
  std::atomic<int> incomplete{0};
  WaitGroup work, finished, all_done;
  for (int r = 0; r < kRounds; ++r) gates[r].Add(1);
  all_done.Add(kTasks);

  auto task = [&](int me) {
    for (int r = 0; r < kRounds; ++r) {
      gates[r].Wait();
      for (int c = 0; c < kChurn; ++c) {
        work.Add(1);
        work.Done();
      }
      slots[r * kTasks + me] = r + 1;
      work.Done();
      work.Wait();
      for (int i = 0; i < kTasks; ++i) {
        if (slots[r * kTasks + i] != r + 1) incomplete.fetch_add(1);
      }
      finished.Done();
    }
    all_done.Done();
  };
  for (int i = 0; i < kFibers; ++i) Go([&, i] { task(i); });
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { task(kFibers + i); });
  }
  for (int r = 0; r < kRounds; ++r) {
    work.Add(kTasks);
    finished.Add(kTasks);
    gates[r].Done();
    finished.Wait();  // every task is out of work.Wait() for round r
    ASSERT_EQ(work.count(), 0);
  }
  all_done.Wait();
  for (auto& t : threads) t.join();
  EXPECT_EQ(incomplete.load(), 0);
}

// Many fibers each wait on their own WaitGroup, released by other fibers:
// parking and unparking at scale, with a WaitGroup destroyed right after its
// Wait returns (the waiter owns it).
TEST_P(WaitGroupTest, WaitGroupOwnedByTheWaiterMayBeDestroyedAfterWait) {
  const int kFibers = 2000 / kScale;
  WaitGroup all;
  all.Add(kFibers);
  std::vector<std::thread> threads;
  Lock threads_mu;
  for (int i = 0; i < kFibers; ++i) {
    Go([&, i] {
      auto wg = std::make_unique<WaitGroup>();
      wg->Add(2);
      Go([p = wg.get()] { p->Done(); });
      if (i % 10 == 0) {  // sometimes a thread is the releaser
        std::lock_guard<Lock> l(threads_mu);
        threads.emplace_back([p = wg.get()] { p->Done(); });
      } else {
        Go([p = wg.get()] { p->Done(); });
      }
      wg->Wait();
      wg.reset();  // ASan catches a releaser still touching it
      all.Done();
    });
  }
  all.Wait();
  for (auto& t : threads) t.join();
}

TEST(WaitGroupDeathTest, NegativeCounterIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Done();
      },
      "fatal: sync: negative WaitGroup counter");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(2);
        wg.Add(-3);
      },
      "fatal: sync: negative WaitGroup counter");
}

TEST(WaitGroupDeathTest, NegativeCounterInAFiberIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        WaitGroup wg;
        wg.Add(1);
        RunMain([&] {
          wg.Done();
          wg.Done();
          return 0;
        });
      },
      "fatal: sync: negative WaitGroup counter");
}

}  // namespace
}  // namespace gort
