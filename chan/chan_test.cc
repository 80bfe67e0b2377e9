// Chan<T> between fibers and threads, with the scheduler linked.

#include "chan/chan.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
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
  // The receiver's own move (its storage -> the optional Recv returns) is
  // the only one; a buffer in between would add one.
  EXPECT_EQ(Counted::moves.load(), 1);
}

// The other direct hand-off: the sender is the one already waiting, and
// the receiver constructs the value from the sender's own object.
TEST_P(ChanTest, UnbufferedHandsTheValueStraightFromAWaitingSender) {
  Chan<Counted> ch = MakeChan<Counted>();
  Counted::copies = 0;
  Counted::moves = 0;
  Go([&] {
    Counted x(5);
    ch.Send(x);  // lvalue: copied once, when a receiver takes it
  });
  AwaitWaiters(ch, /*senders=*/true, 1);
  EXPECT_EQ(Counted::copies.load(), 0);  // nothing made while it waits
  EXPECT_EQ(Counted::moves.load(), 0);
  std::optional<Counted> v = ch.Recv();
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->v, 5);
  // Copied from the sender's object into our storage, then moved once into
  // the optional: no buffer in between.
  EXPECT_EQ(Counted::copies.load(), 1);
  EXPECT_EQ(Counted::moves.load(), 1);

  Counted::copies = 0;
  Counted::moves = 0;
  Go([&] { ch.Send(Counted(6)); });  // rvalue: moved from where it is
  AwaitWaiters(ch, /*senders=*/true, 1);
  EXPECT_EQ(Counted::moves.load(), 0);
  RecvResult<Counted> r = ch.TryRecv();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->v, 6);
  EXPECT_EQ(Counted::copies.load(), 0);
  EXPECT_EQ(Counted::moves.load(), 2);  // sender's object -> ours -> result
}

// Several senders blocked on an unbuffered channel (fibers and a thread)
// are served in the order they blocked.
TEST_P(ChanTest, BlockedUnbufferedSendersAreServedInOrder) {
  constexpr int kSenders = 4;
  Chan<int> ch = MakeChan<int>();
  Chan<int> done = MakeChan<int>(kSenders);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSenders; ++i) {
    auto send = [&, i] {
      ch.Send(i);
      done.Send(i);
    };
    if (i == 2) {
      threads.emplace_back(send);
    } else {
      Go(send);
    }
    AwaitWaiters(ch, /*senders=*/true, i + 1);  // queue them in order
  }
  for (int i = 0; i < kSenders; ++i) EXPECT_EQ(ch.Recv(), i);
  for (int i = 0; i < kSenders; ++i) done.Recv();
  for (auto& t : threads) t.join();
  EXPECT_EQ(chan_internal::WaitersForTest(ch, /*senders=*/true), 0u);
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

