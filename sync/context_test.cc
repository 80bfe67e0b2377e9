// Context between fibers and threads, with the scheduler linked.

#include "sync/context.h"

#include <atomic>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/chan.h"
#include "chan/select.h"
#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"
#include "sync/testing/fibers.h"
#include "sync/wait_group.h"

namespace gort {
namespace {

using context_internal::NumChildrenForTest;
using context_internal::NumOrphansForTest;

constexpr int kScale = testing::kStressScale;

inline constexpr ContextKey<std::string> kUser{"user"};
inline constexpr ContextKey<int> kAttempt{"attempt"};
inline constexpr ContextKey<std::string> kOtherStringKey{"user"};

class ContextTest : public testing::RuntimeTest {};

INSTANTIATE_TEST_SUITE_P(Procs, ContextTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

bool IsDone(const Context& ctx) {
  return Select(Recv(ctx.Done()), Default()) == 0;
}

// Polls (behaviour, not speed: the test's own timeout is the limit).
template <typename Pred>
void Await(Pred pred) {
  while (!pred()) absl::SleepFor(absl::Microseconds(200));
}

TEST_P(ContextTest, BackgroundIsNeverDone) {
  for (const Context& ctx : {Background(), TODO(), Context()}) {
    EXPECT_TRUE(ctx.Done().nil());
    EXPECT_TRUE(ctx.Err().ok());
    EXPECT_FALSE(ctx.Deadline().has_value());
    EXPECT_EQ(ctx.Value(kUser), nullptr);
    EXPECT_FALSE(IsDone(ctx));
    EXPECT_EQ(NumChildrenForTest(ctx), 0u);
  }
  EXPECT_TRUE(Background() == Context());
  // Values do not make Background cancellable.
  Context v = WithValue(Background(), kUser, "x");
  EXPECT_TRUE(v.Done().nil());
  EXPECT_TRUE(v.Err().ok());
}

TEST_P(ContextTest, CancelWakesAFiberAndAThreadParkedOnDone) {
  auto [ctx, cancel] = WithCancel(Background());
  EXPECT_FALSE(ctx.Done().nil());
  EXPECT_TRUE(ctx.Err().ok());
  EXPECT_FALSE(IsDone(ctx));

  Chan<int> never = MakeChan<int>();
  int written_before_cancel = 0;  // plain int: TSan checks the ordering
  std::atomic<int> woken{0};
  WaitGroup wg;
  wg.Add(2);
  Go([&, ctx = ctx] {
    EXPECT_EQ(Select(Recv(never), Recv(ctx.Done())), 1);
    EXPECT_TRUE(absl::IsCancelled(ctx.Err()));
    EXPECT_EQ(written_before_cancel, 42);
    woken.fetch_add(1);
    wg.Done();
  });
  std::thread t([&, ctx = ctx] {
    ctx.Done().Recv();  // closed: returns nullopt
    EXPECT_TRUE(absl::IsCancelled(ctx.Err()));
    EXPECT_EQ(written_before_cancel, 42);
    woken.fetch_add(1);
    wg.Done();
  });
  testing::AwaitFibersWaiting(WaitReason::kSelect, 1);
  EXPECT_EQ(woken.load(), 0);
  written_before_cancel = 42;
  cancel();
  wg.Wait();
  t.join();
  EXPECT_EQ(woken.load(), 2);
  EXPECT_TRUE(IsDone(ctx));
  EXPECT_EQ(ctx.Err().message(), "context canceled");
}

TEST_P(ContextTest, CancelFuncIsCopyableAndIdempotent) {
  auto [ctx, cancel] = WithCancel(Background());
  CancelFunc copy = cancel;
  CancelFunc none;
  none();  // does nothing
  WaitGroup wg;
  constexpr int kCallers = 8;
  wg.Add(2 * kCallers);
  for (int i = 0; i < kCallers; ++i) {
    Go([&wg, copy] {
      copy();
      copy();
      wg.Done();
    });
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&wg, cancel = cancel] {
      cancel();
      wg.Done();
    });
  }
  wg.Wait();
  for (auto& t : threads) t.join();
  cancel();
  EXPECT_TRUE(absl::IsCancelled(ctx.Err()));
}

TEST_P(ContextTest, ParentCancelReachesChildrenAndGrandchildrenNotTheOtherWay) {
  auto [root, cancel_root] = WithCancel(Background());
  auto [a, cancel_a] = WithCancel(root);
  auto [b, cancel_b] = WithCancel(root);
  // A value context between a child and its grandchildren.
  Context av = WithValue(a, kAttempt, 1);
  auto [a1, cancel_a1] = WithCancel(av);
  auto [a2, cancel_a2] = WithTimeout(av, absl::Hours(1));
  auto [b1, cancel_b1] = WithCancel(b);
  EXPECT_EQ(NumChildrenForTest(root), 2u);
  EXPECT_EQ(NumChildrenForTest(a), 2u);   // through the value context
  EXPECT_EQ(NumChildrenForTest(av), 2u);  // the same registry

  // A grandchild's cancel touches nobody else.
  cancel_a1();
  EXPECT_TRUE(absl::IsCancelled(a1.Err()));
  for (const Context* c : {&root, &a, &av, &a2, &b, &b1}) {
    EXPECT_TRUE(c->Err().ok());
  }
  EXPECT_EQ(NumChildrenForTest(a), 1u);

  // A child's cancel reaches its subtree only.
  cancel_a();
  for (const Context* c : {&a, &av, &a1, &a2}) {
    EXPECT_TRUE(absl::IsCancelled(c->Err()));
    EXPECT_TRUE(IsDone(*c));
  }
  for (const Context* c : {&root, &b, &b1}) {
    EXPECT_TRUE(c->Err().ok());
    EXPECT_FALSE(IsDone(*c));
  }
  EXPECT_EQ(NumChildrenForTest(root), 1u);
  EXPECT_EQ(NumChildrenForTest(a), 0u);

  // A fiber parked on a grandchild wakes when the root is cancelled.
  WaitGroup wg;
  wg.Add(1);
  Go([&wg, b1 = b1] {
    b1.Done().Recv();
    EXPECT_TRUE(absl::IsCancelled(b1.Err()));
    wg.Done();
  });
  cancel_root();
  wg.Wait();
  for (const Context* c : {&root, &b, &b1}) {
    EXPECT_TRUE(absl::IsCancelled(c->Err()));
  }
  EXPECT_EQ(NumChildrenForTest(root), 0u);
  // Once cancel has returned, the whole tree is cancelled; later cancels of
  // any part change nothing.
  cancel_b1();
  cancel_b();
  cancel_a2();
  EXPECT_TRUE(absl::IsCancelled(a2.Err()));
}

TEST_P(ContextTest, ChildOfACancelledParentIsBornCancelled) {
  auto [parent, cancel] = WithCancel(Background());
  cancel();
  auto [c1, cancel1] = WithCancel(parent);
  auto [c2, cancel2] = WithTimeout(parent, absl::Hours(1));
  Context v = WithValue(parent, kAttempt, 3);
  auto [c3, cancel3] = WithCancel(v);
  for (const Context* c : {&c1, &c2, &v, &c3}) {
    EXPECT_TRUE(absl::IsCancelled(c->Err()));
    EXPECT_TRUE(IsDone(*c));
  }
  EXPECT_EQ(NumChildrenForTest(parent), 0u);
}

TEST_P(ContextTest, ErrTellsCancelledFromDeadlineExceeded) {
  auto [cancelled, cancel] = WithCancel(Background());
  cancel();
  auto [expired, cancel_expired] =
      WithTimeout(Background(), absl::Milliseconds(1));
  expired.Done().Recv();
  const absl::Status c = cancelled.Err();
  const absl::Status d = expired.Err();
  EXPECT_TRUE(absl::IsCancelled(c));
  EXPECT_FALSE(absl::IsDeadlineExceeded(c));
  EXPECT_TRUE(absl::IsDeadlineExceeded(d));
  EXPECT_FALSE(absl::IsCancelled(d));
  EXPECT_EQ(c.message(), "context canceled");
  EXPECT_EQ(d.message(), "context deadline exceeded");
  // Err never changes once set.
  cancel_expired();
  EXPECT_TRUE(absl::IsDeadlineExceeded(expired.Err()));
  // Children of an expired context are born with its error.
  auto [child, cancel_child] = WithCancel(expired);
  EXPECT_TRUE(absl::IsDeadlineExceeded(child.Err()));
  // And children cancelled by an expiring parent get DeadlineExceeded.
  auto [p, cancel_p] = WithTimeout(Background(), absl::Milliseconds(2));
  auto [q, cancel_q] = WithCancel(WithValue(p, kAttempt, 1));
  q.Done().Recv();
  EXPECT_TRUE(absl::IsDeadlineExceeded(q.Err()));
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.Err()));
}

