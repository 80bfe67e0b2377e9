// Channel benchmarks (workloads W3, W4, W5 and W8 of ARCHITECTURE.md),
// beside the matching Go programs in bench/go (bench/compare_chan.py runs
// both and prints ratios), Boost.Fiber's channels where Boost is installed,
// and a mutex + condition_variable hand-off for the thread case.
//
//   bazel run --config=opt //chan:chan_bench
//   CPUPROFILE=/tmp/chan.prof bazel run --config=opt //chan:chan_bench -- --benchmark_filter=PingPong
//
// Per-item costs are the counter "ops" (inverted rate: seconds per op).

#include <sys/resource.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "chan/chan.h"
#if defined(GORT_HAVE_BOOST_FIBER)
#include <boost/fiber/buffered_channel.hpp>
#include <boost/fiber/fiber.hpp>
#include <boost/fiber/unbuffered_channel.hpp>
#endif
#include "chan/select.h"
#include "sched/sched.h"
#include "sched/testing/bench.h"

namespace gort {
namespace {

using testing::ReportPerOp;
using testing::RunInFiber;

// W4 ping-pong: two fibers, unbuffered channels, 1,000,000 round trips.
void BM_Chan_PingPong(benchmark::State& state) {
  SetMaxProcs(static_cast<int>(state.range(0)));
  constexpr int kRounds = 1'000'000;
  for (auto _ : state) {
    RunInFiber([] {
      Chan<int> ping = MakeChan<int>(), pong = MakeChan<int>();
      Chan<int> done = MakeChan<int>();
      Go([=] {
        for (int i = 0; i < kRounds; ++i) pong.Send(*ping.Recv());
        done.Send(0);
      });
      for (int i = 0; i < kRounds; ++i) {
        ping.Send(i);
        pong.Recv();
      }
      done.Recv();
    });
  }
  ReportPerOp(state, kRounds);
}
BENCHMARK(BM_Chan_PingPong)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

#if defined(GORT_HAVE_BOOST_FIBER)
// Boost.Fiber 1.74 baselines, on the calling thread (Boost's default
// round-robin scheduler): W4 ping-pong over unbuffered channels, and W5
// buffered 1 -> 1 (Boost's buffered_channel needs a power-of-two capacity;
// 128 is one).
void BM_BoostFiber_PingPong(benchmark::State& state) {
  constexpr int kRounds = 1'000'000;
  for (auto _ : state) {
    boost::fibers::unbuffered_channel<int> ping, pong;
    boost::fibers::fiber f([&] {
      int v;
      for (int i = 0; i < kRounds; ++i) {
        ping.pop(v);
        pong.push(v);
      }
    });
    int v;
    for (int i = 0; i < kRounds; ++i) {
      ping.push(i);
      pong.pop(v);
    }
    f.join();
  }
  ReportPerOp(state, kRounds);
}
BENCHMARK(BM_BoostFiber_PingPong)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_BoostFiber_Buffered(benchmark::State& state) {
  constexpr int kItems = 10'000'000;
  for (auto _ : state) {
    boost::fibers::buffered_channel<int> ch(128);
    boost::fibers::fiber producer([&] {
      for (int i = 0; i < kItems; ++i) ch.push(i);
    });
    std::int64_t sum = 0;
    int v = 0;
    for (int i = 0; i < kItems; ++i) {
      ch.pop(v);
      sum += v;
    }
    benchmark::DoNotOptimize(sum);
    producer.join();
  }
  ReportPerOp(state, kItems);
}
BENCHMARK(BM_BoostFiber_Buffered)->UseRealTime()->Unit(benchmark::kMillisecond);
#endif  // GORT_HAVE_BOOST_FIBER

// W5 buffered: capacity 128, 10,000,000 ints from `producers` producers to
// as many consumers, 2 Ps; ns per item.
void BM_Chan_Buffered(benchmark::State& state) {
  SetMaxProcs(2);
  const int producers = static_cast<int>(state.range(0));
  constexpr int kItems = 10'000'000;
  for (auto _ : state) {
    RunInFiber([producers] {
      Chan<int> ch = MakeChan<int>(128);
      Chan<int> done = MakeChan<int>(2 * producers);
      const int per = kItems / producers;
      for (int p = 0; p < producers; ++p) {
        Go([=] {
          for (int i = 0; i < per; ++i) ch.Send(i);
          done.Send(0);
        });
        Go([=] {
          std::int64_t sum = 0;
          for (int i = 0; i < per; ++i) sum += *ch.Recv();
          benchmark::DoNotOptimize(sum);
          done.Send(0);
        });
      }
      for (int i = 0; i < 2 * producers; ++i) done.Recv();
    });
  }
  ReportPerOp(state, kItems);
}
BENCHMARK(BM_Chan_Buffered)->Arg(1)->Arg(4)->UseRealTime()->Unit(benchmark::kMillisecond);

// W8 select: one consumer selects over two channels (capacity 16), each fed
// by its own producer with 1,000,000 items; ns per received item, 2 Ps.
void BM_Chan_Select(benchmark::State& state) {
  SetMaxProcs(2);
  constexpr int kPer = 1'000'000;
  for (auto _ : state) {
    RunInFiber([] {
      Chan<int> a = MakeChan<int>(16), b = MakeChan<int>(16);
      Go([=] {
        for (int i = 0; i < kPer; ++i) a.Send(i);
        a.Close();
      });
      Go([=] {
        for (int i = 0; i < kPer; ++i) b.Send(i);
        b.Close();
      });
      Chan<int> ra = a, rb = b;  // set to nil once drained, as in Go
      std::int64_t n = 0;
      while (!ra.nil() || !rb.nil()) {
        int v;
        bool ok;
        switch (Select(Recv(ra, &v, &ok), Recv(rb, &v, &ok))) {
          case 0:
            if (!ok) ra = Chan<int>();
            break;
          case 1:
            if (!ok) rb = Chan<int>();
            break;
        }
        n += ok;
      }
      if (n != 2 * kPer) std::abort();
    });
  }
  ReportPerOp(state, 2 * kPer);
}
BENCHMARK(BM_Chan_Select)->UseRealTime()->Unit(benchmark::kMillisecond);

// The cost of a select whose cases are ready, without contention: one
// thread fills two buffered channels and drains them again, by select over
// both (arg 1) or by plain receives (arg 0, the baseline); ns per item
// received. The gap is select's own work (ordering, case descriptions,
// polling); W8 adds the cache-line traffic of producers on other cores.
void BM_Chan_SelectReady(benchmark::State& state) {
  const bool select = state.range(0) != 0;
  constexpr int kBatch = 8;
  Chan<int> a = MakeChan<int>(kBatch), b = MakeChan<int>(kBatch);
  std::int64_t sum = 0;
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      a.Send(i);
      b.Send(i);
    }
    if (select) {
      for (int i = 0; i < 2 * kBatch; ++i) {
        int v = 0;
        Select(Recv(a, &v), Recv(b, &v));
        sum += v;
      }
    } else {
      for (int i = 0; i < kBatch; ++i) sum += *a.Recv() + *b.Recv();
    }
  }
  benchmark::DoNotOptimize(sum);
  ReportPerOp(state, 2 * kBatch);
}
BENCHMARK(BM_Chan_SelectReady)->Arg(0)->Arg(1);

