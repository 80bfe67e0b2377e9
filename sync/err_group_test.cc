// ErrGroup between fibers and threads, with the scheduler linked.

#include "sync/err_group.h"

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/chan.h"
#include "chan/select.h"
#include "gtest/gtest.h"
#include "sched/internal/futex.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"
#include "sync/context.h"
#include "sync/mutex.h"
#include "sync/wait_group.h"

namespace gort {
namespace sync_internal {

struct ErrGroupPeer {
  static std::int64_t WaitsInProgress(const ErrGroup& g) {
    return g.waits_.count();
  }
  // The count of functions running, and the lock its changes are made under.
  static WaitGroup& Running(ErrGroup& g) { return g.wg_; }
  static const Mutex& Lock(const ErrGroup& g) { return g.mu_; }
};

struct WaitGroupPeer {
  static std::uint64_t State(const WaitGroup& wg) {
    return wg.state_.load(std::memory_order_acquire);
  }
  static sched_internal::Lock& QueueLock(WaitGroup& wg) { return wg.lock_; }
};

struct MutexPeer {
  static int Waiters(const Mutex& m) {
    return static_cast<int>(
        Mutex::Waiters(m.state_.load(std::memory_order_acquire)));
  }
};

}  // namespace sync_internal
namespace {

using sync_internal::ErrGroupPeer;
using sync_internal::MutexPeer;
using sync_internal::WaitGroupPeer;

constexpr int kScale = testing::kStressScale;

class ErrGroupTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, ErrGroupTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

// Polls (behaviour, not speed: the test's own timeout is the limit).
template <typename Pred>
void Await(Pred pred) {
  while (!pred()) absl::SleepFor(absl::Microseconds(200));
}

TEST(ErrGroupDeathTest, AnEscapingExceptionIsFatal) {
  EXPECT_DEATH(
      {
        ErrGroup g;
        g.Go([]() -> absl::Status { throw std::runtime_error("kaboom"); });
        (void)g.Wait();
      },
      // (The scheduler may name the fiber's start site after its id.)
      "fatal: uncaught exception in fiber [0-9]+, started at [^:]+:[0-9]+: "
      ".*kaboom");
}

TEST(ErrGroupDeathTest, SetLimitWhileActiveIsFatal) {
  EXPECT_DEATH(
      {
        ErrGroup g;
        g.SetLimit(2);
        Chan<int> never = MakeChan<int>();
        g.Go([never]() -> absl::Status {
          never.Recv();
          return absl::OkStatus();
        });
        g.SetLimit(3);
      },
      "fatal: errgroup: modify limit while 1 fibers in the group are still "
      "active");
}

// Go from outside the group may race with the group's last function
// finishing while another task waits: made deterministic by holding the
// count's queue lock, so that the finishing fiber stalls inside WaitGroup's
// release window (counter 0, the waiter still counted). A Go whose Add
// landed there would be fatal ("Add called concurrently with Wait"); the
// group makes it wait for the release instead, and it starts a new round.
TEST_P(ErrGroupTest, GoFromOutsideRacingTheLastFunctionWhileAnotherWaits) {
  constexpr std::uint64_t kOne = std::uint64_t{1} << 32;
  ErrGroup g;
  Chan<int> finish = MakeChan<int>();
  g.Go([finish]() -> absl::Status {
    finish.Recv();
    return absl::OkStatus();
  });
  std::atomic<bool> waited{false};
  std::thread waiter([&] {
    EXPECT_TRUE(g.Wait().ok());
    waited = true;
  });
  WaitGroup& running = ErrGroupPeer::Running(g);
  // One function running, the waiter counted.
  Await([&] { return WaitGroupPeer::State(running) == (kOne | 1); });
  sched_internal::Lock& queue = WaitGroupPeer::QueueLock(running);
  queue.lock();
  finish.Send(1);  // the function returns; its Done stalls on `queue`
  Await([&] { return WaitGroupPeer::State(running) == 1; });  // the window
  std::atomic<bool> ran{false};
  std::thread outsider([&] {
    g.Go([&ran]() -> absl::Status {
      ran = true;
      return absl::OkStatus();
    });
  });
  // The outsider's Go waits for the finishing fiber to leave the lock.
  Await([&] { return MutexPeer::Waiters(ErrGroupPeer::Lock(g)) == 1; });
  EXPECT_FALSE(waited.load());
  queue.unlock();
  outsider.join();
  waiter.join();
  EXPECT_TRUE(waited.load());
  EXPECT_TRUE(g.Wait().ok());  // the outsider's function, a new round
  EXPECT_TRUE(ran.load());
}

TEST_P(ErrGroupTest, WaitOnAnEmptyGroup) {
  ErrGroup g;
  EXPECT_TRUE(g.Wait().ok());
  EXPECT_TRUE(g.context().Done().nil());  // Background
  EXPECT_TRUE(g.Wait().ok());

  auto [parent, cancel_parent] = WithCancel(Background());
  ErrGroup gc = ErrGroup::WithContext(parent);
  EXPECT_TRUE(gc.context().Err().ok());
  EXPECT_TRUE(gc.Wait().ok());
  // Wait cancels the group's context, never the parent.
  EXPECT_TRUE(absl::IsCancelled(gc.context().Err()));
  EXPECT_TRUE(parent.Err().ok());
}

TEST_P(ErrGroupTest, WaitSeesAllTheWork) {
  constexpr int kTasks = 100;
  std::vector<int> results(kTasks, 0);  // plain ints: TSan checks the promise
  ErrGroup g;
  for (int i = 0; i < kTasks; ++i) {
    g.Go([&results, i] {
      results[i] = i + 1;
      return absl::OkStatus();
    });
  }
  EXPECT_TRUE(g.Wait().ok());
  for (int i = 0; i < kTasks; ++i) EXPECT_EQ(results[i], i + 1);
}

TEST_P(ErrGroupTest, FirstErrorWins) {
  ErrGroup g;
  Chan<int> second_may_fail = MakeChan<int>();
  g.Go([] { return absl::InternalError("first"); });
  g.Go([second_may_fail]() -> absl::Status {
    second_may_fail.Recv();
    return absl::NotFoundError("second");
  });
  g.Go([] { return absl::OkStatus(); });
  // The second may fail once a plain thread says so: before or after the
  // first failed, the test does not know.
  std::thread t([&] {
    absl::SleepFor(absl::Milliseconds(1));
    second_may_fail.Close();
  });
  const absl::Status s = g.Wait();
  t.join();
  // One of the errors, and it sticks.
  EXPECT_TRUE(absl::IsInternal(s) || absl::IsNotFound(s)) << s;
  EXPECT_EQ(g.Wait(), s);
}

TEST_P(ErrGroupTest, FirstErrorWinsDeterministically) {
  ErrGroup g = ErrGroup::WithContext(Background());
  // Only one function can fail before the context is cancelled; the rest
  // fail because of it, later.
  g.Go([] { return absl::InternalError("first"); });
  for (int i = 0; i < 10; ++i) {
    g.Go([&g, i]() -> absl::Status {
      g.context().Done().Recv();
      return absl::AbortedError("after " + std::to_string(i));
    });
  }
  const absl::Status s = g.Wait();
  EXPECT_TRUE(absl::IsInternal(s)) << s;
  EXPECT_EQ(s.message(), "first");
}

TEST_P(ErrGroupTest, ContextIsCancelledOnTheFirstError) {
  auto [parent, cancel_parent] = WithCancel(Background());
  ErrGroup g = ErrGroup::WithContext(parent);
  const Context ctx = g.context();
  std::atomic<int> saw_cancel{0};
  constexpr int kWaiters = 8;
  for (int i = 0; i < kWaiters; ++i) {
    g.Go([&, ctx]() -> absl::Status {
      Chan<int> never = MakeChan<int>();
      EXPECT_EQ(Select(Recv(never), Recv(ctx.Done())), 1);
      saw_cancel.fetch_add(1);
      return ctx.Err();
    });
  }
  EXPECT_TRUE(ctx.Err().ok());
  g.Go([] { return absl::UnavailableError("boom"); });
  const absl::Status s = g.Wait();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_EQ(saw_cancel.load(), kWaiters);
  EXPECT_TRUE(absl::IsCancelled(ctx.Err()));
  EXPECT_TRUE(parent.Err().ok());
}

TEST_P(ErrGroupTest, ParentCancelReachesTheGroup) {
  auto [parent, cancel_parent] = WithCancel(Background());
  ErrGroup g = ErrGroup::WithContext(parent);
  for (int i = 0; i < 4; ++i) {
    g.Go([&g] {
      g.context().Done().Recv();
      return g.context().Err();
    });
  }
  cancel_parent();
  EXPECT_TRUE(absl::IsCancelled(g.Wait()));
}

TEST_P(ErrGroupTest, SetLimitBoundsActiveFibers) {
  for (int limit : {1, 2, 3}) {
    ErrGroup g;
    g.SetLimit(limit);
    std::atomic<int> active{0};
    std::atomic<int> max_active{0};
    std::atomic<int> ran{0};
    const int kTasks = 200 / kScale;
    auto task = [&]() -> absl::Status {
      const int now = active.fetch_add(1) + 1;
      int m = max_active.load();
      while (now > m && !max_active.compare_exchange_weak(m, now)) {
      }
      Yield();
      Sleep(absl::Microseconds(50));
      active.fetch_sub(1);
      ran.fetch_add(1);
      return absl::OkStatus();
    };
    // Go from a fiber and from a plain thread at once.
    WaitGroup wg;
    wg.Add(1);
    Go([&] {
      for (int i = 0; i < kTasks; ++i) g.Go(task);
      wg.Done();
    });
    std::thread t([&] {
      for (int i = 0; i < kTasks; ++i) g.Go(task);
    });
    wg.Wait();
    t.join();
    EXPECT_TRUE(g.Wait().ok());
    EXPECT_EQ(ran.load(), 2 * kTasks);
    EXPECT_LE(max_active.load(), limit);
    EXPECT_GE(max_active.load(), 1);
    // The limit may change once the group is idle.
    g.SetLimit(-1);
    g.Go(task);
    EXPECT_TRUE(g.Wait().ok());
  }
}

TEST_P(ErrGroupTest, TryGoRespectsTheLimit) {
  ErrGroup g;
  g.SetLimit(1);
  Chan<int> release = MakeChan<int>();
  EXPECT_TRUE(g.TryGo([release]() -> absl::Status {
    release.Recv();
    return absl::OkStatus();
  }));
  bool ran_second = false;
  EXPECT_FALSE(g.TryGo([&ran_second] {
    ran_second = true;
    return absl::OkStatus();
  }));
  release.Close();
  EXPECT_TRUE(g.Wait().ok());
  EXPECT_FALSE(ran_second);
  EXPECT_TRUE(g.TryGo([] { return absl::OkStatus(); }));
  EXPECT_TRUE(g.Wait().ok());
  // Without a limit TryGo always starts the function.
  ErrGroup unlimited;
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(unlimited.TryGo([] { return absl::OkStatus(); }));
  }
  EXPECT_TRUE(unlimited.Wait().ok());
}

TEST_P(ErrGroupTest, FunctionsMayStartMoreFunctions) {
  ErrGroup g;
  std::atomic<int> ran{0};
  constexpr int kOuter = 10, kInner = 10;
  for (int i = 0; i < kOuter; ++i) {
    g.Go([&] {
      for (int j = 0; j < kInner; ++j) {
        g.Go([&] {
          ran.fetch_add(1);
          return absl::OkStatus();
        });
      }
      return absl::OkStatus();
    });
  }
  EXPECT_TRUE(g.Wait().ok());
  EXPECT_EQ(ran.load(), kOuter * kInner);
}

TEST_P(ErrGroupTest, ExitEndsAFunctionCleanly) {
  ErrGroup g;
  g.Go([]() -> absl::Status {
    Exit();
    return absl::InternalError("not reached");
  });
  EXPECT_TRUE(g.Wait().ok());
}

TEST_P(ErrGroupTest, DestructorWaitsForTheFibers) {
  std::atomic<int> finished{0};
  Context ctx;
  {
    ErrGroup g = ErrGroup::WithContext(Background());
    ctx = g.context();
    for (int i = 0; i < 8; ++i) {
      g.Go([&finished] {
        Sleep(absl::Milliseconds(1));
        finished.fetch_add(1);
        return absl::OkStatus();
      });
    }
  }
  EXPECT_EQ(finished.load(), 8);
  EXPECT_TRUE(absl::IsCancelled(ctx.Err()));
}

// The reference-count pattern with two waiters: the owner's Wait returns
// and it destroys the group while another task's Wait is still returning
// (cancelling, reading the error). The destructor waits for it (under ASan,
// a use-after-free otherwise).
TEST_P(ErrGroupTest, TheOwnerMayDestroyTheGroupWhileAnotherWaitReturns) {
  const int kRounds = 1000 / kScale;
  for (int round = 0; round < kRounds; ++round) {
    auto* g = new ErrGroup();
    std::atomic<bool> release{false};
    g->Go([&release] {
      while (!release.load()) Sleep(absl::Microseconds(20));
      return absl::InvalidArgumentError("e");
    });
    absl::Status seen;
    std::thread monitor([g, &seen] { seen = g->Wait(); });
    // The monitor's Wait is in progress before ours can return.
    while (ErrGroupPeer::WaitsInProgress(*g) != 1) std::this_thread::yield();
    release.store(true);
    EXPECT_TRUE(absl::IsInvalidArgument(g->Wait()));
    delete g;
    monitor.join();
    EXPECT_TRUE(absl::IsInvalidArgument(seen));
  }
}

}  // namespace
}  // namespace gort