TEST_P(ChanTest, RecvUntilGetsAValueTimesOutAndSeesClose) {
  // A value that arrives before the deadline (a fiber parked in RecvUntil).
  Chan<int> ch = MakeChan<int>();
  Chan<int> result = MakeChan<int>(1);
  Go([&] {
    RecvResult<int> r = ch.RecvUntil(absl::Now() + absl::Hours(1));
    result.Send(r.ok() ? *r : -1);
  });
  AwaitWaiters(ch, /*senders=*/false, 1);
  ch.Send(7);
  EXPECT_EQ(result.Recv(), 7);

  // The deadline passes (a thread): nothing, not before the deadline, and
  // the waiter is gone from the queue.
  const absl::Time deadline = absl::Now() + absl::Milliseconds(10);
  EXPECT_EQ(ch.RecvUntil(deadline).status, RecvStatus::kWouldBlock);
  EXPECT_GE(absl::Now(), deadline);
  EXPECT_EQ(chan_internal::WaitersForTest(ch, /*senders=*/false), 0u);
  // A deadline already passed never blocks...
  EXPECT_EQ(ch.RecvUntil(absl::Now() - absl::Seconds(1)).status,
            RecvStatus::kWouldBlock);
  EXPECT_EQ(ch.RecvUntil(absl::InfinitePast()).status, RecvStatus::kWouldBlock);
  // ...but still takes what is there.
  Chan<int> buf = MakeChan<int>(2);
  buf.Send(1);
  buf.Send(2);
  EXPECT_EQ(buf.RecvUntil(absl::InfinitePast()).value, 1);

  // Closed: buffered values first, then "closed" at once.
  buf.Close();
  EXPECT_EQ(buf.RecvUntil(absl::Now() + absl::Hours(1)).value, 2);
  EXPECT_TRUE(buf.RecvUntil(absl::Now() + absl::Hours(1)).closed());
  EXPECT_TRUE(buf.RecvUntil(absl::InfiniteFuture()).closed());

  // Closed while waiting: a parked RecvUntil wakes with "closed".
  Chan<int> ch2 = MakeChan<int>();
  Go([&] {
    result.Send(ch2.RecvUntil(absl::Now() + absl::Hours(1)).closed() ? 1 : 0);
  });
  AwaitWaiters(ch2, /*senders=*/false, 1);
  ch2.Close();
  EXPECT_EQ(result.Recv(), 1);
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
  // Each consumer sees each producer's values in the order they were sent
  // (a producer's sends complete one after the other, the channel is FIFO,
  // and a consumer's receives happen one after the other). Across producers
  // the values interleave, so a consumer's list as a whole is not sorted.
  int out_of_order = 0;
  for (auto& g : got) {
    std::vector<int> last(kProducers, -1);
    for (int v : g) {
      const int p = v / kPerProducer;
      if (v <= last[p]) ++out_of_order;
      last[p] = v;
    }
    all.insert(all.end(), g.begin(), g.end());
  }
  EXPECT_EQ(out_of_order, 0);
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

// An element whose copy and move constructors are not noexcept, and can be
// made to throw: `moves_until_throw` = n > 0 makes the n-th move from now
// throw; `copies_throw` makes every copy throw.
struct MayThrow {
  static inline std::atomic<int> moves_until_throw{0};
  static inline std::atomic<bool> copies_throw{false};
  int v = 0;
  explicit MayThrow(int x) : v(x) {}
  MayThrow(const MayThrow& o) : v(o.v) {
    if (copies_throw.load()) throw std::runtime_error("copy failed");
  }
  MayThrow(MayThrow&& o) : v(o.v) {
    if (moves_until_throw.load() > 0 && moves_until_throw.fetch_sub(1) == 1) {
      throw std::runtime_error("move failed");
    }
    o.v = -1;  // moved from
  }
  MayThrow& operator=(const MayThrow&) = default;
  MayThrow& operator=(MayThrow&& o) {
    v = o.v;
    o.v = -1;
    return *this;
  }
};
static_assert(!std::is_nothrow_move_constructible_v<MayThrow>);
static_assert(!std::is_nothrow_move_constructible_v<std::deque<int>>,
              "then std::deque no longer tests a throwing-move type");

// Chan<T> takes any movable T: types whose move constructor is not
// noexcept work in every operation, buffered and unbuffered, and in select.
TEST_P(ChanTest, ElementsWhoseMovesMayThrowWork) {
  Chan<MayThrow> buf = MakeChan<MayThrow>(2);
  buf.Send(MayThrow(1));  // rvalue
  MayThrow x(2);
  buf.Send(x);  // lvalue: copied first, before anything is committed
  EXPECT_EQ(x.v, 2);
  EXPECT_FALSE(buf.TrySend(MayThrow(3)));  // full
  EXPECT_EQ(buf.Recv()->v, 1);
  EXPECT_EQ(buf.TryRecv()->v, 2);
  EXPECT_EQ(buf.RecvFor(absl::Milliseconds(1)).status, RecvStatus::kWouldBlock);

  // A send that does not happen leaves the caller's value untouched (not
  // moved from), as for any T.
  MayThrow y(4);
  EXPECT_TRUE(buf.TrySend(MayThrow(0)));
  EXPECT_TRUE(buf.TrySend(MayThrow(0)));
  EXPECT_FALSE(buf.SendFor(std::move(y), absl::Milliseconds(1)));
  EXPECT_EQ(y.v, 4);
  buf.Close();
  EXPECT_THROW(buf.Send(std::move(y)), ChanError);
  EXPECT_EQ(y.v, 4);
  int drained = 0;
  for (MayThrow& m : buf) drained += m.v == 0;
  EXPECT_EQ(drained, 2);

  // Unbuffered, receiver waiting and sender waiting.
  Chan<MayThrow> unbuf = MakeChan<MayThrow>();
  Chan<int> got = MakeChan<int>(2);
  Go([&] { got.Send(unbuf.Recv()->v); });
  AwaitWaiters(unbuf, /*senders=*/false, 1);
  unbuf.Send(MayThrow(5));
  EXPECT_EQ(got.Recv(), 5);
  Go([&] { unbuf.Send(MayThrow(6)); });
  AwaitWaiters(unbuf, /*senders=*/true, 1);
  EXPECT_EQ(unbuf.Recv()->v, 6);

  // Select: send and receive cases, into a T and into an optional.
  Chan<MayThrow> one = MakeChan<MayThrow>(1);
  MayThrow z(7);
  EXPECT_EQ(Select(Send(one, std::move(z)), Default()), 0);
  EXPECT_EQ(z.v, -1);  // delivered: moved from
  MayThrow out(0);
  bool ok = false;
  EXPECT_EQ(Select(Recv(unbuf), Recv(one, &out, &ok)), 1);
  EXPECT_TRUE(ok);
  EXPECT_EQ(out.v, 7);
  const MayThrow w(8);
  EXPECT_EQ(Select(Send(one, w)), 0);  // a copy, made up front
  std::optional<MayThrow> opt;
  EXPECT_EQ(Select(Recv(one, &opt)), 0);
  EXPECT_EQ(opt->v, 8);
  Go([&] { EXPECT_EQ(Select(Send(unbuf, MayThrow(9))), 0); });
  EXPECT_EQ(Select(Recv(unbuf, &opt)), 0);
  EXPECT_EQ(opt->v, 9);

  // std::deque's move constructor allocates and is not noexcept.
  Chan<std::deque<int>> deques = MakeChan<std::deque<int>>(1);
  deques.Send(std::deque<int>{1, 2, 3});
  EXPECT_EQ(deques.Recv(), (std::deque<int>{1, 2, 3}));
  Chan<std::deque<int>> deques0 = MakeChan<std::deque<int>>();
  Go([&] { deques0.Send(std::deque<int>(100, 4)); });
  std::deque<int> d;
  EXPECT_EQ(Select(Recv(deques0, &d)), 0);
  EXPECT_EQ(d, std::deque<int>(100, 4));
  Go([&] {
    for (int i = 0; i < 3; ++i) deques0.Send(std::deque<int>(i, i));
    deques0.Close();
  });
  int n = 0;
  for (std::deque<int>& e : deques0) {
    EXPECT_EQ(e, std::deque<int>(n, n));
    ++n;
  }
  EXPECT_EQ(n, 3);
}

// A copy that throws does so before anything is committed: the exception
// reaches the caller, the channel is unchanged and the source intact.
TEST_P(ChanTest, ACopyThatThrowsReachesTheCallerAndChangesNothing) {
  Chan<MayThrow> buf = MakeChan<MayThrow>(1);
  const MayThrow x(1);
  MayThrow::copies_throw = true;
  EXPECT_THROW(buf.Send(x), std::runtime_error);
  EXPECT_THROW(Select(Send(buf, x), Default()), std::runtime_error);
  MayThrow::copies_throw = false;
  EXPECT_EQ(x.v, 1);
  EXPECT_EQ(buf.Len(), 0u);
  buf.Send(x);
  EXPECT_EQ(buf.Recv()->v, 1);
}

// A move that throws once the channel has taken the value would lose it (it
// cannot be given back): a fatal error that says where it happened.
TEST(ChanDeathTest, AMoveThatThrowsInsideTheChannelIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Into the buffer, under the channel's lock.
  EXPECT_DEATH(
      {
        Chan<MayThrow> ch = MakeChan<MayThrow>(1);
        MayThrow::moves_until_throw = 1;
        ch.Send(MayThrow(1));
      },
      "fatal: gort::Chan: an element's move threw while delivering a sent "
      "value .to the buffer or a receiver.: move failed");
  // Straight to a parked receiver (a hand-off).
  EXPECT_DEATH(
      {
        Chan<MayThrow> ch = MakeChan<MayThrow>();
        std::thread receiver([&] { ch.Recv(); });
        AwaitWaiters(ch, /*senders=*/false, 1);
        MayThrow::moves_until_throw = 1;
        ch.Send(MayThrow(1));
        receiver.join();
      },
      "fatal: gort::Chan: an element's move threw while delivering a sent "
      "value");
  // From a parked sender, by the receiver that takes its value.
  EXPECT_DEATH(
      {
        Chan<MayThrow> ch = MakeChan<MayThrow>();
        std::thread sender([&] { ch.Send(MayThrow(1)); });
        AwaitWaiters(ch, /*senders=*/true, 1);
        MayThrow::moves_until_throw = 1;
        ch.Recv();
        sender.join();
      },
      "fatal: gort::Chan: an element's move threw while delivering a sent "
      "value");
  // Out of the buffer.
  EXPECT_DEATH(
      {
        Chan<MayThrow> ch = MakeChan<MayThrow>(1);
        ch.Send(MayThrow(1));
        MayThrow::moves_until_throw = 1;
        ch.Recv();
      },
      "fatal: gort::Chan: an element's move threw while taking a value out "
      "of the buffer: move failed");
  // Out to the receiving caller (the second move of a buffered receive).
  EXPECT_DEATH(
      {
        Chan<MayThrow> ch = MakeChan<MayThrow>(1);
        ch.Send(MayThrow(1));
        MayThrow::moves_until_throw = 2;
        ch.TryRecv();
      },
      "fatal: gort::Chan: an element's move threw while handing a received "
      "value to the receiver: move failed");
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