TEST_P(ContextTest, WithTimeoutFiresNoEarlierThanTheTimeout) {
  constexpr absl::Duration kTimeout = absl::Milliseconds(20);
  const absl::Time start = absl::Now();
  auto [ctx, cancel] = WithTimeout(Background(), kTimeout);
  ASSERT_TRUE(ctx.Deadline().has_value());
  EXPECT_GE(*ctx.Deadline(), start + kTimeout);
  WaitGroup wg;
  wg.Add(1);
  absl::Time fiber_saw;
  Go([&, ctx = ctx] {
    EXPECT_EQ(Select(Recv(ctx.Done())), 0);
    fiber_saw = absl::Now();
    EXPECT_TRUE(absl::IsDeadlineExceeded(ctx.Err()));
    wg.Done();
  });
  ctx.Done().Recv();  // and a plain thread
  const absl::Time thread_saw = absl::Now();
  wg.Wait();
  // Lower bounds only: a loaded machine may fire late, never early.
  EXPECT_GE(thread_saw, start + kTimeout);
  EXPECT_GE(fiber_saw, start + kTimeout);
  EXPECT_TRUE(absl::IsDeadlineExceeded(ctx.Err()));
  cancel();
}

TEST_P(ContextTest, PastDeadlineIsExpiredAtOnce) {
  auto [parent, cancel_parent] = WithCancel(Background());
  auto [ctx, cancel] = WithDeadline(parent, absl::Now() - absl::Seconds(1));
  EXPECT_TRUE(absl::IsDeadlineExceeded(ctx.Err()));
  EXPECT_TRUE(IsDone(ctx));
  EXPECT_EQ(NumChildrenForTest(parent), 0u);
  auto [zero, cancel_zero] = WithTimeout(parent, absl::ZeroDuration());
  EXPECT_TRUE(absl::IsDeadlineExceeded(zero.Err()));
  EXPECT_TRUE(parent.Err().ok());
}

