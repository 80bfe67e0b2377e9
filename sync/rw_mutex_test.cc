// RWMutex between fibers and threads, with the scheduler linked.

#include "sync/rw_mutex.h"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
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
using testing::FibersWaiting;

constexpr int kScale = testing::kStressScale;

class RWMutexTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, RWMutexTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

TEST_P(RWMutexTest, ReadersShareWritersExclude) {
  RWMutex mu;
  mu.RLock();
  EXPECT_TRUE(mu.TryRLock());  // a second reader
  EXPECT_FALSE(mu.TryLock());  // no writer while readers hold it
  mu.RUnlock();
  mu.RUnlock();
  EXPECT_TRUE(mu.TryLock());
  EXPECT_FALSE(mu.TryRLock());  // no reader while a writer holds it
  EXPECT_FALSE(mu.TryLock());
  mu.Unlock();
  mu.Lock();
  mu.Unlock();
  // Readers from a fiber and a thread at once.
  WaitGroup in, out;
  in.Add(2);
  out.Add(1);
  Go([&] {
    mu.RLock();
    in.Done();
    out.Wait();
    mu.RUnlock();
  });
  std::thread t([&] {
    mu.RLock();
    in.Done();
    out.Wait();
    mu.RUnlock();
  });
  in.Wait();  // both hold a read lock now
  EXPECT_FALSE(mu.TryLock());
  out.Done();
  t.join();
  mu.Lock();  // once they left
  mu.Unlock();
}

TEST_P(RWMutexTest, WorksWithStdLocks) {
  RWMutex mu;
  int x = 0;
  {
    std::shared_lock<RWMutex> r1(mu);
    std::shared_lock<RWMutex> r2(mu, std::try_to_lock);
    EXPECT_TRUE(r2.owns_lock());
    std::unique_lock<RWMutex> w(mu, std::try_to_lock);
    EXPECT_FALSE(w.owns_lock());
  }
  {
    std::lock_guard<RWMutex> w(mu);
    ++x;
    std::shared_lock<RWMutex> r(mu, std::try_to_lock);
    EXPECT_FALSE(r.owns_lock());
  }
  EXPECT_EQ(x, 1);
  EXPECT_TRUE(mu.TryLock());
  mu.Unlock();
}

// A writer waits (parked with kRWMutexWrite) until the readers leave, and
// sees nothing they might still be doing; then readers see its writes.
TEST_P(RWMutexTest, AWriterWaitsForReadersAndReadersSeeItsWrites) {
  RWMutex mu;
  int value = 0;  // plain: TSan checks the ordering promises
  WaitGroup wrote;
  wrote.Add(1);
  mu.RLock();
  mu.RLock();  // two read locks held by this thread
  Go([&] {
    mu.Lock();
    value = 7;
    mu.Unlock();
    wrote.Done();
  });
  AwaitFibersWaiting(WaitReason::kRWMutexWrite, 1);
  EXPECT_EQ(value, 0);
  mu.RUnlock();
  EXPECT_EQ(FibersWaiting(WaitReason::kRWMutexWrite), 1);  // one reader left
  mu.RUnlock();
  wrote.Wait();
  mu.RLock();
  EXPECT_EQ(value, 7);
  mu.RUnlock();
}

// Writer preference: with a reader holding the lock and a writer waiting,
// TryRLock fails and a new RLock blocks until the writer has been in and out.
TEST_P(RWMutexTest, AWaitingWriterBlocksNewReaders) {
  RWMutex mu;
  int value = 0;
  std::vector<int> seen;  // guarded by seen_mu
  Mutex seen_mu;
  WaitGroup done;
  mu.RLock();  // the first reader
  done.Add(1);
  Go([&] {  // the writer
    mu.Lock();
    value = 1;
    mu.Unlock();
    done.Done();
  });
  AwaitFibersWaiting(WaitReason::kRWMutexWrite, 1);
  EXPECT_FALSE(mu.TryRLock());  // even though only readers hold it
  constexpr int kLateReaders = 3;
  done.Add(kLateReaders);
  for (int i = 0; i < kLateReaders; ++i) {
    Go([&] {
      mu.RLock();  // blocks: a writer is pending
      const int v = value;
      mu.RUnlock();
      {
        std::lock_guard<Mutex> l(seen_mu);
        seen.push_back(v);
      }
      done.Done();  // after unlocking: the test may end right away
    });
  }
  AwaitFibersWaiting(WaitReason::kRWMutexRead, kLateReaders);
  std::thread late_thread_reader([&] {
    mu.RLock();
    const int v = value;
    mu.RUnlock();
    std::lock_guard<Mutex> l(seen_mu);
    seen.push_back(v);
  });
  EXPECT_EQ(FibersWaiting(WaitReason::kRWMutexWrite), 1);
  mu.RUnlock();  // the writer goes first, then all late readers at once
  done.Wait();
  late_thread_reader.join();
  EXPECT_EQ(seen, std::vector<int>(kLateReaders + 1, 1));
  EXPECT_TRUE(mu.TryLock());
  mu.Unlock();
}

