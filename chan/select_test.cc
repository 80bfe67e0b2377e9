// Select, After, NewTimer, AfterFunc and Ticker, with the scheduler linked.

#include "chan/select.h"

#include <algorithm>
#include <atomic>
#include <iterator>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/chan.h"
#include "chan/time.h"
#include "gtest/gtest.h"
#include "sched/sched.h"
#include "sched/testing/runtime_test.h"

namespace gort {
namespace {

constexpr int kScale = testing::kStressScale;

class SelectTest : public testing::RuntimeTest {};
INSTANTIATE_TEST_SUITE_P(Procs, SelectTest, ::testing::Values(1, 2, 4),
                         testing::ProcsName);

template <typename T>
void AwaitWaiters(const Chan<T>& ch, bool senders, std::size_t n) {
  while (chan_internal::WaitersForTest(ch, senders) < n) {
    std::this_thread::yield();
  }
}

TEST_P(SelectTest, DefaultFiresWhenNothingIsReady) {
  Chan<int> a = MakeChan<int>(), b = MakeChan<int>(1);
  int v = -1;
  EXPECT_EQ(Select(Recv(a, &v), Recv(b), Default()), 2);
  EXPECT_EQ(Select(Default(), Recv(a)), 0);  // Default's own position
  b.Send(1);                                 // b now full
  EXPECT_EQ(Select(Send(b, 2), Default()), 1);
  EXPECT_EQ(v, -1);
  EXPECT_EQ(Select(Default()), 0);
}

TEST_P(SelectTest, ReadyReceiveDeliversValueAndOk) {
  Chan<int> a = MakeChan<int>(1), b = MakeChan<int>();
  a.Send(7);
  int v = 0;
  bool ok = false;
  EXPECT_EQ(Select(Recv(b), Recv(a, &v, &ok)), 1);
  EXPECT_EQ(v, 7);
  EXPECT_TRUE(ok);
  a.Send(8);
  std::optional<int> opt;
  EXPECT_EQ(Select(Recv(a, &opt), Default()), 0);
  EXPECT_EQ(opt, 8);
}

TEST_P(SelectTest, ClosedChannelReceiveIsReadyWithZeroAndNotOk) {
  Chan<int> a = MakeChan<int>(), b = MakeChan<int>();
  b.Close();
  int v = 5;
  bool ok = true;
  EXPECT_EQ(Select(Recv(a), Recv(b, &v, &ok)), 1);
  EXPECT_EQ(v, 0);  // Go's zero value
  EXPECT_FALSE(ok);
  std::optional<int> opt = 3;
  EXPECT_EQ(Select(Recv(b, &opt)), 0);
  EXPECT_EQ(opt, std::nullopt);
}

TEST_P(SelectTest, NilChannelCasesNeverFire) {
  Chan<int> nil;
  int v;
  EXPECT_EQ(Select(Recv(nil, &v), Send(nil, 1), Default()), 2);
  // Blocking: only the timer can fire.
  EXPECT_EQ(Select(Recv(nil), Send(nil, 1), Recv(After(absl::Milliseconds(5)))),
            2);
}

TEST_P(SelectTest, SendCaseDeliversToAWaitingReceiver) {
  Chan<int> ch = MakeChan<int>();
  Chan<int> got = MakeChan<int>(1);
  Go([&] { got.Send(*ch.Recv()); });
  AwaitWaiters(ch, /*senders=*/false, 1);
  EXPECT_EQ(Select(Send(ch, 11), Default()), 0);
  EXPECT_EQ(got.Recv(), 11);
}

TEST_P(SelectTest, SendCaseOnClosedChannelThrowsAndKeepsTheValue) {
  Chan<std::unique_ptr<int>> ch = MakeChan<std::unique_ptr<int>>(1);
  ch.Close();
  auto p = std::make_unique<int>(1);
  EXPECT_THROW(Select(Send(ch, std::move(p))), ChanError);
  EXPECT_NE(p, nullptr);
  EXPECT_THROW(Select(Send(ch, std::move(p)), Default()), ChanError);
  EXPECT_NE(p, nullptr);
}

TEST_P(SelectTest, SendCaseWithACopyThatMayThrow) {
  Chan<std::string> ch = MakeChan<std::string>(1);
  const std::string s = "copied";
  EXPECT_EQ(Select(Send(ch, s), Default()), 0);
  EXPECT_EQ(s, "copied");
  EXPECT_EQ(Select(Send(ch, s), Default()), 1);  // full
  EXPECT_EQ(ch.Recv(), "copied");
}

TEST_P(SelectTest, UnchosenSendCaseKeepsItsValue) {
  Chan<std::unique_ptr<int>> full = MakeChan<std::unique_ptr<int>>(1);
  full.Send(std::make_unique<int>(0));
  Chan<int> ready = MakeChan<int>(1);
  ready.Send(1);
  auto p = std::make_unique<int>(2);
  EXPECT_EQ(Select(Send(full, std::move(p)), Recv(ready)), 1);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 2);
}

TEST_P(SelectTest, BlockedSelectIsWokenByOneCaseAndWithdrawsTheOthers) {
  Chan<int> a = MakeChan<int>(), b = MakeChan<int>(), c = MakeChan<int>();
  Chan<int> fired = MakeChan<int>(1);
  int v = 0;
  Go([&] {
    fired.Send(Select(Recv(a, &v), Recv(b, &v), Send(c, 3)));
  });
  AwaitWaiters(a, false, 1);
  AwaitWaiters(b, false, 1);
  AwaitWaiters(c, true, 1);
  b.Send(42);
  EXPECT_EQ(fired.Recv(), 1);
  EXPECT_EQ(v, 42);
  // The select left no waiter behind on a or c.
  EXPECT_EQ(chan_internal::WaitersForTest(a, false), 0u);
  EXPECT_EQ(chan_internal::WaitersForTest(c, true), 0u);
  EXPECT_FALSE(a.TrySend(1));
  EXPECT_EQ(c.TryRecv().status, RecvStatus::kWouldBlock);
}

TEST_P(SelectTest, BlockedSelectSendFiresWhenAReceiverComes) {
  Chan<int> a = MakeChan<int>(), out = MakeChan<int>();
  Chan<int> fired = MakeChan<int>(1);
  Go([&] { fired.Send(Select(Recv(a), Send(out, 9))); });
  AwaitWaiters(out, true, 1);
  EXPECT_EQ(out.Recv(), 9);
  EXPECT_EQ(fired.Recv(), 1);
}

TEST_P(SelectTest, CloseWakesABlockedSelect) {
  Chan<int> a = MakeChan<int>(), b = MakeChan<int>();
  Chan<int> res = MakeChan<int>(2);
  Go([&] {
    bool ok = true;
    int i = Select(Recv(a), Recv(b, nullptr, &ok));
    res.Send(i);
    res.Send(ok ? 1 : 0);
  });
  AwaitWaiters(b, false, 1);
  b.Close();
  EXPECT_EQ(res.Recv(), 1);
  EXPECT_EQ(res.Recv(), 0);
  // A blocked send case throws when its channel is closed.
  Chan<int> c = MakeChan<int>();
  Go([&] {
    try {
      Select(Recv(a), Send(c, 1));
      res.Send(-1);
    } catch (const ChanError& e) {
      res.Send(e.kind() == ChanError::Kind::kSendOnClosed ? 2 : -2);
    }
  });
  AwaitWaiters(c, true, 1);
  c.Close();
  EXPECT_EQ(res.Recv(), 2);
  EXPECT_EQ(chan_internal::WaitersForTest(a, false), 0u);
}

TEST_P(SelectTest, SameChannelInTwoCases) {
  Chan<int> ch = MakeChan<int>(1);
  int v = 0;
  // Empty: only the send can fire.
  EXPECT_EQ(Select(Recv(ch, &v), Send(ch, 5)), 1);
  // Full: only the receive can.
  EXPECT_EQ(Select(Recv(ch, &v), Send(ch, 6)), 0);
  EXPECT_EQ(v, 5);
}

TEST_P(SelectTest, ManyCases) {
  std::vector<Chan<int>> chans;
  for (int i = 0; i < 12; ++i) chans.push_back(MakeChan<int>(1));
  chans[10].Send(10);
  int v = -1;
  const int fired =
      Select(Recv(chans[0]), Recv(chans[1]), Recv(chans[2]), Recv(chans[3]),
             Recv(chans[4]), Recv(chans[5]), Recv(chans[6]), Recv(chans[7]),
             Recv(chans[8]), Recv(chans[9]), Recv(chans[10], &v),
             Recv(chans[11]));
  EXPECT_EQ(fired, 10);
  EXPECT_EQ(v, 10);
}

TEST_P(SelectTest, NoCasesAndDefaultOnlyReturn) {
  EXPECT_EQ(Select(Default()), 0);
}

// Among ready cases each is chosen with equal probability: a chi-square
// test with a bound that a fair choice exceeds with probability < 1e-9.
TEST_P(SelectTest, ChoiceAmongReadyCasesIsUniform) {
  constexpr int kCases = 4, kRounds = 40000;
  Chan<int> chans[kCases];
  for (auto& c : chans) {
    c = MakeChan<int>();
    c.Close();  // always ready
  }
  int counts[kCases] = {};
  for (int r = 0; r < kRounds; ++r) {
    ++counts[Select(Recv(chans[0]), Recv(chans[1]), Recv(chans[2]),
                    Recv(chans[3]))];
  }
  double chi2 = 0;
  const double expect = double{kRounds} / kCases;
  for (int c : counts) chi2 += (c - expect) * (c - expect) / expect;
  // 3 degrees of freedom: P(chi2 > 46) < 1e-9.
  EXPECT_LT(chi2, 46.0) << counts[0] << " " << counts[1] << " " << counts[2]
                        << " " << counts[3];
  // Two ready of three (one never ready): still fair between the two.
  Chan<int> never = MakeChan<int>();
  int two[3] = {};
  for (int r = 0; r < kRounds; ++r) {
    ++two[Select(Recv(chans[0]), Recv(never), Recv(chans[1]))];
  }
  EXPECT_EQ(two[1], 0);
  const double e2 = kRounds / 2.0;
  const double chi2b = (two[0] - e2) * (two[0] - e2) / e2 +
                       (two[2] - e2) * (two[2] - e2) / e2;
  EXPECT_LT(chi2b, 38.0);  // 1 degree of freedom: P < 1e-9
}

// The same over many cases: the poll order of 24 cases is drawn from more
// than one generator call (see RandomOrder in select.cc), and the ready
// cases sit at both ends and on either side of where the draws change.
TEST_P(SelectTest, ChoiceAmongManyCasesIsUniform) {
  constexpr int kCases = 24, kRounds = 40000;
  constexpr int kReady[] = {0, 11, 12, 23};
  std::vector<Chan<int>> chans(kCases);
  SelectSet set;
  for (auto& c : chans) {
    c = MakeChan<int>();  // never ready unless closed below
    set.AddRecv(c);
  }
  for (int i : kReady) chans[i].Close();
  std::vector<int> counts(kCases);
  for (int r = 0; r < kRounds; ++r) ++counts[set.TrySelect()];
  double chi2 = 0;
  const double expect = double{kRounds} / std::size(kReady);
  for (int i : kReady) {
    chi2 += (counts[i] - expect) * (counts[i] - expect) / expect;
  }
  // 3 degrees of freedom: P(chi2 > 46) < 1e-9.
  EXPECT_LT(chi2, 46.0) << counts[0] << " " << counts[11] << " " << counts[12]
                        << " " << counts[23];
  int fired_ready = 0;
  for (int i : kReady) fired_ready += counts[i];
  EXPECT_EQ(fired_ready, kRounds);
}

// Fibers and threads select over shared channels in opposite orders (send
// on one, receive on the other): no deadlock, and every value sent is
// received exactly once.
TEST_P(SelectTest, ConcurrentSelectsOverSharedChannels) {
  const int kPerTask = 4000 / kScale, kTasks = 6;
  Chan<int> a = MakeChan<int>(), b = MakeChan<int>(2);
  Chan<int> done = MakeChan<int>(kTasks);
  std::vector<std::vector<int>> got(kTasks);
  std::atomic<int> finished{0};
  auto task = [&](int id) {
    // Each task sends kPerTask values (ids id*kPerTask..), alternating
    // which channel it offers them on, and receives whatever comes.
    int next = 0;
    while (next < kPerTask) {
      const int value = id * kPerTask + next;
      int v;
      int fired = (id % 2 == 0)
                      ? Select(Send(a, value), Recv(b, &v), Recv(a, &v))
                      : Select(Recv(a, &v), Send(b, value), Recv(b, &v));
      const bool sent = (id % 2 == 0) ? fired == 0 : fired == 1;
      if (sent) {
        ++next;
      } else {
        got[id].push_back(v);
      }
    }
    finished.fetch_add(1);
    // Keep draining until everyone has sent everything.
    while (finished.load() < kTasks || a.Len() + b.Len() > 0) {
      int v;
      int fired = Select(Recv(a, &v), Recv(b, &v), Default());
      if (fired == 2) {
        Yield();
      } else {
        got[id].push_back(v);
      }
    }
    done.Send(id);
  };
  std::vector<std::thread> threads;
  for (int id = 0; id < kTasks; ++id) {
    if (id < 4) {
      Go([&, id] { task(id); });
    } else {
      threads.emplace_back(task, id);
    }
  }
  for (int i = 0; i < kTasks; ++i) done.Recv();
  for (auto& t : threads) t.join();
  std::vector<int> all;
  for (auto& g : got) all.insert(all.end(), g.begin(), g.end());
  std::sort(all.begin(), all.end());
  std::vector<int> want(kTasks * kPerTask);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(all, want);
}

// A select that blocks and one that completes it race closes and timers.
TEST_P(SelectTest, StressBlockingSelectsWithClose) {
  const int kRounds = 2000 / kScale;
  for (int r = 0; r < kRounds; ++r) {
    Chan<int> a = MakeChan<int>(), b = MakeChan<int>(), quit = MakeChan<int>();
    Chan<int> out = MakeChan<int>(1);
    Go([=] {
      int v = 0;
      bool ok = true;
      int fired = Select(Recv(a, &v), Recv(b, &v), Recv(quit, nullptr, &ok));
      out.Send(fired == 2 ? (ok ? -1 : 100) : v);
    });
    if (r % 3 == 0) {
      a.Send(r);
      EXPECT_EQ(out.Recv(), r);
    } else if (r % 3 == 1) {
      b.Send(r);
      EXPECT_EQ(out.Recv(), r);
    } else {
      quit.Close();
      EXPECT_EQ(out.Recv(), 100);
    }
  }
}

TEST_P(SelectTest, AfterFiresOnce) {
  const absl::Time start = absl::Now();
  Chan<absl::Time> t = After(absl::Milliseconds(10));
  auto v = t.Recv();
  ASSERT_TRUE(v.has_value());
  EXPECT_GE(*v - start, absl::Milliseconds(10));
  EXPECT_EQ(t.RecvFor(absl::Milliseconds(20)).status, RecvStatus::kWouldBlock);
}

TEST_P(SelectTest, TimerStopAndReset) {
  Timer t = NewTimer(absl::Hours(1));
  EXPECT_TRUE(t.Stop());
  EXPECT_FALSE(t.Stop());
  EXPECT_FALSE(t.Reset(absl::Milliseconds(1)));  // was stopped; re-armed
  EXPECT_TRUE(t.C().Recv().has_value());
  EXPECT_FALSE(t.Stop());  // already fired
  EXPECT_TRUE(Timer().C().nil());
  EXPECT_FALSE(Timer().Stop());
}

TEST_P(SelectTest, AfterFuncRunsTheFunction) {
  Chan<int> ch = MakeChan<int>(1);
  Timer t = AfterFunc(absl::Milliseconds(1), [ch] { ch.TrySend(5); });
  EXPECT_EQ(ch.Recv(), 5);
  std::atomic<bool> ran{false};
  Timer stopped = AfterFunc(absl::Milliseconds(30), [&] { ran = true; });
  EXPECT_TRUE(stopped.Stop());
  Sleep(absl::Milliseconds(50));
  EXPECT_FALSE(ran.load());
}

TEST_P(SelectTest, HugePeriodsDoNotOverflow) {
  const std::size_t pending_before = chan_internal::PendingTimersForTest();
  Ticker never(absl::InfiniteDuration());
  Timer t = NewTimer(absl::InfiniteDuration());
  EXPECT_EQ(never.C().RecvFor(absl::Milliseconds(20)).status,
            RecvStatus::kWouldBlock);
  EXPECT_EQ(t.C().TryRecv().status, RecvStatus::kWouldBlock);
  EXPECT_TRUE(t.Stop());
  never.Stop();
  EXPECT_EQ(chan_internal::PendingTimersForTest(), pending_before);
}

TEST(TickerDeathTest, NonPositivePeriodIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH({ Ticker t(absl::ZeroDuration()); },
               "fatal: gort::Ticker: non-positive period 0");
  EXPECT_DEATH({ Ticker t(-absl::Milliseconds(1)); },
               "fatal: gort::Ticker: non-positive period -1ms");
  EXPECT_DEATH(
      {
        Ticker t(absl::Hours(1));
        t.Reset(absl::ZeroDuration());
      },
      "fatal: gort::Ticker: non-positive period 0");
}

TEST_P(SelectTest, TickerTicksUntilStopped) {
  const std::size_t pending_before = chan_internal::PendingTimersForTest();
  {
    Ticker ticker(absl::Milliseconds(2));
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(ticker.C().Recv().has_value());
    ticker.Reset(absl::Milliseconds(1));
    EXPECT_TRUE(ticker.C().Recv().has_value());
    ticker.Stop();
    ticker.C().TryRecv();  // at most one tick may have been in flight
    ticker.C().RecvFor(absl::Milliseconds(5));
    EXPECT_EQ(ticker.C().RecvFor(absl::Milliseconds(20)).status,
              RecvStatus::kWouldBlock);
  }
  {
    Ticker dropped(absl::Milliseconds(1));  // destroyed: stopped
  }
  EXPECT_EQ(chan_internal::PendingTimersForTest(), pending_before);
}

// A Ticker's channel as a select case: not ready before a tick (Default
// fires), ready with the tick's time once one is due, from a thread and a
// fiber, beside other cases.
TEST_P(SelectTest, TickerChannelInASelect) {
  Chan<int> never = MakeChan<int>();
  Ticker ticker(absl::Hours(1));
  EXPECT_EQ(Select(Recv(ticker.C()), Recv(never), Default()), 2);
  SelectSet set;
  set.AddRecv(ticker.C());
  set.AddRecv(never);
  EXPECT_EQ(set.TrySelect(), -1);

  ticker.Reset(absl::Milliseconds(1));
  absl::Time last = absl::InfinitePast();
  for (int i = 0; i < 3; ++i) {  // blocking: only the ticker can fire
    absl::Time when;
    bool ok = false;
    ASSERT_EQ(Select(Recv(never), Recv(ticker.C(), &when, &ok)), 1);
    EXPECT_TRUE(ok);
    EXPECT_GT(when, last);  // each tick carries a later time
    last = when;
  }
  EXPECT_EQ(set.Select(), 0);
  // Non-blocking polls see a tick once one is due.
  while (Select(Recv(ticker.C()), Default()) != 0) {
    absl::SleepFor(absl::Microseconds(200));
  }

  // A fiber loops over the ticker and a stop channel, Go style, passing
  // each tick on.
  Chan<int> stop = MakeChan<int>();
  Chan<absl::Time> ticks = MakeChan<absl::Time>();
  Chan<int> done = MakeChan<int>(1);
  Go([&] {
    for (;;) {
      absl::Time when;
      if (Select(Recv(ticker.C(), &when), Recv(stop)) == 1) break;
      if (Select(Send(ticks, when), Recv(stop)) == 1) break;
    }
    done.Send(1);
  });
  for (int i = 0; i < 3; ++i) {
    const absl::Time when = *ticks.Recv();
    EXPECT_GT(when, last);
    last = when;
  }
  stop.Close();
  EXPECT_EQ(done.Recv(), 1);
}

// A timeout in a select loop, Go style.
TEST_P(SelectTest, TimeoutInASelectLoop) {
  Chan<int> work = MakeChan<int>();
  Go([=] {
    for (int i = 0; i < 3; ++i) work.Send(i);
  });
  int got = 0, v;
  for (;;) {
    Timer timeout = NewTimer(absl::Milliseconds(50));
    const int fired = Select(Recv(work, &v), Recv(timeout.C()));
    timeout.Stop();
    if (fired == 1) break;
    EXPECT_EQ(v, got++);
  }
  EXPECT_EQ(got, 3);
}

// Timers from many fibers at once all fire.
TEST_P(SelectTest, ManyTimers) {
  const int kN = 1000 / kScale;
  Chan<int> done = MakeChan<int>(kN);
  for (int i = 0; i < kN; ++i) {
    Go([=] {
      After(absl::Microseconds(100 * (i % 50))).Recv();
      done.Send(i);
    });
  }
  for (int i = 0; i < kN; ++i) done.Recv();
}

// A run-time set of cases: fan-in over a vector of channels.
TEST_P(SelectTest, SelectSetFansIn) {
  constexpr int kChans = 10, kPer = 200;
  std::vector<Chan<int>> ins;
  for (int i = 0; i < kChans; ++i) ins.push_back(MakeChan<int>(i % 3));
  for (int i = 0; i < kChans; ++i) {
    Go([ch = ins[i], i] {
      for (int k = 0; k < kPer; ++k) ch.Send(i * kPer + k);
      ch.Close();
    });
  }
  SelectSet set;
  std::vector<int> got(kChans);
  std::vector<char> ok(kChans);
  for (int i = 0; i < kChans; ++i) {
    EXPECT_EQ(set.AddRecv(ins[i], &got[i], &ok[i]), i);
  }
  std::vector<int> all;
  int open = kChans;
  std::vector<bool> closed(kChans);
  while (open > 0) {
    const int i = set.Select();
    ASSERT_GE(i, 0);
    if (!ok[i]) {
      if (!closed[i]) --open;
      closed[i] = true;
      // A real program would drop the case; here closed receives stay
      // ready, which the loop tolerates.
      continue;
    }
    all.push_back(got[i]);
  }
  std::sort(all.begin(), all.end());
  std::vector<int> want(kChans * kPer);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(all, want);

  // The set keeps its channels alive after the caller's handles are gone.
  SelectSet keeps;
  {
    Chan<int> tmp = MakeChan<int>(1);
    tmp.Send(9);
    keeps.AddRecv(tmp, &got[0]);
  }
  EXPECT_EQ(keeps.Select(), 0);
  EXPECT_EQ(got[0], 9);

  SelectSet none;
  EXPECT_EQ(none.TrySelect(), -1);
  Chan<int> out = MakeChan<int>(1);
  const int v = 5;
  SelectSet send;
  send.AddSend(out, &v);
  EXPECT_EQ(send.TrySelect(), 0);
  EXPECT_EQ(send.TrySelect(), -1);  // full now
  EXPECT_EQ(out.Recv(), 5);
}

// A set's send case sends a fresh copy of *value on every run, as it is at
// that run: never a moved-from leftover of an earlier run (std::string's
// copy may throw, so it takes the copy-before-locking path).
TEST_P(SelectTest, SelectSetSendsAFreshCopyEachRun) {
  Chan<std::string> out = MakeChan<std::string>(1);
  std::string value = "hello";
  SelectSet set;
  set.AddSend(out, &value);
  for (int run = 0; run < 3; ++run) {
    ASSERT_EQ(set.Select(), 0);
    EXPECT_EQ(*out.Recv(), "hello") << "run " << run;
  }
  EXPECT_EQ(value, "hello");  // the caller's value is only copied
  value = "changed";
  ASSERT_EQ(set.TrySelect(), 0);
  EXPECT_EQ(*out.Recv(), "changed");
  // int (a nothrow copy) is sent straight from *value, also as it is now.
  Chan<int> ints = MakeChan<int>(1);
  int n = 1;
  SelectSet set2;
  set2.AddSend(ints, &n);
  ASSERT_EQ(set2.Select(), 0);
  n = 2;
  EXPECT_EQ(*ints.Recv(), 1);
  ASSERT_EQ(set2.Select(), 0);
  EXPECT_EQ(*ints.Recv(), 2);
}

}  // namespace
}  // namespace gort
