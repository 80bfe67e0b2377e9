// Cond between fibers and threads, with the scheduler linked.

#include "sync/cond.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"
#include "sync/mutex.h"
#include "sync/rw_mutex.h"
#include "sync/testing/fibers.h"
#include "sync/wait_group.h"

namespace gort {
namespace {

using testing::AwaitFibersWaiting;
using testing::FibersWaiting;

constexpr int kScale = testing::kStressScale;

class CondTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, CondTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

// Signal wakes the oldest waiter: fibers that started waiting one after the
// other are woken in that order, one per Signal, with the lock held again.
TEST_P(CondTest, SignalWakesOneWaiterOldestFirst) {
  constexpr int kWaiters = 4;
  Mutex mu;
  Cond cond(&mu);
  std::vector<int> order;  // guarded by mu
  int permits = 0;         // guarded by mu
  WaitGroup done;
  done.Add(kWaiters);
  for (int i = 0; i < kWaiters; ++i) {
    Go([&, i] {
      mu.Lock();
      while (permits == 0) cond.Wait();
      --permits;
      order.push_back(i);
      mu.Unlock();
      done.Done();
    });
    AwaitFibersWaiting(WaitReason::kCond, i + 1);
  }
  for (int i = 0; i < kWaiters; ++i) {
    mu.Lock();
    ++permits;
    mu.Unlock();
    cond.Signal();
    // Exactly one waiter leaves; it takes the permit.
    AwaitFibersWaiting(WaitReason::kCond, kWaiters - 1 - i);
    for (;;) {
      std::lock_guard<Mutex> l(mu);
      if (static_cast<int>(order.size()) == i + 1) break;
    }
  }
  done.Wait();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
}

// Broadcast wakes every waiter, fibers and threads, and they see the write
// made under the lock before it.
TEST_P(CondTest, BroadcastWakesEveryWaiterFibersAndThreads) {
  constexpr int kFibers = 16, kThreads = 3;
  Mutex mu;
  Cond cond(&mu);
  bool ready = false;  // guarded by mu
  std::atomic<int> waiting_threads{0};
  WaitGroup done;
  done.Add(kFibers + kThreads);
  auto waiter = [&](bool thread) {
    mu.Lock();
    if (thread) waiting_threads.fetch_add(1);
    cond.Wait([&] { return ready; });
    mu.Unlock();
    done.Done();
  };
  for (int i = 0; i < kFibers; ++i) Go([&] { waiter(false); });
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&] { waiter(true); });
  AwaitFibersWaiting(WaitReason::kCond, kFibers);
  while (waiting_threads.load() != kThreads) std::this_thread::yield();
  mu.Lock();  // the threads hold mu until they are inside Wait
  ready = true;
  mu.Unlock();
  cond.Broadcast();
  done.Wait();
  for (auto& t : threads) t.join();
  EXPECT_EQ(FibersWaiting(WaitReason::kCond), 0);
}

// A Signal (or Broadcast) with nobody waiting is not remembered: a Wait that
// starts afterwards sleeps until the next one.
TEST_P(CondTest, SignalWithoutWaitersIsNotRemembered) {
  Mutex mu;
  Cond cond(&mu);
  cond.Signal();
  cond.Broadcast();
  bool woken = false;  // guarded by mu
  WaitGroup done;
  done.Add(1);
  Go([&] {
    mu.Lock();
    cond.Wait();
    woken = true;
    mu.Unlock();
    done.Done();
  });
  AwaitFibersWaiting(WaitReason::kCond, 1);
  {
    std::lock_guard<Mutex> l(mu);
    EXPECT_FALSE(woken);
  }
  cond.Signal();
  done.Wait();
  EXPECT_TRUE(woken);
}

// No lost wake-up: a waiter takes its ticket while it still holds the lock,
// so a Signal sent right after the waiter releases it (before the waiter
// sleeps) still wakes it. Many rounds of a tight hand-shake.
TEST_P(CondTest, NoLostWakeupsInAHandshake) {
  const int kRounds = 5000 / kScale;
  Mutex mu;
  Cond cond(&mu);
  int turn = 0;  // guarded by mu: even = ping's turn, odd = pong's
  WaitGroup done;
  done.Add(2);
  auto player = [&](int parity) {
    for (int i = 0; i < kRounds; ++i) {
      mu.Lock();
      while (turn % 2 != parity) cond.Wait();
      ++turn;
      mu.Unlock();
      cond.Signal();
    }
    done.Done();
  };
  Go([&] { player(0); });
  std::thread pong([&] { player(1); });  // a fiber and a thread
  done.Wait();
  pong.join();
  EXPECT_EQ(turn, 2 * kRounds);
}

