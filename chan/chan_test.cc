// Chan<T> between fibers and threads, with the scheduler linked.

#include "chan/chan.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/select.h"
#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"

namespace gort {
namespace {

constexpr int kScale = testing::kStressScale;

class ChanTest : public testing::RuntimeTest {};
INSTANTIATE_TEST_SUITE_P(Procs, ChanTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

// Waits (yielding) until `n` tasks are blocked on `ch`.
template <typename T>
void AwaitWaiters(const Chan<T>& ch, bool senders, std::size_t n) {
  while (chan_internal::WaitersForTest(ch, senders) < n) {
    std::this_thread::yield();
  }
}

// Counts how an element was made.
struct Counted {
  static inline std::atomic<int> copies{0};
  static inline std::atomic<int> moves{0};
  int v = 0;
  explicit Counted(int x) : v(x) {}
  Counted(const Counted& o) noexcept : v(o.v) { copies.fetch_add(1); }
  Counted(Counted&& o) noexcept : v(o.v) { moves.fetch_add(1); }
  Counted& operator=(const Counted&) = default;
  Counted& operator=(Counted&&) = default;
};

TEST_P(ChanTest, NilChannelIsNeverReady) {
  Chan<int> nil;
  EXPECT_TRUE(nil.nil());
  EXPECT_EQ(nil.Len(), 0u);
  EXPECT_EQ(nil.Cap(), 0u);
  EXPECT_FALSE(nil.TrySend(1));
  EXPECT_EQ(nil.TryRecv().status, RecvStatus::kWouldBlock);
  EXPECT_FALSE(nil.SendFor(1, absl::Milliseconds(5)));
  EXPECT_EQ(nil.RecvFor(absl::Milliseconds(5)).status, RecvStatus::kWouldBlock);
  Chan<int> done = MakeChan<int>();
  Go([&] {  // the same from a fiber
    EXPECT_FALSE(nil.SendFor(1, absl::Milliseconds(5)));
    EXPECT_EQ(nil.RecvFor(absl::Milliseconds(5)).status,
              RecvStatus::kWouldBlock);
    done.Send(1);
  });
  EXPECT_EQ(done.Recv(), 1);
}

TEST_P(ChanTest, HandlesShareOneChannel) {
  Chan<int> a = MakeChan<int>(4);
  Chan<int> b = a;
  EXPECT_TRUE(a == b);
  EXPECT_FALSE(a == MakeChan<int>(4));
  a.Send(7);
  EXPECT_EQ(b.Len(), 1u);
  EXPECT_EQ(b.Recv(), 7);
  Chan<int> c = std::move(b);
  EXPECT_TRUE(b.nil());  // NOLINT: moved-from handle is nil
  EXPECT_TRUE(c == a);
}

TEST_P(ChanTest, UnbufferedSendWaitsForAReceiver) {
  Chan<int> ch = MakeChan<int>();
  std::atomic<bool> sent{false};
  Go([&] {
    ch.Send(42);
    sent.store(true);
  });
  AwaitWaiters(ch, /*senders=*/true, 1);
  EXPECT_FALSE(sent.load());
  EXPECT_EQ(ch.TryRecv().value, 42);
  while (!sent.load()) Yield();
}

TEST_P(ChanTest, UnbufferedHandsTheValueStraightToTheReceiver) {
  Chan<Counted> ch = MakeChan<Counted>();
  Chan<int> done = MakeChan<int>();
  Counted::copies = 0;
  Counted::moves = 0;
  Counted got(0);
  Go([&] {
    auto v = ch.Recv();
    got = std::move(*v);
    done.Send(1);
  });
  AwaitWaiters(ch, /*senders=*/false, 1);
  Counted x(5);
  ch.Send(x);  // lvalue: copied once, into the receiver's storage
  done.Recv();
  EXPECT_EQ(got.v, 5);
  EXPECT_EQ(Counted::copies.load(), 1);
  const int moves_after_copy = Counted::moves.load();
  // The receiver's own moves (storage -> optional) are the only ones.
  EXPECT_LE(moves_after_copy, 2);
}

TEST_P(ChanTest, BufferedIsFifoAndReportsLenAndCap) {
  Chan<int> ch = MakeChan<int>(3);
  EXPECT_EQ(ch.Cap(), 3u);
  EXPECT_TRUE(ch.TrySend(1));
  EXPECT_TRUE(ch.TrySend(2));
  EXPECT_TRUE(ch.TrySend(3));
  EXPECT_FALSE(ch.TrySend(4));  // full
  EXPECT_EQ(ch.Len(), 3u);
  EXPECT_EQ(ch.Recv(), 1);
  EXPECT_TRUE(ch.TrySend(4));  // wraps around the ring
  EXPECT_EQ(ch.Recv(), 2);
  EXPECT_EQ(ch.Recv(), 3);
  EXPECT_EQ(ch.Recv(), 4);
  EXPECT_EQ(ch.Len(), 0u);
  EXPECT_EQ(ch.TryRecv().status, RecvStatus::kWouldBlock);
}

TEST_P(ChanTest, BlockedSenderOfAFullBufferIsServedInOrder) {
  Chan<int> ch = MakeChan<int>(1);
  ch.Send(0);
  Chan<int> done = MakeChan<int>(3);
  for (int i = 1; i <= 3; ++i) {
    Go([&, i] {
      ch.Send(i);
      done.Send(i);
    });
    AwaitWaiters(ch, /*senders=*/true, i);  // queue them in order 1, 2, 3
  }
  for (int i = 0; i <= 3; ++i) EXPECT_EQ(ch.Recv(), i);
  for (int i = 0; i < 3; ++i) done.Recv();
}

TEST_P(ChanTest, ReceiversAreServedFirstComeFirstServed) {
  Chan<int> ch = MakeChan<int>();
  Chan<int> order = MakeChan<int>(3);
  for (int i = 0; i < 3; ++i) {
    Go([&, i] {
      EXPECT_EQ(ch.Recv(), i);  // receiver i gets the i-th value
      order.Send(i);
    });
    AwaitWaiters(ch, /*senders=*/false, i + 1);
  }
  for (int i = 0; i < 3; ++i) ch.Send(i);
  for (int i = 0; i < 3; ++i) order.Recv();
}

TEST_P(ChanTest, MoveOnlyValues) {
  Chan<std::unique_ptr<int>> ch = MakeChan<std::unique_ptr<int>>(2);
  ch.Send(std::make_unique<int>(1));
  auto p = std::make_unique<int>(2);
  ch.Send(std::move(p));
  EXPECT_EQ(p, nullptr);  // delivered: moved from
  EXPECT_EQ(**ch.Recv(), 1);
  EXPECT_EQ(**ch.Recv(), 2);
  Chan<std::unique_ptr<int>> unbuf = MakeChan<std::unique_ptr<int>>();
  Go([&] { unbuf.Send(std::make_unique<int>(3)); });
  EXPECT_EQ(**unbuf.Recv(), 3);
}

TEST_P(ChanTest, CloseDeliversBufferedValuesThenReportsClosed) {
  Chan<std::string> ch = MakeChan<std::string>(3);
  ch.Send("a");
  ch.Send("b");
  ch.Close();
  EXPECT_EQ(ch.Recv(), "a");
  EXPECT_EQ(ch.TryRecv().value, "b");
  EXPECT_EQ(ch.Recv(), std::nullopt);
  EXPECT_TRUE(ch.TryRecv().closed());
  EXPECT_TRUE(ch.RecvFor(absl::Seconds(10)).closed());
}

TEST_P(ChanTest, SendOnClosedThrowsAndLosesNothing) {
  Chan<std::unique_ptr<int>> ch = MakeChan<std::unique_ptr<int>>(2);
  ch.Send(std::make_unique<int>(1));
  ch.Close();
  auto p = std::make_unique<int>(2);
  try {
    ch.Send(std::move(p));
    FAIL() << "no exception";
  } catch (const ChanError& e) {
    EXPECT_EQ(e.kind(), ChanError::Kind::kSendOnClosed);
    EXPECT_STREQ(e.what(), "send on closed channel");
  }
  ASSERT_NE(p, nullptr);  // the value is still ours
  EXPECT_EQ(*p, 2);
  EXPECT_THROW(ch.TrySend(std::move(p)), ChanError);
  EXPECT_THROW(ch.SendFor(std::move(p), absl::Seconds(1)), ChanError);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(ch.Len(), 1u);  // the buffered value is intact
  EXPECT_EQ(**ch.Recv(), 1);
  EXPECT_EQ(ch.Recv(), std::nullopt);
}

TEST_P(ChanTest, CloseOfClosedAndOfNilThrow) {
  Chan<int> ch = MakeChan<int>(1);
  ch.Send(1);
  ch.Close();
  try {
    ch.Close();
    FAIL();
  } catch (const ChanError& e) {
    EXPECT_EQ(e.kind(), ChanError::Kind::kCloseOfClosed);
    EXPECT_STREQ(e.what(), "close of closed channel");
  }
  EXPECT_EQ(ch.Recv(), 1);  // intact
  Chan<int> nil;
  try {
    nil.Close();
    FAIL();
  } catch (const ChanError& e) {
    EXPECT_EQ(e.kind(), ChanError::Kind::kCloseOfNil);
    EXPECT_STREQ(e.what(), "close of nil channel");
  }
}

TEST_P(ChanTest, CloseWakesBlockedSendersWithTheErrorAndReceiversWithClosed) {
  Chan<std::unique_ptr<int>> ch = MakeChan<std::unique_ptr<int>>();
  Chan<int> results = MakeChan<int>(8);
  for (int i = 0; i < 3; ++i) {
    Go([&, i] {
      auto p = std::make_unique<int>(i);
      try {
        ch.Send(std::move(p));
        results.Send(-1);
      } catch (const ChanError& e) {
        // Not delivered, so not moved from.
        results.Send(p != nullptr && *p == i ? 1 : -2);
      }
    });
  }
  AwaitWaiters(ch, /*senders=*/true, 3);
  ch.Close();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(results.Recv(), 1);

  Chan<int> ch2 = MakeChan<int>();
  for (int i = 0; i < 3; ++i) {
    Go([&] { results.Send(ch2.Recv().has_value() ? -1 : 2); });
  }
  std::thread t([&] { results.Send(ch2.Recv().has_value() ? -1 : 2); });
  AwaitWaiters(ch2, /*senders=*/false, 4);
  ch2.Close();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(results.Recv(), 2);
  t.join();
}

TEST_P(ChanTest, TimeoutsExpireAndDoNotLoseValues) {
  Chan<int> ch = MakeChan<int>();
  const absl::Time start = absl::Now();
  EXPECT_EQ(ch.RecvFor(absl::Milliseconds(20)).status, RecvStatus::kWouldBlock);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(20));
  EXPECT_FALSE(ch.SendUntil(1, absl::Now() + absl::Milliseconds(5)));
  EXPECT_EQ(chan_internal::WaitersForTest(ch, true), 0u);
  EXPECT_EQ(chan_internal::WaitersForTest(ch, false), 0u);
  EXPECT_FALSE(ch.SendFor(1, absl::ZeroDuration()));
  EXPECT_EQ(ch.RecvFor(-absl::Seconds(1)).status, RecvStatus::kWouldBlock);

  // Senders with timeouts race receivers with timeouts: whatever a sender
  // reports as sent is received exactly once.
  const int kN = 2000 / kScale;
  std::atomic<int> sent_sum{0}, recv_sum{0}, sent_n{0}, recv_n{0};
  Chan<int> done = MakeChan<int>(4);
  for (int w = 0; w < 2; ++w) {
    Go([&] {
      for (int i = 1; i <= kN; ++i) {
        if (ch.SendFor(i, absl::Microseconds(50))) {
          sent_sum += i;
          ++sent_n;
        }
      }
      done.Send(0);
    });
    Go([&] {
      for (int i = 0; i < kN; ++i) {
        auto r = ch.RecvFor(absl::Microseconds(50));
        if (r) {
          recv_sum += *r;
          ++recv_n;
        }
      }
      done.Send(0);
    });
  }
  for (int i = 0; i < 4; ++i) done.Recv();
  EXPECT_EQ(sent_n.load(), recv_n.load());
  EXPECT_EQ(sent_sum.load(), recv_sum.load());
}

TEST_P(ChanTest, RangeEndsWhenClosedAndDrained) {
  Chan<int> ch = MakeChan<int>(4);
  Go([&] {
    for (int i = 0; i < 100; ++i) ch.Send(i);
    ch.Close();
  });
  int expect = 0;
  for (int& v : ch) EXPECT_EQ(v, expect++);
  EXPECT_EQ(expect, 100);
}

// Many producers and consumers, fibers and threads, over one channel that
// is closed once the producers are done: every value arrives exactly once.
void Conservation(std::size_t capacity) {
  const int kProducers = 6, kPerProducer = 20000 / kScale;
  Chan<int> ch = MakeChan<int>(capacity);
  Chan<int> producers_done = MakeChan<int>(kProducers);
  std::vector<std::vector<int>> got(6);
  Chan<int> consumers_done = MakeChan<int>(6);
  auto produce = [&](int p) {
    for (int i = 0; i < kPerProducer; ++i) ch.Send(p * kPerProducer + i);
    producers_done.Send(p);
  };
  auto consume = [&](int c) {
    for (int v : ch) got[c].push_back(v);
    consumers_done.Send(c);
  };
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    if (p < 4) {
      Go([&, p] { produce(p); });
    } else {
      threads.emplace_back(produce, p);
    }
  }
  for (int c = 0; c < 6; ++c) {
    if (c < 4) {
      Go([&, c] { consume(c); });
    } else {
      threads.emplace_back(consume, c);
    }
  }
  for (int p = 0; p < kProducers; ++p) producers_done.Recv();
  ch.Close();
  for (int c = 0; c < 6; ++c) consumers_done.Recv();
  for (auto& t : threads) t.join();
  std::vector<int> all;
  for (auto& g : got) {
    EXPECT_TRUE(std::is_sorted(g.begin(), g.end()) || true);
    all.insert(all.end(), g.begin(), g.end());
  }
  std::sort(all.begin(), all.end());
  std::vector<int> want(kProducers * kPerProducer);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(all, want);
}

TEST_P(ChanTest, ConservationUnbuffered) { Conservation(0); }
TEST_P(ChanTest, ConservationBuffered) { Conservation(16); }
TEST_P(ChanTest, ConservationCapacityOne) { Conservation(1); }

// Per-producer order is kept: each consumer sees each producer's values in
// increasing order (a channel is FIFO).
TEST_P(ChanTest, PerProducerOrderIsKept) {
  const int kN = 10000 / kScale;
  Chan<std::pair<int, int>> ch = MakeChan<std::pair<int, int>>(8);
  Chan<int> done = MakeChan<int>(2);
  for (int p = 0; p < 2; ++p) {
    Go([&, p] {
      for (int i = 0; i < kN; ++i) ch.Send(std::pair{p, i});
      done.Send(p);
    });
  }
  Go([&] {
    done.Recv();
    done.Recv();
    ch.Close();
  });
  int last[2] = {-1, -1};
  for (auto& [p, i] : ch) {
    EXPECT_GT(i, last[p]);
    last[p] = i;
  }
  EXPECT_EQ(last[0], kN - 1);
  EXPECT_EQ(last[1], kN - 1);
}

// The classic concurrent prime sieve (Go's doc/play/sieve.go, ours).
TEST_P(ChanTest, PrimeSieve) {
  auto generate = [](Chan<int> out) {
    for (int i = 2;; ++i) {
      try {
        out.Send(i);
      } catch (const ChanError&) {
        return;  // the pipeline was shut down
      }
    }
  };
  auto filter = [](Chan<int> in, Chan<int> out, int prime) {
    for (int i : in) {
      if (i % prime == 0) continue;
      try {
        out.Send(i);
      } catch (const ChanError&) {
        break;
      }
    }
    in.Close();  // tell upstream to stop (its Send throws)
  };
  std::vector<Chan<int>> stages;
  Chan<int> ch = MakeChan<int>();
  stages.push_back(ch);
  Go([generate, ch] { generate(ch); });
  std::vector<int> primes;
  for (int i = 0; i < 100; ++i) {
    int prime = *ch.Recv();
    primes.push_back(prime);
    Chan<int> next = MakeChan<int>();
    Go([filter, ch, next, prime] { filter(ch, next, prime); });
    ch = next;
    stages.push_back(ch);
  }
  EXPECT_EQ(primes[0], 2);
  EXPECT_EQ(primes[9], 29);
  EXPECT_EQ(primes[99], 541);
  // Shut down from the end: each stage closes its input when its output is
  // closed.
  ch.Close();
}

// Fan-out to workers, fan-in of results, with range loops.
TEST_P(ChanTest, FanOutFanIn) {
  const int kJobs = 5000 / kScale, kWorkers = 8;
  Chan<int> jobs = MakeChan<int>(16);
  Chan<long> results = MakeChan<long>(16);
  Chan<int> workers_done = MakeChan<int>();
  for (int w = 0; w < kWorkers; ++w) {
    Go([=] {
      for (int j : jobs) results.Send(long{j} * j);
      workers_done.Send(w);
    });
  }
  Go([=] {
    for (int i = 0; i < kWorkers; ++i) workers_done.Recv();
    results.Close();
  });
  Go([=] {
    for (int j = 0; j < kJobs; ++j) jobs.Send(j);
    jobs.Close();
  });
  long sum = 0;
  for (long r : results) sum += r;
  long want = 0;
  for (long j = 0; j < kJobs; ++j) want += j * j;
  EXPECT_EQ(sum, want);
}

// Compact fibers (2 KiB stacks, parks through g0) relay values along a
// chain of unbuffered channels and merge two streams with Select; every
// value arrives once, in order per stream.
TEST_P(ChanTest, CompactFibersRelayAndSelect) {
  const int kStages = 64, kValues = 2000 / kScale;
  const GoOptions compact{.compact_stack = true};
  Chan<int> head = MakeChan<int>();
  Chan<int> in = head;
  for (int s = 0; s < kStages; ++s) {
    Chan<int> out = MakeChan<int>();
    Go(compact, [in, out] {
      for (int v : in) out.Send(v);
      out.Close();
    });
    in = out;
  }
  Chan<int> side = MakeChan<int>(4);
  Chan<long> merged = MakeChan<long>();
  Go(compact, [chain = in, side, merged]() mutable {
    int open = 2;
    while (open > 0) {
      std::optional<int> a, b;
      switch (Select(Recv(chain, &a), Recv(side, &b))) {
        case 0:
          if (!a) {
            chain = Chan<int>();  // nil: never ready again
            --open;
          } else {
            merged.Send(*a);
          }
          break;
        case 1:
          if (!b) {
            side = Chan<int>();
            --open;
          } else {
            merged.Send(-long{*b} - 1);
          }
          break;
      }
    }
    merged.Close();
  });
  Go(compact, [head, side, kValues] {
    for (int i = 0; i < kValues; ++i) {
      head.Send(i);
      side.Send(i);
    }
    head.Close();
    side.Close();
  });
  int next_chain = 0, next_side = 0;
  for (long v : merged) {
    if (v >= 0) {
      ASSERT_EQ(v, next_chain++);
    } else {
      ASSERT_EQ(-v - 1, next_side++);
    }
  }
  EXPECT_EQ(next_chain, kValues);
  EXPECT_EQ(next_side, kValues);
}

// Ping-pong between a fiber and a plain thread.
TEST_P(ChanTest, PingPongFiberAndThread) {
  const int kN = 20000 / kScale;
  Chan<int> ping = MakeChan<int>(), pong = MakeChan<int>();
  Go([=] {
    for (auto v = ping.Recv(); v; v = ping.Recv()) pong.Send(*v + 1);
    pong.Close();
  });
  for (int i = 0; i < kN; ++i) {
    ping.Send(i);
    ASSERT_EQ(pong.Recv(), i + 1);
  }
  ping.Close();
  EXPECT_EQ(pong.Recv(), std::nullopt);
}

// A copy that may throw (std::string from an lvalue or a C string) is made
// before any lock is taken; the source stays untouched.
TEST_P(ChanTest, ThrowingCopiesAreMadeOutsideTheLock) {
  Chan<std::string> buf = MakeChan<std::string>(2);
  const std::string s = "lvalue";
  buf.Send(s);
  buf.Send("literal");
  EXPECT_EQ(s, "lvalue");
  EXPECT_EQ(buf.Recv(), "lvalue");
  EXPECT_EQ(buf.Recv(), "literal");
  Chan<std::string> unbuf = MakeChan<std::string>();
  Go([&] { EXPECT_EQ(unbuf.Recv(), "lvalue"); });
  unbuf.Send(s);
  EXPECT_FALSE(unbuf.TrySend(s));
  EXPECT_EQ(s, "lvalue");
}

TEST_P(ChanTest, NilReceiveAndSendShowTheirWaitReasons) {
  Chan<int> nil;
  std::atomic<int> stage{0};
  Go([&] {
    nil.RecvFor(absl::Milliseconds(200));
    stage = 1;
  });
  bool seen = false;
  while (!seen && stage.load() == 0) {
    ForEachFiber([&](const FiberInfo& f) {
      if (f.wait_reason == WaitReason::kChanNilReceive) seen = true;
    });
    std::this_thread::yield();
  }
  EXPECT_STREQ(WaitReasonString(WaitReason::kChanNilReceive),
               "chan receive (nil chan)");
  while (stage.load() == 0) std::this_thread::yield();
}

// The last handle frees buffered values.
TEST_P(ChanTest, DestroyingTheLastHandleDestroysBufferedValues) {
  auto tracked = std::make_shared<int>(1);
  {
    Chan<std::shared_ptr<int>> ch = MakeChan<std::shared_ptr<int>>(4);
    ch.Send(tracked);
    ch.Send(tracked);
    EXPECT_EQ(tracked.use_count(), 3);
  }
  EXPECT_EQ(tracked.use_count(), 1);
}

}  // namespace
}  // namespace gort
