// Once between fibers and threads, with the scheduler linked.

#include "sync/once.h"

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"
#include "sync/testing/fibers.h"
#include "sync/wait_group.h"

namespace gort {
namespace {

using testing::AwaitFibersWaiting;

constexpr int kScale = testing::kStressScale;

class OnceTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, OnceTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

TEST_P(OnceTest, RunsExactlyOnceAndForwardsArguments) {
  Once once;
  EXPECT_FALSE(once.Done());
  int runs = 0;
  std::string got;
  auto f = [&](const std::string& s, int n) {
    ++runs;
    got = s + std::to_string(n);
  };
  once.Call(f, std::string("x"), 1);
  EXPECT_TRUE(once.Done());
  once.Call(f, std::string("y"), 2);
  WaitGroup done;
  done.Add(1);
  Go([&] {
    once.Call(f, std::string("z"), 3);
    done.Done();
  });
  done.Wait();
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(got, "x1");
}

// Callers that arrive while f runs park (fibers, with kMutex as Go shows
// for Once.Do) or sleep (threads) until it returns, and then see its work.
TEST_P(OnceTest, ConcurrentCallersWaitForTheRunningCall) {
  constexpr int kFibers = 8, kThreads = 2;
  Once once;
  int value = 0;  // plain: TSan checks the ordering promise
  std::atomic<int> runs{0};
  WaitGroup started, release, done;
  started.Add(1);
  release.Add(1);
  done.Add(1 + kFibers + kThreads);
  std::atomic<int> saw{0};
  Go([&] {
    once.Call([&] {
      runs.fetch_add(1);
      started.Done();
      release.Wait();  // parks inside f: the others must wait for us
      value = 99;
    });
    if (value == 99) saw.fetch_add(1);
    done.Done();
  });
  started.Wait();
  auto caller = [&] {
    once.Call([&] { runs.fetch_add(1); });
    if (value == 99) saw.fetch_add(1);
    done.Done();
  };
  for (int i = 0; i < kFibers; ++i) Go(caller);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(caller);
  AwaitFibersWaiting(WaitReason::kMutex, kFibers);
  EXPECT_FALSE(once.Done());
  release.Done();
  done.Wait();
  for (auto& t : threads) t.join();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(saw.load(), 1 + kFibers + kThreads);
  EXPECT_TRUE(once.Done());
}

// std::call_once semantics: an exception propagates to the caller whose f
// threw and leaves the Once not done; the next caller runs its own f.
TEST_P(OnceTest, AThrowingCallIsNotDoneAndTheNextCallerRuns) {
  Once once;
  int runs = 0;
  EXPECT_THROW(once.Call([&] {
    ++runs;
    throw std::runtime_error("first");
  }),
               std::runtime_error);
  EXPECT_FALSE(once.Done());
  WaitGroup done;
  done.Add(1);
  bool threw_in_fiber = false;
  Go([&] {
    try {
      once.Call([&] {
        ++runs;
        throw std::logic_error("second");
      });
    } catch (const std::logic_error&) {
      threw_in_fiber = true;
    }
    done.Done();
  });
  done.Wait();
  EXPECT_TRUE(threw_in_fiber);
  EXPECT_FALSE(once.Done());
  once.Call([&] { ++runs; });
  EXPECT_TRUE(once.Done());
  once.Call([&] { ++runs; });
  EXPECT_EQ(runs, 3);
}

// f throws while others wait: exactly one waiter then runs its own f, and
// the rest return once that one has succeeded.
TEST_P(OnceTest, AWaiterTakesOverWhenTheRunningCallThrows) {
  constexpr int kWaiters = 6;
  Once once;
  std::atomic<int> runs{0};
  WaitGroup started, release, done;
  started.Add(1);
  release.Add(1);
  done.Add(kWaiters + 1);
  std::atomic<bool> thrower_caught{false};
  Go([&] {
    try {
      once.Call([&] {
        started.Done();
        release.Wait();
        throw 1;
      });
    } catch (int) {
      thrower_caught.store(true);
    }
    done.Done();
  });
  started.Wait();
  for (int i = 0; i < kWaiters; ++i) {
    Go([&] {
      once.Call([&] { runs.fetch_add(1); });
      done.Done();
    });
  }
  AwaitFibersWaiting(WaitReason::kMutex, kWaiters);
  release.Done();
  done.Wait();
  EXPECT_TRUE(thrower_caught.load());
  EXPECT_EQ(runs.load(), 1);
  EXPECT_TRUE(once.Done());
}

// gort::Exit() inside f unwinds through Call like an exception: not done.
TEST_P(OnceTest, ExitInsideTheCallLeavesItNotDone) {
  Once once;
  WaitGroup done;
  done.Add(1);
  Go([&] {
    struct Signal {
      WaitGroup* wg;
      ~Signal() { wg->Done(); }
    } signal{&done};
    once.Call([] { Exit(); });
  });
  done.Wait();
  EXPECT_FALSE(once.Done());
  int runs = 0;
  once.Call([&] { ++runs; });
  EXPECT_EQ(runs, 1);
}

// A storm of callers from fibers and threads on fresh Onces: exactly one f
// runs per Once, and every caller sees its result.
TEST_P(OnceTest, StormOfCallersFromFibersAndThreads) {
  const int kRounds = 200 / kScale;
  constexpr int kFibers = 16, kThreads = 4;
  std::atomic<int> bad{0};
  for (int r = 0; r < kRounds; ++r) {
    auto once = std::make_unique<Once>();
    std::atomic<int> runs{0};
    int value = 0;
    WaitGroup done;
    done.Add(kFibers + kThreads);
    auto caller = [&] {
      once->Call([&] {
        runs.fetch_add(1);
        value = r + 1;
      });
      if (value != r + 1) bad.fetch_add(1);
      done.Done();
    };
    for (int i = 0; i < kFibers; ++i) Go(caller);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) threads.emplace_back(caller);
    done.Wait();
    for (auto& t : threads) t.join();
    ASSERT_EQ(runs.load(), 1);
  }
  EXPECT_EQ(bad.load(), 0);
}

// The Once may be destroyed as soon as a Call returned and no other call is
// in progress; here a fast-path caller destroys it right away (ASan checks
// the runner no longer touches it).
TEST_P(OnceTest, MayBeDestroyedRightAfterCallReturns) {
  const int kIterations = 500 / kScale;
  WaitGroup all;
  all.Add(kIterations);
  for (int i = 0; i < kIterations; ++i) {
    Go([&] {
      auto once = std::make_unique<Once>();
      WaitGroup ran;
      ran.Add(1);
      Go([&ran, p = once.get()] { p->Call([&ran] { ran.Done(); }); });
      ran.Wait();  // f has run; the runner may still be finishing
      while (!once->Done()) {
      }
      once->Call([] {});
      once.reset();
      all.Done();
    });
  }
  all.Wait();
}

}  // namespace
}  // namespace gort