TEST_P(ContextTest, CancelBeforeTheDeadlineStopsTheTimer) {
  auto [ctx, cancel] = WithTimeout(Background(), absl::Hours(1));
  EXPECT_TRUE(ctx.Err().ok());
  cancel();
  EXPECT_TRUE(absl::IsCancelled(ctx.Err()));
  EXPECT_TRUE(IsDone(ctx));
}

TEST_P(ContextTest, DeadlineIsTheEarliest) {
  const absl::Time now = absl::Now();
  const absl::Time t1 = now + absl::Hours(1);
  const absl::Time t2 = now + absl::Hours(2);
  const absl::Time t3 = now + absl::Minutes(30);
  EXPECT_FALSE(Background().Deadline().has_value());
  auto [p, cancel_p] = WithDeadline(Background(), t1);
  EXPECT_EQ(p.Deadline(), t1);
  auto [later, cancel_later] = WithDeadline(p, t2);  // the parent's wins
  EXPECT_EQ(later.Deadline(), t1);
  auto [earlier, cancel_earlier] = WithDeadline(p, t3);
  EXPECT_EQ(earlier.Deadline(), t3);
  auto [c, cancel_c] = WithCancel(p);
  EXPECT_EQ(c.Deadline(), t1);
  EXPECT_EQ(WithValue(earlier, kAttempt, 1).Deadline(), t3);
  auto [inf, cancel_inf] = WithDeadline(Background(), absl::InfiniteFuture());
  EXPECT_FALSE(inf.Deadline().has_value());
  auto [timeout, cancel_timeout] = WithTimeout(later, absl::Minutes(10));
  ASSERT_TRUE(timeout.Deadline().has_value());
  EXPECT_LT(*timeout.Deadline(), t3);
  EXPECT_GE(*timeout.Deadline(), now + absl::Minutes(10));
  cancel_p();  // the whole tree, and all their timers
  EXPECT_TRUE(absl::IsCancelled(timeout.Err()));
}

