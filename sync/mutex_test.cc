// Mutex (and the Sema it sleeps on) between fibers and threads, with the
// scheduler linked.

#include "sync/mutex.h"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"
#include "sync/internal/sema.h"
#include "sync/testing/fibers.h"
#include "sync/testing/starvation_watch.h"
#include "sync/wait_group.h"

namespace gort {
namespace sync_internal {

// Test-only access to a Mutex's state word (a friend of Mutex).
struct MutexPeer {
  static std::int64_t State(const Mutex& m) {
    return m.state_.load(std::memory_order_relaxed);
  }
  static bool Starving(const Mutex& m) {
    return (State(m) & Mutex::kStarving) != 0;
  }
  static int Waiters(const Mutex& m) {
    return static_cast<int>(Mutex::Waiters(State(m)));
  }
};

}  // namespace sync_internal

namespace {

using sync_internal::MutexPeer;
using testing::AwaitFibersWaiting;
using testing::FibersWaiting;

constexpr int kScale = testing::kStressScale;

// Busy work inside a critical section (a few microseconds; not a timing
// assumption: more or less only changes how soon a waiter starves).
void HoldALittle() {
  static std::atomic<int> sink{0};
  for (int i = 0; i < 2000; ++i) sink.fetch_add(1, std::memory_order_relaxed);
}

class MutexTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, MutexTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

TEST_P(MutexTest, LockUnlockAndTryLockFromAThreadAndAFiber) {
  Mutex mu;
  EXPECT_TRUE(mu.TryLock());
  EXPECT_FALSE(mu.TryLock());
  mu.Unlock();
  mu.Lock();
  EXPECT_FALSE(mu.TryLock());
  mu.Unlock();
  EXPECT_EQ(MutexPeer::State(mu), 0);

  WaitGroup done;
  done.Add(1);
  bool fiber_ok = false;
  Go([&] {
    mu.Lock();
    const bool locked_twice = mu.TryLock();
    mu.Unlock();
    const bool relocked = mu.TryLock();
    mu.Unlock();
    fiber_ok = !locked_twice && relocked;
    done.Done();
  });
  done.Wait();
  EXPECT_TRUE(fiber_ok);
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

TEST_P(MutexTest, WorksWithStdLockGuardUniqueLockAndScopedLock) {
  Mutex a, b;
  int x = 0;
  {
    std::lock_guard<Mutex> l(a);
    ++x;
    EXPECT_FALSE(a.try_lock());
  }
  {
    std::unique_lock<Mutex> l(a, std::try_to_lock);
    ASSERT_TRUE(l.owns_lock());
    l.unlock();
    EXPECT_TRUE(a.try_lock());
    a.unlock();
  }
  {
    std::scoped_lock l(a, b);
    ++x;
    EXPECT_FALSE(b.try_lock());
  }
  EXPECT_EQ(x, 2);
  EXPECT_EQ(MutexPeer::State(a), 0);
  EXPECT_EQ(MutexPeer::State(b), 0);
}

// A fiber that finds the mutex locked parks with kMutex and gets it, with
// the holder's writes visible, once the holder unlocks.
TEST_P(MutexTest, AWaitingFiberParksWithItsWaitReasonAndSeesTheWrites) {
  Mutex mu;
  int payload = 0;  // plain int: TSan checks the ordering promise
  int seen = -1;
  WaitGroup done;
  done.Add(1);
  mu.Lock();  // the test's thread holds it
  Go([&] {
    mu.Lock();
    seen = payload;
    mu.Unlock();
    done.Done();
  });
  AwaitFibersWaiting(WaitReason::kMutex, 1);
  EXPECT_EQ(MutexPeer::Waiters(mu), 1);
  payload = 42;
  mu.Unlock();
  done.Wait();
  EXPECT_EQ(seen, 42);
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

// A locked Mutex is not tied to a task: locked by a fiber, unlocked by a
// thread, and the other way round.
TEST_P(MutexTest, UnlockFromAnotherTask) {
  Mutex mu;
  WaitGroup locked;
  locked.Add(1);
  Go([&] {
    mu.Lock();
    locked.Done();
  });
  locked.Wait();
  EXPECT_FALSE(mu.TryLock());
  std::thread([&] { mu.Unlock(); }).join();
  EXPECT_TRUE(mu.TryLock());  // the thread locked it; a fiber unlocks it
  WaitGroup unlocked;
  unlocked.Add(1);
  Go([&] {
    mu.Unlock();
    unlocked.Done();
  });
  unlocked.Wait();
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

// Waiters queue in FIFO order: fibers that parked one after the other get
// the lock in that order when nobody else competes.
TEST_P(MutexTest, WaitersGetTheLockInArrivalOrder) {
  constexpr int kWaiters = 5;
  Mutex mu;
  std::vector<int> order;  // guarded by mu
  WaitGroup done;
  done.Add(kWaiters);
  mu.Lock();
  for (int i = 0; i < kWaiters; ++i) {
    Go([&, i] {
      mu.Lock();
      order.push_back(i);
      mu.Unlock();
      done.Done();
    });
    AwaitFibersWaiting(WaitReason::kMutex, i + 1);
  }
  EXPECT_EQ(MutexPeer::Waiters(mu), kWaiters);
  mu.Unlock();
  done.Wait();
  std::vector<int> want;
  for (int i = 0; i < kWaiters; ++i) want.push_back(i);
  EXPECT_EQ(order, want);
}

// 8 fibers and 4 threads increment one plain counter under the mutex; the
// total is exact and at most one task is ever inside.
TEST_P(MutexTest, StressFibersAndThreadsIncrementACounter) {
  const int kIncrements = 20000 / kScale;
  constexpr int kFibers = 8, kThreads = 4;
  Mutex mu;
  std::int64_t counter = 0;  // plain: TSan checks mutual exclusion
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  WaitGroup done;
  done.Add(kFibers + kThreads);
  auto work = [&] {
    for (int i = 0; i < kIncrements; ++i) {
      mu.Lock();
      if (inside.fetch_add(1, std::memory_order_relaxed) != 0) {
        overlaps.fetch_add(1);
      }
      ++counter;
      inside.fetch_sub(1, std::memory_order_relaxed);
      mu.Unlock();
    }
    done.Done();
  };
  for (int i = 0; i < kFibers; ++i) Go(work);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(work);
  done.Wait();
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, std::int64_t{kIncrements} * (kFibers + kThreads));
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

// The reference-count pattern (POSIX's pthread_mutex_destroy example): the
// task that drops the last reference, under the lock, unlocks and deletes
// the object at once. Under ASan a touch of the deleted mutex is a heap-use-
// after-free. The narrowest window, an unlocker descheduled between its
// unlock and its wake-up CAS, is forced by the MutexWindowTest below.
TEST_P(MutexTest, TheLastUserMayDeleteTheMutexRightAfterUnlock) {
  const int kRounds = 2000 / kScale;
  constexpr int kUsers = 6;
  struct Shared {
    Mutex mu;
    int refs = kUsers;
  };
  for (int round = 0; round < kRounds; ++round) {
    auto* s = new Shared;
    WaitGroup done;
    done.Add(kUsers);
    auto user = [s, &done] {
      s->mu.Lock();
      const bool last = --s->refs == 0;
      s->mu.Unlock();
      if (last) delete s;
      done.Done();
    };
    for (int i = 0; i < kUsers - 2; ++i) Go(user);
    std::thread t1(user), t2(user);
    done.Wait();
    t1.join();
    t2.join();
  }
}

// Held in the window by the first call of the unlock-window hook.
std::atomic<int> window_calls{0};
std::atomic<bool> in_window{false};
std::atomic<bool> leave_window{false};
std::atomic<bool> left_window{false};

void HoldTheFirstUnlockInItsWindow() {
  if (window_calls.fetch_add(1) != 0) return;
  in_window.store(true);
  while (!leave_window.load()) std::this_thread::yield();
  left_window.store(true);
}

// The window of the test above, made wide: an Unlock that must decide whom
// to wake is held between making the mutex lockable and its last access to
// it, while another task locks and unlocks (waking the waiter), and the
// waiter locks, unlocks and deletes the mutex. The deletion must wait for
// the held Unlock (otherwise its next access is a use-after-free, which
// ASan reports).
TEST(MutexWindowTest, DeletionWaitsForAnUnlockStillBetweenItsTwoSteps) {
  window_calls.store(0);  // (--gtest_repeat)
  in_window.store(false);
  leave_window.store(false);
  left_window.store(false);
  auto* mu = new Mutex;
  mu->Lock();
  std::atomic<bool> deleting{false};
  bool saw_unlock_finished = false;
  std::thread waiter([&] {
    mu->Lock();  // queues behind the main thread
    mu->Unlock();
    deleting.store(true);
    delete mu;
    saw_unlock_finished = left_window.load();
  });
  while (MutexPeer::Waiters(*mu) != 1) std::this_thread::yield();

  sync_internal::mutex_unlock_window_hook.store(&HoldTheFirstUnlockInItsWindow);
  std::thread unlocker([&] { mu->Unlock(); });  // stops in the window
  while (!in_window.load()) std::this_thread::yield();
  mu->Lock();    // the mutex is lockable: we get it before the waiter
  mu->Unlock();  // and wake the waiter, which deletes the mutex
  while (!deleting.load()) std::this_thread::yield();
  // Give a wrong implementation time to free the mutex under the held
  // Unlock (no assertion depends on this sleep).
  absl::SleepFor(absl::Milliseconds(20));
  leave_window.store(true);
  unlocker.join();
  waiter.join();
  sync_internal::mutex_unlock_window_hook.store(nullptr);
  EXPECT_EQ(window_calls.load(), 2);  // the held Unlock and ours
  EXPECT_TRUE(saw_unlock_finished);
}

// TryLock mixed with Lock: every successful TryLock is a real exclusive hold.
TEST_P(MutexTest, StressTryLockAndLock) {
  const int kIterations = 10000 / kScale;
  constexpr int kFibers = 4, kThreads = 2;
  Mutex mu;
  std::int64_t counter = 0;
  std::atomic<std::int64_t> successes{0};
  WaitGroup done;
  done.Add(kFibers + kThreads);
  auto work = [&](bool try_only) {
    for (int i = 0; i < kIterations; ++i) {
      if (try_only || i % 2 == 0) {
        if (!mu.TryLock()) continue;
      } else {
        mu.Lock();
      }
      ++counter;
      successes.fetch_add(1, std::memory_order_relaxed);
      mu.Unlock();
    }
    done.Done();
  };
  for (int i = 0; i < kFibers; ++i) Go([&, i] { work(i % 2 == 0); });
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { work(i == 0); });
  }
  done.Wait();
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, successes.load());
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

// Starvation mode, step by step: a fiber that waited more than 1 ms, woken
// and beaten to the lock, switches the mutex to starvation mode; a newcomer
// then queues behind it instead of grabbing or spinning; Unlock hands the
// lock to the oldest waiter, and the mode ends with the last waiter.
TEST_P(MutexTest, StarvationModeHandsTheLockToTheOldestWaiter) {
  Mutex mu;
  const std::uint64_t starvations_before =
      sync_internal::MutexStarvationCount();
  bool entered = false;
  // Each attempt needs the old waiter to lose one race against this thread;
  // it nearly always does, and an attempt it wins is simply repeated.
  for (int attempt = 0; attempt < 100 && !entered; ++attempt) {
    std::vector<char> order;  // guarded by mu
    std::atomic<bool> old_got_it{false};
    WaitGroup done;
    done.Add(1);
    mu.Lock();
    Go([&] {
      mu.Lock();
      old_got_it.store(true);
      order.push_back('O');
      mu.Unlock();
      done.Done();
    });
    AwaitFibersWaiting(WaitReason::kMutex, 1);
    absl::SleepFor(absl::Milliseconds(2));  // it has waited > 1 ms now
    // Unlock wakes it (normal mode: it must compete), and we take the lock
    // again first.
    mu.Unlock();
    mu.Lock();
    if (old_got_it.load()) {  // it won the race after all: try again
      mu.Unlock();
      done.Wait();
      continue;
    }
    // It loses, sees the lock held after waiting > 1 ms, and queues again,
    // at the front, switching to starvation mode.
    while (
        !(MutexPeer::Starving(mu) && FibersWaiting(WaitReason::kMutex) == 1)) {
      absl::SleepFor(absl::Microseconds(200));
    }
    entered = true;
    EXPECT_EQ(MutexPeer::Waiters(mu), 1);
    // A newcomer queues at the back, even though it could spin.
    done.Add(1);
    Go([&] {
      mu.Lock();
      order.push_back('N');
      mu.Unlock();
      done.Done();
    });
    AwaitFibersWaiting(WaitReason::kMutex, 2);
    EXPECT_TRUE(MutexPeer::Starving(mu));
    EXPECT_EQ(MutexPeer::Waiters(mu), 2);
    mu.Unlock();  // hand-off to the old waiter, then to the newcomer
    done.Wait();
    EXPECT_EQ(order, (std::vector<char>{'O', 'N'}));
    EXPECT_EQ(MutexPeer::State(mu), 0);  // back to normal mode
  }
  EXPECT_TRUE(entered);
  EXPECT_GT(sync_internal::MutexStarvationCount(), starvations_before);
}

using testing::StarvationWatch;

// The hammer test: threads lock and unlock in tight loops, holding the lock
// for a moment each time, while one fiber (or thread), the victim, calls
// Lock once per round. An unlocking hammer re-locks before the waiter it
// woke can run, so the victim keeps losing until it has waited over 1 ms
// and queues in starvation mode. From then on it is at the front of the
// queue and Unlock hands the mutex to the front, so it is served within a
// bound counted in lock acquisitions, not in time: after its (last)
// starvation mark, the hammers can lock the mutex only as the holder of the
// moment (whose count may land after the mark) or as a waiter a hand-off
// was already on its way to; kHammers + 1 bounds both, with room to spare.
// In normal mode (no hand-off) the hammers would take the lock thousands of
// times while the victim waits. The bound is checked only in rounds where
// no other task switched the mutex back to normal mode meanwhile, which
// Go's rules allow (see sync/testing/starvation_watch.h; TSan runs hit it).
TEST_P(MutexTest, AHammeredLockerGetsTheLockAndStarvationModeIsEntered) {
  constexpr int kHammers = 2;
  constexpr std::int64_t kBound = kHammers + 1;
  Mutex mu;
  std::int64_t counter = 0;  // guarded by mu
  std::atomic<bool> stop{false};
  StarvationWatch watch(&mu);
  std::vector<std::thread> hammers;
  for (int i = 0; i < kHammers; ++i) {
    hammers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        mu.Lock();
        ++counter;
        StarvationWatch::hammer_locks.fetch_add(1);
        HoldALittle();
        // ...and at once Lock again: a running task beats a woken one.
        mu.Unlock();
      }
    });
  }
  // At least 4 rounds (fiber and thread victims); then on until the victim
  // itself has starved in 2 rounds, which normally happens within the first
  // few (a round that the victim wins in under 1 ms shows nothing: some
  // runs need hundreds). The bound on rounds only keeps a broken build
  // finite.
  int rounds = 0;
  int starved_rounds = 0;  // checked ones: no exit by another task
  while (rounds < 4 || (starved_rounds < 2 && rounds < 5000)) {
    ++rounds;
    WaitGroup done;
    done.Add(1);
    bool got_it = false;
    int marks = 0;
    int exits = 0;
    std::int64_t hammer_locks_after_mark = 0;
    auto victim = [&] {
      StarvationWatch::marks = 0;
      StarvationWatch::exits_by_others = 0;
      StarvationWatch::victim = Parker::Current();
      mu.Lock();
      // Every hammer's count before our Lock is visible here: it was made
      // under the mutex. So is every exit: made before its task's Unlock.
      marks = StarvationWatch::marks.load();
      exits = StarvationWatch::exits_by_others.load();
      hammer_locks_after_mark = StarvationWatch::hammer_locks.load() -
                                StarvationWatch::hammer_locks_at_mark.load();
      got_it = true;
      ++counter;
      mu.Unlock();
      done.Done();
    };
    if (rounds % 2 == 0) {
      Go(victim);
      done.Wait();
    } else {
      std::thread t(victim);
      done.Wait();
      t.join();
    }
    ASSERT_TRUE(got_it);
    if (marks > 0 && exits == 0) {
      ++starved_rounds;
      EXPECT_LE(hammer_locks_after_mark, kBound)
          << "round " << rounds << " ("
          << (rounds % 2 == 0 ? "fiber" : "thread")
          << " victim): the hammers locked the mutex "
          << hammer_locks_after_mark
          << " times after it queued in starvation mode";
    }
  }
  stop.store(true);
  for (auto& t : hammers) t.join();
  EXPECT_GE(starved_rounds, 1)
      << "the victim itself never starved (with no other task ending "
         "starvation mode meanwhile) in "
      << rounds << " rounds";
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

// The Sema under Mutex: FIFO, except that a LIFO waiter (a woken waiter that
// lost the race) goes to the front; one token per Release.
TEST_P(MutexTest, SemaIsFifoAndLifoWaitersGoToTheFront) {
  sync_internal::Sema sema;
  std::vector<int> order;  // written by the woken fibers, one at a time
  sched_internal::Lock order_mu;
  WaitGroup done;
  auto waiter = [&](int id, bool lifo) {
    return [&, id, lifo] {
      sema.Acquire(WaitReason::kSemaphore, lifo);
      {
        std::lock_guard<sched_internal::Lock> l(order_mu);
        order.push_back(id);
      }
      done.Done();
    };
  };
  done.Add(4);
  Go(waiter(1, false));
  AwaitFibersWaiting(WaitReason::kSemaphore, 1);
  Go(waiter(2, false));
  AwaitFibersWaiting(WaitReason::kSemaphore, 2);
  Go(waiter(3, true));  // to the front
  AwaitFibersWaiting(WaitReason::kSemaphore, 3);
  Go(waiter(4, false));
  AwaitFibersWaiting(WaitReason::kSemaphore, 4);
  for (int i = 1; i <= 4; ++i) {
    sema.Release();
    // One token wakes exactly one waiter.
    AwaitFibersWaiting(WaitReason::kSemaphore, 4 - i);
    while (true) {
      std::lock_guard<sched_internal::Lock> l(order_mu);
      if (static_cast<int>(order.size()) == i) break;
    }
  }
  done.Wait();
  EXPECT_EQ(order, (std::vector<int>{3, 1, 2, 4}));
  // A token released with nobody waiting is kept for the next Acquire.
  sema.Release();
  sema.Acquire(WaitReason::kSemaphore);
}

TEST(MutexDeathTest, UnlockOfUnlockedMutexIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Mutex mu;
        mu.Unlock();
      },
      "fatal: sync: unlock of unlocked mutex");
  EXPECT_DEATH(
      {
        Mutex mu;
        mu.Lock();
        mu.Unlock();
        mu.Unlock();
      },
      "fatal: sync: unlock of unlocked mutex");
}

TEST(MutexDeathTest, UnlockOfUnlockedMutexInAFiberIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Mutex mu;
        RunMain([&] {
          mu.Unlock();
          return 0;
        });
      },
      "fatal: sync: unlock of unlocked mutex");
}

}  // namespace
}  // namespace gort