// Writers exclude each other, and a waiting writer shows kRWMutexWrite even
// while it waits for the other writer (not kMutex).
TEST_P(RWMutexTest, WritersExcludeEachOther) {
  RWMutex mu;
  int value = 0;
  WaitGroup done;
  done.Add(1);
  mu.Lock();
  Go([&] {
    mu.Lock();
    value += 1;
    mu.Unlock();
    done.Done();
  });
  AwaitFibersWaiting(WaitReason::kRWMutexWrite, 1);
  EXPECT_EQ(FibersWaiting(WaitReason::kMutex), 0);
  value += 10;
  mu.Unlock();
  done.Wait();
  EXPECT_EQ(value, 11);
}

// 8 fibers and 4 threads: some write (two fields kept equal, a counter
// incremented), the rest read and check that the fields are equal.
TEST_P(RWMutexTest, StressWritersAndReadersKeepTheInvariant) {
  const int kOps = 10000 / kScale;
  constexpr int kFibers = 8, kThreads = 4;
  RWMutex mu;
  std::int64_t a = 0, b = 0;  // plain, guarded by mu; always a == b
  std::atomic<std::int64_t> writes{0};
  std::atomic<int> torn{0};
  std::atomic<int> writers_inside{0}, readers_inside{0};
  std::atomic<int> overlaps{0};
  WaitGroup done;
  done.Add(kFibers + kThreads);
  auto work = [&](int me) {
    for (int i = 0; i < kOps; ++i) {
      if ((i + me) % 10 == 0) {  // 10% writes
        mu.Lock();
        if (writers_inside.fetch_add(1) != 0 || readers_inside.load() != 0) {
          overlaps.fetch_add(1);
        }
        ++a;
        ++b;
        writers_inside.fetch_sub(1);
        mu.Unlock();
        writes.fetch_add(1, std::memory_order_relaxed);
      } else if (i % 7 == 0 && !mu.TryRLock()) {
        continue;  // TryRLock mixed in
      } else {
        if (i % 7 != 0) mu.RLock();
        readers_inside.fetch_add(1);
        if (writers_inside.load() != 0) overlaps.fetch_add(1);
        if (a != b) torn.fetch_add(1);
        readers_inside.fetch_sub(1);
        mu.RUnlock();
      }
    }
    done.Done();
  };
  for (int i = 0; i < kFibers; ++i) Go([&, i] { work(i); });
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { work(kFibers + i); });
  }
  done.Wait();
  for (auto& t : threads) t.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(a, writes.load());
  EXPECT_EQ(b, writes.load());
}

// The reference-count pattern with a writer: each reader takes and releases
// the read lock, then drops its reference; the last one deletes the object,
// possibly while the writer's Unlock, which let those readers in, is still
// finishing.
TEST_P(RWMutexTest, TheLastReaderMayDeleteTheMutexRightAfterAWriterUnlocks) {
  const int kRounds = 2000 / kScale;
  constexpr int kReaders = 4;
  struct Shared {
    RWMutex mu;
    std::atomic<int> refs{kReaders};
  };
  for (int round = 0; round < kRounds; ++round) {
    auto* s = new Shared;
    WaitGroup done;
    done.Add(kReaders + 1);
    s->mu.Lock();
    for (int i = 0; i < kReaders; ++i) {
      Go([s, &done] {
        s->mu.RLock();
        s->mu.RUnlock();
        if (s->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete s;
        done.Done();
      });
    }
    std::thread writer([s, &done] {
      s->mu.Unlock();  // lets the readers in; they may delete s at once
      done.Done();
    });
    done.Wait();
    writer.join();
  }
}

TEST(RWMutexDeathTest, RUnlockOfUnlockedRWMutexIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        RWMutex mu;
        mu.RUnlock();
      },
      "fatal: sync: RUnlock of unlocked RWMutex");
  EXPECT_DEATH(
      {
        RWMutex mu;
        mu.Lock();
        mu.RUnlock();  // write-locked, no reader
      },
      "fatal: sync: RUnlock of unlocked RWMutex");
}

TEST(RWMutexDeathTest, UnlockOfUnlockedRWMutexIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        RWMutex mu;
        mu.Unlock();
      },
      "fatal: sync: Unlock of unlocked RWMutex");
  EXPECT_DEATH(
      {
        RWMutex mu;
        mu.RLock();
        mu.Unlock();  // read-locked only
      },
      "fatal: sync: Unlock of unlocked RWMutex");
  EXPECT_DEATH(
      {
        RWMutex mu;
        RunMain([&] {
          mu.Lock();
          mu.Unlock();
          mu.Unlock();
          return 0;
        });
      },
      "fatal: sync: Unlock of unlocked RWMutex");
}

}  // namespace
}  // namespace gort