TEST_P(ContextTest, FinishedChildrenLeaveTheParent) {
  auto [parent, cancel_parent] = WithCancel(Background());
  constexpr int kChildren = 100;
  std::vector<std::pair<Context, CancelFunc>> children;
  for (int i = 0; i < kChildren; ++i) {
    children.push_back(i % 2 == 0 ? WithCancel(parent)
                                  : WithTimeout(parent, absl::Hours(1)));
  }
  EXPECT_EQ(NumChildrenForTest(parent), static_cast<std::size_t>(kChildren));
  // Cancelled: removed at once.
  for (int i = 0; i < kChildren / 2; ++i) children[i].second();
  EXPECT_EQ(NumChildrenForTest(parent),
            static_cast<std::size_t>(kChildren - kChildren / 2));
  // Dropped without a cancel: removed when the last handle goes; but a
  // pending deadline timer keeps its context (as in Go) until it fires or
  // the context is cancelled.
  std::vector<CancelFunc> timed;
  for (int i = kChildren / 2; i < kChildren; ++i) {
    if (i % 2 == 1) timed.push_back(children[i].second);
  }
  children.clear();
  EXPECT_EQ(NumChildrenForTest(parent), timed.size());
  for (const CancelFunc& cancel : timed) cancel();
  EXPECT_EQ(NumChildrenForTest(parent), 0u);
  // Expired: removed by the timer.
  auto [t, cancel_t] = WithTimeout(parent, absl::Milliseconds(1));
  t.Done().Recv();
  Await([&, parent = parent] { return NumChildrenForTest(parent) == 0; });
  // A child kept by a fiber leaves when the fiber drops it.
  WaitGroup wg;
  wg.Add(1);
  {
    auto [c, cancel_c] = WithCancel(parent);
    Go([&wg, c = c] { wg.Done(); });
  }
  wg.Wait();
  Await([&, parent = parent] { return NumChildrenForTest(parent) == 0; });
  EXPECT_TRUE(parent.Err().ok());
}

TEST_P(ContextTest, ValuesAreFoundThroughTheChain) {
  Context a = WithValue(Background(), kUser, "alice");
  auto [b, cancel_b] = WithCancel(a);
  Context c = WithValue(b, kAttempt, 7);
  Context d = WithValue(c, kUser, std::string("bob"));  // shadows
  ASSERT_NE(a.Value(kUser), nullptr);
  EXPECT_EQ(*a.Value(kUser), "alice");
  EXPECT_EQ(a.Value(kAttempt), nullptr);
  EXPECT_EQ(*b.Value(kUser), "alice");
  EXPECT_EQ(*c.Value(kUser), "alice");
  EXPECT_EQ(*c.Value(kAttempt), 7);
  EXPECT_EQ(*d.Value(kUser), "bob");
  EXPECT_EQ(*d.Value(kAttempt), 7);
  // Keys are objects, not names.
  EXPECT_EQ(d.Value(kOtherStringKey), nullptr);
  EXPECT_STREQ(kOtherStringKey.name(), kUser.name());
  // Value contexts share their parent's cancellation.
  EXPECT_TRUE(c.Done() == b.Done());
  cancel_b();
  EXPECT_TRUE(absl::IsCancelled(d.Err()));
  EXPECT_EQ(*d.Value(kUser), "bob");  // values outlive cancellation
  // Read from fibers and threads alike.
  WaitGroup wg;
  wg.Add(1);
  Go([&wg, d = d] {
    EXPECT_EQ(*d.Value(kUser), "bob");
    wg.Done();
  });
  std::thread([d = d] { EXPECT_EQ(*d.Value(kAttempt), 7); }).join();
  wg.Wait();
}

TEST_P(ContextTest, ValuesMayBeMoveOnly) {
  static constexpr ContextKey<std::unique_ptr<int>> kPtr{"ptr"};
  Context c = WithValue(Background(), kPtr, std::make_unique<int>(5));
  ASSERT_NE(c.Value(kPtr), nullptr);
  EXPECT_EQ(**c.Value(kPtr), 5);
}