// Cond works with RWMutex's write side and with std::mutex.
TEST_P(CondTest, WorksWithRWMutexAndStdMutex) {
  {
    RWMutex rw;
    Cond cond(&rw);
    bool flag = false;
    WaitGroup done;
    done.Add(1);
    Go([&] {
      rw.Lock();
      cond.Wait([&] { return flag; });
      rw.Unlock();
      done.Done();
    });
    AwaitFibersWaiting(WaitReason::kCond, 1);
    rw.Lock();
    flag = true;
    cond.Signal();  // with the lock held
    rw.Unlock();
    done.Wait();
  }
  {
    std::mutex m;
    Cond cond(&m);
    bool flag = false;
    WaitGroup done;
    done.Add(1);
    std::thread t([&] {
      std::unique_lock<std::mutex> l(m);
      cond.Wait([&] { return flag; });
      done.Done();
    });
    {
      std::lock_guard<std::mutex> l(m);
      flag = true;
    }
    cond.Broadcast();
    done.Wait();
    t.join();
  }
}

// A bounded queue with two Conds: producers and consumers, fibers and
// threads. Every item is consumed exactly once. `broadcast` uses Broadcast
// instead of Signal for every notification.
void ProducerConsumer(bool broadcast) {
  const int kItemsPerProducer = 4000 / kScale;
  constexpr int kFiberProducers = 4, kThreadProducers = 2;
  constexpr int kFiberConsumers = 4, kThreadConsumers = 2;
  constexpr int kProducers = kFiberProducers + kThreadProducers;
  constexpr int kConsumers = kFiberConsumers + kThreadConsumers;
  constexpr std::size_t kCapacity = 8;
  const std::int64_t total = std::int64_t{kItemsPerProducer} * kProducers;

  Mutex mu;
  Cond not_empty(&mu), not_full(&mu);
  std::deque<std::int64_t> queue;   // guarded by mu
  int producers_left = kProducers;  // guarded by mu
  std::vector<std::vector<std::int64_t>> got(kConsumers);
  WaitGroup done;
  done.Add(kProducers + kConsumers);
  auto notify = [&](Cond& c) {
    if (broadcast) {
      c.Broadcast();
    } else {
      c.Signal();
    }
  };
  auto producer = [&](int p) {
    for (int i = 0; i < kItemsPerProducer; ++i) {
      mu.Lock();
      while (queue.size() == kCapacity) not_full.Wait();
      queue.push_back(std::int64_t{p} * kItemsPerProducer + i);
      mu.Unlock();
      notify(not_empty);
    }
    mu.Lock();
    const bool last = --producers_left == 0;
    mu.Unlock();
    if (last) not_empty.Broadcast();  // consumers: no more items
    done.Done();
  };
  auto consumer = [&](int c) {
    for (;;) {
      mu.Lock();
      while (queue.empty() && producers_left > 0) not_empty.Wait();
      if (queue.empty()) {
        mu.Unlock();
        break;
      }
      got[c].push_back(queue.front());
      queue.pop_front();
      mu.Unlock();
      notify(not_full);
    }
    done.Done();
  };
  std::vector<std::thread> threads;
  for (int c = 0; c < kConsumers; ++c) {
    if (c < kFiberConsumers) {
      Go([&, c] { consumer(c); });
    } else {
      threads.emplace_back([&, c] { consumer(c); });
    }
  }
  for (int p = 0; p < kProducers; ++p) {
    if (p < kFiberProducers) {
      Go([&, p] { producer(p); });
    } else {
      threads.emplace_back([&, p] { producer(p); });
    }
  }
  done.Wait();
  for (auto& t : threads) t.join();
  std::vector<std::int64_t> all;
  for (auto& v : got) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(static_cast<std::int64_t>(all.size()), total);
  for (std::int64_t i = 0; i < total; ++i) ASSERT_EQ(all[i], i);
}

TEST_P(CondTest, ProducerConsumerWithSignalLosesNothing) {
  ProducerConsumer(/*broadcast=*/false);
}

TEST_P(CondTest, ProducerConsumerWithBroadcastLosesNothing) {
  ProducerConsumer(/*broadcast=*/true);
}

// The Cond may be destroyed by a woken waiter right after the Broadcast
// that woke it (the broadcaster no longer touches it): the waiter holds mu
// while it starts the broadcaster, which can lock mu only once the waiter is
// inside Wait with its ticket taken; so the Broadcast covers the waiter, and
// Wait returns only after it.
TEST_P(CondTest, MayBeDestroyedByAWokenWaiter) {
  const int kIterations = 300 / kScale;
  WaitGroup all;
  all.Add(kIterations);
  Mutex threads_mu;
  std::vector<std::thread> threads;  // guarded by threads_mu
  for (int i = 0; i < kIterations; ++i) {
    Go([&, i] {
      Mutex mu;
      auto cond = std::make_unique<Cond>(&mu);
      mu.Lock();
      auto broadcaster = [&mu, c = cond.get()] {
        mu.Lock();
        mu.Unlock();
        c->Broadcast();  // outside the lock
      };
      if (i % 4 == 0) {
        std::lock_guard<Mutex> l(threads_mu);
        threads.emplace_back(broadcaster);
      } else {
        Go(broadcaster);
      }
      cond->Wait();  // no spurious wake-ups: only the Broadcast ends it
      mu.Unlock();
      cond.reset();
      all.Done();
    });
  }
  all.Wait();
  for (auto& t : threads) t.join();
}

}  // namespace
}  // namespace gort
