// Mutex, RWMutex, Once and Cond between plain std::threads, with ONLY //sync
// linked: no scheduler, so every waiter parks as a thread on a futex.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "sync/cond.h"
#include "sync/mutex.h"
#include "sync/once.h"
#include "sync/rw_mutex.h"
#include "sync/testing/starvation_watch.h"
#include "sync/wait_group.h"

namespace gort {
namespace sync_internal {

struct MutexPeer {
  static std::int64_t State(const Mutex& m) {
    return m.state_.load(std::memory_order_relaxed);
  }
  static int Waiters(const Mutex& m) {
    return static_cast<int>(Mutex::Waiters(State(m)));
  }
};

}  // namespace sync_internal

namespace {

using sync_internal::MutexPeer;

#if defined(GORT_SANITIZED)
constexpr int kScale = 10;
#else
constexpr int kScale = 1;
#endif

// Busy work inside a critical section (a few microseconds; not a timing
// assumption: more or less only changes how soon a waiter starves).
void HoldALittle() {
  static std::atomic<int> sink{0};
  for (int i = 0; i < 2000; ++i) sink.fetch_add(1, std::memory_order_relaxed);
}

TEST(SyncThreadTest, NoSchedulerIsLinked) {
  EXPECT_EQ(Parker::Current()->kind(), Parker::Kind::kThread);
}

// Mutex, RWMutex and Once have constexpr constructors: a namespace-scope one
// is constant-initialized (constinit compiles), so other static
// initializers may use it.
constinit Mutex g_mu;
constinit RWMutex g_rw;
constinit Once g_once;

TEST(SyncThreadTest, GlobalsAreConstantInitialized) {
  std::lock_guard<Mutex> l(g_mu);
  std::shared_lock<RWMutex> r(g_rw);
  int runs = 0;
  g_once.Call([&] { ++runs; });
  g_once.Call([&] { ++runs; });
  EXPECT_EQ(runs, 1);
}

// --- Mutex -------------------------------------------------------------------

TEST(SyncThreadTest, MutexBasics) {
  Mutex mu;
  EXPECT_TRUE(mu.TryLock());
  EXPECT_FALSE(mu.TryLock());
  mu.Unlock();
  {
    std::lock_guard<Mutex> l(mu);
    EXPECT_FALSE(mu.try_lock());
  }
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

// A thread blocked in Lock sleeps (it is counted as a waiter) and gets the
// lock, with the holder's writes, once the holder unlocks.
TEST(SyncThreadTest, MutexWaitingThreadSleepsAndSeesTheWrites) {
  Mutex mu;
  int payload = 0;
  int seen = -1;
  mu.Lock();
  std::thread t([&] {
    mu.Lock();
    seen = payload;
    mu.Unlock();
  });
  while (MutexPeer::Waiters(mu) != 1) std::this_thread::yield();
  payload = 5;
  mu.Unlock();
  t.join();
  EXPECT_EQ(seen, 5);
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

TEST(SyncThreadTest, MutexStressThreadsIncrementACounter) {
  const int kIncrements = 50000 / kScale;
  constexpr int kThreads = 6;
  Mutex mu;
  std::int64_t counter = 0;
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < kIncrements; ++j) {
        std::lock_guard<Mutex> l(mu);
        ++counter;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, std::int64_t{kIncrements} * kThreads);
  EXPECT_EQ(MutexPeer::State(mu), 0);
}

using testing::StarvationWatch;

// Threads hammer the lock (holding it a moment each time); another thread,
// the victim, calls Lock once per round. It always gets the lock, it starves
// (queues in starvation mode) in some rounds, and once it has, it is served
// within a bound counted in the hammers' acquisitions, not in time: at the
// front of the queue, it gets the next hand-off, so only the holder of the
// moment and a waiter a hand-off was already on its way to can lock the
// mutex before it (kHammers + 1, with room to spare; see mutex_test.cc),
// unless another task switched the mutex back to normal mode meanwhile (as
// Go's rules allow; such rounds are not checked).
TEST(SyncThreadTest, MutexHammeredLockerGetsItAndStarvationModeIsEntered) {
  constexpr int kHammers = 2;
  constexpr std::int64_t kBound = kHammers + 1;
  Mutex mu;
  std::int64_t counter = 0;
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
  // At least 3 rounds; then on until the victim itself starved in 2 rounds
  // (normally within the first few; the bound on rounds only keeps a broken
  // build finite).
  int rounds = 0;
  int starved_rounds = 0;  // checked ones: no exit by another task
  while (rounds < 3 || (starved_rounds < 2 && rounds < 5000)) {
    ++rounds;
    bool got_it = false;
    int marks = 0;
    int exits = 0;
    std::int64_t hammer_locks_after_mark = 0;
    std::thread victim([&] {
      StarvationWatch::marks = 0;
      StarvationWatch::exits_by_others = 0;
      StarvationWatch::victim = Parker::Current();
      mu.Lock();
      marks = StarvationWatch::marks.load();
      exits = StarvationWatch::exits_by_others.load();
      hammer_locks_after_mark = StarvationWatch::hammer_locks.load() -
                                StarvationWatch::hammer_locks_at_mark.load();
      got_it = true;
      mu.Unlock();
    });
    victim.join();
    ASSERT_TRUE(got_it);
    if (marks > 0 && exits == 0) {
      ++starved_rounds;
      EXPECT_LE(hammer_locks_after_mark, kBound)
          << "round " << rounds << ": the hammers locked the mutex "
          << hammer_locks_after_mark
          << " times after the victim queued in starvation mode";
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

// --- RWMutex -----------------------------------------------------------------

TEST(SyncThreadTest, RWMutexBasics) {
  RWMutex mu;
  {
    std::shared_lock<RWMutex> a(mu);
    std::shared_lock<RWMutex> b(mu, std::try_to_lock);
    EXPECT_TRUE(b.owns_lock());
    EXPECT_FALSE(mu.TryLock());
  }
  {
    std::unique_lock<RWMutex> w(mu);
    EXPECT_FALSE(mu.TryRLock());
    EXPECT_FALSE(mu.TryLock());
  }
  EXPECT_TRUE(mu.TryLock());
  mu.Unlock();
}

// Writer preference between threads: once a writer waits, TryRLock fails
// and a new reader waits until the writer is done.
TEST(SyncThreadTest, RWMutexWaitingWriterBlocksNewReaders) {
  RWMutex mu;
  int value = 0;
  mu.RLock();
  std::thread writer([&] {
    mu.Lock();
    value = 1;
    mu.Unlock();
  });
  // The writer is pending once new readers are refused.
  for (;;) {
    if (!mu.TryRLock()) break;
    mu.RUnlock();
    std::this_thread::yield();
  }
  int seen = -1;
  std::thread reader([&] {
    mu.RLock();
    seen = value;
    mu.RUnlock();
  });
  mu.RUnlock();
  writer.join();
  reader.join();
  EXPECT_EQ(seen, 1);
}

TEST(SyncThreadTest, RWMutexStressWritersAndReaders) {
  const int kOps = 20000 / kScale;
  constexpr int kThreads = 6;
  RWMutex mu;
  std::int64_t a = 0, b = 0;
  std::atomic<std::int64_t> writes{0};
  std::atomic<int> torn{0};
  std::vector<std::thread> threads;
  for (int me = 0; me < kThreads; ++me) {
    threads.emplace_back([&, me] {
      for (int i = 0; i < kOps; ++i) {
        if ((i + me) % 10 == 0) {
          std::lock_guard<RWMutex> l(mu);
          ++a;
          ++b;
          writes.fetch_add(1, std::memory_order_relaxed);
        } else {
          std::shared_lock<RWMutex> l(mu);
          if (a != b) torn.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(a, writes.load());
  EXPECT_EQ(b, writes.load());
}

// --- Once --------------------------------------------------------------------

TEST(SyncThreadTest, OnceStormExactlyOneRun) {
  const int kRounds = 100 / kScale;
  constexpr int kThreads = 8;
  for (int r = 0; r < kRounds; ++r) {
    Once once;
    std::atomic<int> runs{0};
    int value = 0;
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&] {
        once.Call([&] {
          runs.fetch_add(1);
          value = 42;
        });
        if (value != 42) bad.fetch_add(1);
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_EQ(runs.load(), 1);
    ASSERT_EQ(bad.load(), 0);
    EXPECT_TRUE(once.Done());
  }
}

TEST(SyncThreadTest, OnceExceptionLeavesItNotDoneAndAWaiterRuns) {
  Once once;
  std::atomic<bool> in_f{false}, release{false};
  std::atomic<int> runs{0};
  std::thread thrower([&] {
    EXPECT_THROW(once.Call([&] {
      in_f.store(true);
      while (!release.load()) std::this_thread::yield();
      throw std::runtime_error("boom");
    }),
                 std::runtime_error);
  });
  while (!in_f.load()) std::this_thread::yield();
  std::vector<std::thread> waiters;
  for (int i = 0; i < 4; ++i) {
    waiters.emplace_back([&] { once.Call([&] { runs.fetch_add(1); }); });
  }
  release.store(true);
  thrower.join();
  for (auto& t : waiters) t.join();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_TRUE(once.Done());
}

// --- Cond --------------------------------------------------------------------

TEST(SyncThreadTest, CondSignalAndBroadcast) {
  Mutex mu;
  Cond cond(&mu);
  int permits = 0;  // guarded by mu
  int woken = 0;    // guarded by mu
  int waiting = 0;  // guarded by mu
  constexpr int kWaiters = 4;
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&] {
      std::lock_guard<Mutex> l(mu);
      ++waiting;
      while (permits == 0) cond.Wait();
      --permits;
      ++woken;
    });
  }
  auto count = [&](int* v) {
    std::lock_guard<Mutex> l(mu);
    return *v;
  };
  while (count(&waiting) != kWaiters) std::this_thread::yield();
  {
    std::lock_guard<Mutex> l(mu);
    permits = 1;
  }
  cond.Signal();
  while (count(&woken) != 1) std::this_thread::yield();
  {
    std::lock_guard<Mutex> l(mu);
    permits = kWaiters - 1;
  }
  cond.Broadcast();
  for (auto& t : threads) t.join();
  EXPECT_EQ(woken, kWaiters);
  EXPECT_EQ(permits, 0);
}

TEST(SyncThreadTest, CondProducerConsumerLosesNothing) {
  const int kItems = 20000 / kScale;
  constexpr int kProducers = 3, kConsumers = 3;
  constexpr std::size_t kCapacity = 4;
  Mutex mu;
  Cond not_empty(&mu), not_full(&mu);
  std::deque<int> queue;
  int producers_left = kProducers;
  std::vector<std::vector<int>> got(kConsumers);
  std::vector<std::thread> threads;
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      for (;;) {
        std::unique_lock<Mutex> l(mu);
        not_empty.Wait([&] { return !queue.empty() || producers_left == 0; });
        if (queue.empty()) break;
        got[c].push_back(queue.front());
        queue.pop_front();
        l.unlock();
        not_full.Signal();
      }
    });
  }
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = p; i < kItems; i += kProducers) {
        std::unique_lock<Mutex> l(mu);
        not_full.Wait([&] { return queue.size() < kCapacity; });
        queue.push_back(i);
        l.unlock();
        not_empty.Signal();
      }
      std::lock_guard<Mutex> l(mu);
      if (--producers_left == 0) not_empty.Broadcast();
    });
  }
  for (auto& t : threads) t.join();
  std::vector<int> all;
  for (auto& v : got) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(static_cast<int>(all.size()), kItems);
  for (int i = 0; i < kItems; ++i) ASSERT_EQ(all[i], i);
}

// --- Fatal errors ------------------------------------------------------------

TEST(SyncThreadDeathTest, UnlockOfUnlockedMutexIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Mutex mu;
        mu.Unlock();
      },
      "fatal: sync: unlock of unlocked mutex");
}

TEST(SyncThreadDeathTest, RUnlockOfUnlockedRWMutexIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        RWMutex mu;
        mu.RLock();
        mu.RUnlock();
        mu.RUnlock();
      },
      "fatal: sync: RUnlock of unlocked RWMutex");
}

TEST(SyncThreadDeathTest, UnlockOfUnlockedRWMutexIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        RWMutex mu;
        mu.Unlock();
      },
      "fatal: sync: Unlock of unlocked RWMutex");
}

}  // namespace
}  // namespace gort