// A deep chain, cancelled at the root and destroyed, on a fiber's stack:
// cancellation and destruction recurse once per level (see docs/context.md).
TEST_P(ContextTest, DeepChainOnAFiber) {
  constexpr int kDepth = 10000;
  WaitGroup wg;
  wg.Add(1);
  Go([&] {
    auto [root, cancel] = WithCancel(Background());
    std::vector<Context> chain = {root};
    for (int i = 0; i < kDepth; ++i) {
      Context v = WithValue(chain.back(), kAttempt, i);
      chain.push_back(i % 2 == 0 ? WithCancel(v).first
                                 : WithTimeout(v, absl::Hours(1)).first);
    }
    // Every level dropped its cancel function: only the chain holds them.
    EXPECT_EQ(*chain.back().Value(kAttempt), kDepth - 1);
    EXPECT_TRUE(chain.back().Err().ok());
    cancel();
    EXPECT_TRUE(absl::IsCancelled(chain.back().Err()));
    Context leaf = chain.back();
    chain.clear();
    root = Context();
    leaf = Context();  // destroys the whole chain, leaf to root
    wg.Done();
  });
  wg.Wait();
}

// Many fibers and threads create, use and cancel (or drop) children and
// grandchildren of one parent at once; the parent's registry ends empty.
TEST_P(ContextTest, StressConcurrentChildrenOfOneParent) {
  auto [parent, cancel_parent] = WithCancel(Background());
  constexpr int kFibers = 8;
  constexpr int kThreads = 2;
  const int kIters = 2000 / kScale;
  std::atomic<int> done_seen{0};
  auto work = [&, parent = parent](int seed) {
    std::minstd_rand rng(seed);
    for (int i = 0; i < kIters; ++i) {
      switch (rng() % 4) {
        case 0: {
          auto [c, cancel] = WithCancel(parent);
          cancel();
          if (IsDone(c)) done_seen.fetch_add(1, std::memory_order_relaxed);
          break;
        }
        case 1: {
          auto [c, cancel] = WithCancel(WithValue(parent, kAttempt, i));
          auto [g, cancel_g] = WithCancel(c);
          cancel();  // reaches the grandchild
          EXPECT_TRUE(absl::IsCancelled(g.Err()));
          EXPECT_EQ(*g.Value(kAttempt), i);
          break;
        }
        case 2: {
          // Expires soon or is cancelled first, whichever comes first.
          auto [c, cancel] = WithTimeout(
              parent, absl::Microseconds(static_cast<int>(rng() % 200)));
          if (rng() % 2 == 0) {
            Select(Recv(c.Done()));
            EXPECT_TRUE(absl::IsDeadlineExceeded(c.Err()));
          }
          cancel();
          EXPECT_FALSE(c.Err().ok());
          break;
        }
        default: {
          auto [c, cancel] = WithCancel(parent);  // dropped uncancelled
          auto [g, cancel_g] = WithCancel(c);
          EXPECT_TRUE(g.Err().ok());
          break;
        }
      }
      if (i % 64 == 0) Yield();
    }
  };
  testing::RunInFibersAndThreads(kFibers, kThreads, work);
  EXPECT_GT(done_seen.load(), 0);
  // Timers that fired may still be finishing their cancel.
  Await([&, parent = parent] { return NumChildrenForTest(parent) == 0; });
  EXPECT_TRUE(parent.Err().ok());
}

