// Context and Semaphore between plain std::threads, with ONLY //sync (and
// //chan) linked: no scheduler. Parking is the thread path of the parking
// API; deadlines run on chan/time.h's timer thread.

#include <atomic>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/chan.h"
#include "chan/select.h"
#include "gtest/gtest.h"
#include "sync/context.h"
#include "sync/semaphore.h"

namespace gort {
namespace {

using context_internal::NumChildrenForTest;

#if defined(GORT_SANITIZED)
constexpr int kScale = 10;
#else
constexpr int kScale = 1;
#endif

TEST(ContextThreadTest, CancelWakesThreadsInSelect) {
  auto [root, cancel] = WithCancel(Background());
  auto [child, cancel_child] = WithTimeout(root, absl::Hours(1));
  Chan<int> never = MakeChan<int>();
  std::atomic<int> woken{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, child = child] {
      EXPECT_EQ(Select(Recv(never), Recv(child.Done())), 1);
      EXPECT_TRUE(absl::IsCancelled(child.Err()));
      woken.fetch_add(1);
    });
  }
  while (chan_internal::WaitersForTest(never, /*senders=*/false) != 4) {
    absl::SleepFor(absl::Microseconds(200));
  }
  EXPECT_EQ(woken.load(), 0);
  cancel();
  for (auto& t : threads) t.join();
  EXPECT_EQ(woken.load(), 4);
  EXPECT_EQ(NumChildrenForTest(root), 0u);
}

// The reference-count pattern: a waiter that sees its context cancelled
// drops the last handles to it at once, while the canceller, which calls a
// CancelFunc it does not own, is still inside the cancellation (closing
// Done(), unlocking, leaving the parent). The canceller's call must keep the
// context alive (under ASan, a use-after-free otherwise).
TEST(ContextThreadTest, AWaiterMayDestroyTheContextWhileItIsBeingCancelled) {
  const int kRounds = 2000 / kScale;
  struct Handles {
    Context ctx;
    CancelFunc cancel;
  };
  auto [root, cancel_root] = WithCancel(Background());
  for (int round = 0; round < kRounds; ++round) {
    auto [ctx, cancel] = WithCancel(root);
    auto* h = new Handles{std::move(ctx), std::move(cancel)};
    std::atomic<bool> go{false};
    std::thread waiter([h, &go] {
      go.store(true);
      while (h->ctx.Err().ok()) {
      }
      delete h;  // the last handles: the context may go now
    });
    while (!go.load()) {
    }
    Handles* borrowed = h;  // not ours: the waiter owns and deletes it
    borrowed->cancel();
    waiter.join();
  }
  cancel_root();
}

TEST(ContextThreadTest, TimeoutFires) {
  const absl::Time start = absl::Now();
  auto [ctx, cancel] = WithTimeout(Background(), absl::Milliseconds(5));
  ctx.Done().Recv();
  EXPECT_GE(absl::Now(), start + absl::Milliseconds(5));
  EXPECT_TRUE(absl::IsDeadlineExceeded(ctx.Err()));
}

TEST(ContextThreadTest, SemaphoreBetweenThreads) {
  constexpr std::int64_t kSize = 3;
  Semaphore sem(kSize);
  std::atomic<std::int64_t> in_flight{0};
  std::vector<std::thread> threads;
  const int kIters = 2000 / kScale;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        const std::int64_t n = 1 + (t + i) % kSize;
        ASSERT_TRUE(sem.Acquire(Background(), n).ok());
        EXPECT_LE(in_flight.fetch_add(n) + n, kSize);
        in_flight.fetch_sub(n);
        sem.Release(n);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(sem.HeldForTest(), 0);

  // A waiting thread gives up when its context expires.
  ASSERT_TRUE(sem.TryAcquire(kSize));
  auto [ctx, cancel] = WithTimeout(Background(), absl::Milliseconds(2));
  EXPECT_TRUE(absl::IsDeadlineExceeded(sem.Acquire(ctx, 1)));
  EXPECT_EQ(sem.HeldForTest(), kSize);
  EXPECT_EQ(sem.WaitersForTest(), 0);
  sem.Release(kSize);
}

}  // namespace
}  // namespace gort