// Making and dropping a channel (a buffered one of 16 ints, or an
// unbuffered one): what a channel per request or per After() costs.
void BM_Chan_MakeAndDrop(benchmark::State& state) {
  const std::size_t capacity = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    Chan<int> ch = MakeChan<int>(capacity);
    benchmark::DoNotOptimize(ch);
  }
  ReportPerOp(state, 1);
}
BENCHMARK(BM_Chan_MakeAndDrop)->Arg(0)->Arg(16);

// Channels between two plain threads (no fibers): ping-pong round trip.
void BM_Chan_ThreadPingPong(benchmark::State& state) {
  constexpr int kRounds = 100'000;
  for (auto _ : state) {
    Chan<int> ping = MakeChan<int>(), pong = MakeChan<int>();
    std::thread t([=] {
      for (int i = 0; i < kRounds; ++i) pong.Send(*ping.Recv());
    });
    for (int i = 0; i < kRounds; ++i) {
      ping.Send(i);
      pong.Recv();
    }
    t.join();
  }
  ReportPerOp(state, kRounds);
}
BENCHMARK(BM_Chan_ThreadPingPong)->UseRealTime()->Unit(benchmark::kMillisecond);

// Baseline for the above: the same hand-off with std::mutex and
// std::condition_variable (a one-slot mailbox each way).
class Mailbox {
 public:
  void Put(int v) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return !full_; });
    value_ = v;
    full_ = true;
    cv_.notify_all();
  }
  int Take() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return full_; });
    full_ = false;
    cv_.notify_all();
    return value_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool full_ = false;
  int value_ = 0;
};

void BM_MutexCondVar_ThreadPingPong(benchmark::State& state) {
  constexpr int kRounds = 100'000;
  for (auto _ : state) {
    Mailbox ping, pong;
    std::thread t([&] {
      for (int i = 0; i < kRounds; ++i) pong.Put(ping.Take());
    });
    for (int i = 0; i < kRounds; ++i) {
      ping.Put(i);
      pong.Take();
    }
    t.join();
  }
  ReportPerOp(state, kRounds);
}
BENCHMARK(BM_MutexCondVar_ThreadPingPong)->UseRealTime()->Unit(benchmark::kMillisecond);

// W3 parked memory: 100,000 fibers each blocked receiving on its own
// channel; RSS growth per fiber (counter "rss_per_fiber_bytes").
long RssKb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

void BM_Chan_ParkedMemory(benchmark::State& state) {
  SetMaxProcs(2);
  constexpr int kFibers = 100'000;
  double per_fiber = 0;
  for (auto _ : state) {
    std::vector<Chan<int>> chans;
    chans.reserve(kFibers);
    for (int i = 0; i < kFibers; ++i) chans.push_back(MakeChan<int>());
    Chan<int> done = MakeChan<int>(kFibers);
    const long before = RssKb();
    for (int i = 0; i < kFibers; ++i) {
      Go([ch = chans[i], done] { done.Send(*ch.Recv()); });
    }
    while (NumFibers() < kFibers ||
           chan_internal::WaitersForTest(chans[kFibers - 1], false) == 0) {
      std::this_thread::yield();
    }
    const long after = RssKb();
    per_fiber = (after - before) * 1024.0 / kFibers;
    for (int i = 0; i < kFibers; ++i) chans[i].Send(i);
    for (int i = 0; i < kFibers; ++i) done.Recv();
  }
  state.counters["rss_per_fiber_bytes"] = per_fiber;
}
BENCHMARK(BM_Chan_ParkedMemory)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace
}  // namespace gort
