// Channels between plain std::threads with ONLY //chan linked: no scheduler,
// every blocked task sleeps on a futex through the parking API.

#include <algorithm>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/chan.h"
#include "chan/select.h"
#include "chan/time.h"
#include "gtest/gtest.h"

namespace gort {
namespace {

#if defined(GORT_SANITIZED)
constexpr int kScale = 10;
#else
constexpr int kScale = 1;
#endif

TEST(ChanThreadTest, PingPong) {
  const int kN = 20000 / kScale;
  Chan<int> ping = MakeChan<int>(), pong = MakeChan<int>();
  std::thread t([&] {
    for (int v : ping) pong.Send(v + 1);
    pong.Close();
  });
  for (int i = 0; i < kN; ++i) {
    ping.Send(i);
    ASSERT_EQ(pong.Recv(), i + 1);
  }
  ping.Close();
  EXPECT_EQ(pong.Recv(), std::nullopt);
  t.join();
}

TEST(ChanThreadTest, ManyProducersAndConsumersWithClose) {
  for (std::size_t cap : {0, 1, 64}) {
    const int kProducers = 4, kConsumers = 4, kPer = 10000 / kScale;
    Chan<std::unique_ptr<int>> ch = MakeChan<std::unique_ptr<int>>(cap);
    std::vector<std::vector<int>> got(kConsumers);
    std::vector<std::thread> producers, consumers;
    for (int p = 0; p < kProducers; ++p) {
      producers.emplace_back([&, p] {
        for (int i = 0; i < kPer; ++i) {
          ch.Send(std::make_unique<int>(p * kPer + i));
        }
      });
    }
    for (int c = 0; c < kConsumers; ++c) {
      consumers.emplace_back([&, c] {
        for (auto& v : ch) got[c].push_back(*v);
      });
    }
    for (auto& t : producers) t.join();
    ch.Close();
    for (auto& t : consumers) t.join();
    std::vector<int> all;
    for (auto& g : got) all.insert(all.end(), g.begin(), g.end());
    std::sort(all.begin(), all.end());
    std::vector<int> want(kProducers * kPer);
    std::iota(want.begin(), want.end(), 0);
    EXPECT_EQ(all, want) << "capacity " << cap;
  }
}

TEST(ChanThreadTest, BlockedSenderGetsErrorOnClose) {
  Chan<std::unique_ptr<int>> ch = MakeChan<std::unique_ptr<int>>();
  std::unique_ptr<int> p = std::make_unique<int>(1);
  bool threw = false;
  std::thread t([&] {
    try {
      ch.Send(std::move(p));
    } catch (const ChanError&) {
      threw = true;
    }
  });
  while (chan_internal::WaitersForTest(ch, true) == 0) std::this_thread::yield();
  ch.Close();
  t.join();
  EXPECT_TRUE(threw);
  EXPECT_NE(p, nullptr);
}

TEST(ChanThreadTest, SelectAcrossThreads) {
  const int kN = 5000 / kScale;
  Chan<int> a = MakeChan<int>(), b = MakeChan<int>(4);
  Chan<int> quit = MakeChan<int>();
  std::thread pa([&] {
    for (int i = 0; i < kN; ++i) a.Send(i);
  });
  std::thread pb([&] {
    for (int i = 0; i < kN; ++i) b.Send(kN + i);
  });
  std::thread closer([&] {
    pa.join();
    pb.join();
    quit.Close();
  });
  std::vector<int> got;
  for (;;) {
    int v;
    const int fired = Select(Recv(a, &v), Recv(b, &v), Recv(quit));
    if (fired == 2) break;
    got.push_back(v);
  }
  closer.join();
  // quit closes once both producers returned. Every send on the unbuffered
  // `a` was received by then, but up to 4 of b's may still sit in its
  // buffer, and once quit is closed the select may pick it over a ready b
  // (Go picks among ready cases at random): drain b.
  while (auto r = b.TryRecv()) got.push_back(*r);
  std::sort(got.begin(), got.end());
  std::vector<int> want(2 * kN);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(got, want);
}

TEST(ChanThreadTest, TimeoutsAndTimers) {
  Chan<int> ch = MakeChan<int>();
  const absl::Time start = absl::Now();
  EXPECT_EQ(ch.RecvFor(absl::Milliseconds(10)).status, RecvStatus::kWouldBlock);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(10));
  EXPECT_EQ(Select(Recv(ch), Recv(After(absl::Milliseconds(5)))), 1);
  Ticker ticker(absl::Milliseconds(1));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(ticker.C().Recv().has_value());
}

TEST(ChanThreadTest, NilSelectWithTimeout) {
  Chan<int> nil;
  EXPECT_EQ(Select(Recv(nil), Recv(After(absl::Milliseconds(2)))), 1);
}

}  // namespace
}  // namespace gort