// The parent is cancelled while fibers and threads are creating, cancelling
// and waiting on its children: every child ends cancelled, whoever sees the
// parent cancelled sees its own (grand)children cancelled, and every waiter
// wakes.
// Go keeps a child reachable through its parent; here the child may be
// destroyed once its handles are gone, but a Done() channel still held
// closes when an ancestor is cancelled, all the same.
TEST_P(ContextTest, HeldDoneOfADroppedChildClosesWithTheParent) {
  auto [parent, cancel_parent] = WithCancel(Background());
  DoneChan child_done, grandchild_done, unheld_dropped;
  {
    auto [child, cancel_child] = WithCancel(parent);
    child_done = child.Done();
    Context v = WithValue(child, kAttempt, 1);
    auto [grandchild, cancel_grandchild] = WithCancel(v);
    grandchild_done = grandchild.Done();
    auto [unheld, cancel_unheld] = WithCancel(parent);
  }  // all dropped uncancelled: the grandchild's channel went to the child,
     // then both to the parent; the unheld one left nothing behind
  EXPECT_EQ(NumChildrenForTest(parent), 0u);
  EXPECT_EQ(NumOrphansForTest(parent), 2u);
  WaitGroup wg;
  wg.Add(2);
  for (const DoneChan& d : {child_done, grandchild_done}) {
    Go([&wg, d] {
      Select(Recv(d));  // parks until the parent is cancelled
      wg.Done();
    });
  }
  EXPECT_EQ(child_done.TryRecv().status, RecvStatus::kWouldBlock);
  cancel_parent();
  wg.Wait();
  EXPECT_EQ(child_done.TryRecv().status, RecvStatus::kClosed);
  EXPECT_EQ(grandchild_done.TryRecv().status, RecvStatus::kClosed);
  EXPECT_EQ(NumOrphansForTest(parent), 0u);
  // An orphan handed to a parent that is itself dropped goes further up.
  auto [root, cancel_root] = WithCancel(Background());
  DoneChan held;
  {
    auto [mid, cancel_mid] = WithCancel(root);
    auto [leaf, cancel_leaf] = WithCancel(mid);
    held = leaf.Done();
  }
  EXPECT_EQ(NumOrphansForTest(root), 1u);
  cancel_root();
  EXPECT_EQ(held.TryRecv().status, RecvStatus::kClosed);
  // Channels dropped later are pruned: a parent that is never cancelled
  // keeps only what is still held.
  auto [keeper, cancel_keeper] = WithCancel(Background());
  for (int i = 0; i < 1000; ++i) {
    DoneChan d;
    {
      auto [c, cancel_c] = WithCancel(keeper);
      d = c.Done();
    }
    EXPECT_EQ(NumChildrenForTest(keeper), 0u);
  }
  EXPECT_LE(NumOrphansForTest(keeper), 17u);
  // Under Background nothing can cancel it: it is simply never closed.
  {
    auto [lone, cancel_lone] = WithCancel(Background());
    held = lone.Done();
  }
  EXPECT_EQ(held.TryRecv().status, RecvStatus::kWouldBlock);
}

// A child destroyed while its parent is being cancelled (the parent's
// cancellation skips it) still closes a held Done().
TEST_P(ContextTest, StressDroppingAChildWhileTheParentCancels) {
  const int kRounds = 2000 / kScale + 10;
  for (int round = 0; round < kRounds; ++round) {
    auto [parent, cancel_parent] = WithCancel(Background());
    std::optional<std::pair<Context, CancelFunc>> child = WithCancel(parent);
    DoneChan done = child->first.Done();
    std::thread dropper([&] { child.reset(); });
    cancel_parent();
    dropper.join();
    ASSERT_EQ(done.TryRecv().status, RecvStatus::kClosed) << "round " << round;
    EXPECT_EQ(NumOrphansForTest(parent), 0u);
  }
}

TEST_P(ContextTest, StressCancelParentWhileChildrenAreBeingMade) {
  const int kRounds = 30 / kScale + 2;
  constexpr int kFibers = 6;
  constexpr int kThreads = 2;
  for (int round = 0; round < kRounds; ++round) {
    auto [parent, cancel_parent] = WithCancel(Background());
    std::atomic<int> started{0};
    std::atomic<int> woken{0};
    // Waiters park on a grandchild after a few iterations; the others keep
    // making children until they see the parent cancelled.
    auto work = [&, parent = parent](bool waiter) {
      started.fetch_add(1);
      for (int i = 0;; ++i) {
        auto [c, cancel] = WithCancel(parent);
        Context v = WithValue(c, kAttempt, i);
        auto [g, cancel_g] = WithTimeout(v, absl::Hours(1));
        if (waiter && i == 5) {
          Select(Recv(g.Done()));
          EXPECT_TRUE(absl::IsCancelled(g.Err()));
          EXPECT_TRUE(absl::IsCancelled(c.Err()));
          woken.fetch_add(1);
          return;
        }
        if (!waiter && !parent.Err().ok()) {
          EXPECT_TRUE(absl::IsCancelled(c.Err()));
          EXPECT_TRUE(absl::IsCancelled(g.Err()));
          return;
        }
        if (i % 2 == 1) cancel();
        Yield();
      }
    };
    WaitGroup wg;
    wg.Add(kFibers);
    for (int f = 0; f < kFibers; ++f) {
      Go([&, f] {
        work(f % 2 == 0);
        wg.Done();
      });
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) threads.emplace_back(work, t == 0);
    Await([&] { return started.load() == kFibers + kThreads; });
    cancel_parent();
    wg.Wait();
    for (auto& t : threads) t.join();
    EXPECT_EQ(woken.load(), kFibers / 2 + 1);
    EXPECT_EQ(NumChildrenForTest(parent), 0u);
  }
}

}  // namespace
}  // namespace gort
