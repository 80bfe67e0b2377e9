// Scheduler benchmarks (the W1 spawn and W6 yield workloads, park/unpark
// ping-pong, skewed load, a million sleepers), beside the matching Go
// programs in bench/go (bench/compare_sched.py runs both and prints ratios;
// bench/scaling.sh runs them at 1 to 16 Ps).
//
//   bazel run --config=opt //sched:sched_bench
//   CPUPROFILE=/tmp/sched.prof bazel run --config=opt //sched:sched_bench -- --benchmark_filter=Spawn
//   google-pprof --text bazel-bin/sched/sched_bench /tmp/sched.prof
//
// Each benchmark sets MaxProcs to its argument; the runtime stays up
// between benchmarks. The Ps measured are 1 and 2 (this project's machine
// has 2 cores); on a bigger one, e.g. GORT_BENCH_PROCS=1,2,4,8,16. Per-item
// costs are reported as the counter "ops" (seconds of wall time per
// operation; x 1e9 is the ns per op that Go's programs print).

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "absl/time/clock.h"
#include "benchmark/benchmark.h"
#include "sched/park.h"
#include "sched/sched.h"
#include "sched/testing/bench.h"
#include "sched/testing/latch.h"
#include "sched/testing/mailbox.h"

namespace gort {
namespace {

using testing::Latch;
using testing::Mailbox;

using testing::ReportPerOp;
using testing::RunInFiber;

// Registers the Ps to measure at: GORT_BENCH_PROCS (a comma-separated list
// of 1 .. 256, gort's most Ps; anything else in it is skipped), or 1 and 2.
void ProcsArgs(benchmark::internal::Benchmark* b) {
  const char* s = std::getenv("GORT_BENCH_PROCS");
  bool any = false;
  while (s != nullptr && *s != '\0') {
    char* end;
    const long n = std::strtol(s, &end, 10);
    if (end != s && n >= 1 && n <= 256) {
      b->Arg(n);
      any = true;
    }
    while (*end != '\0' && *end != ',') ++end;  // skip what is left
    s = *end == ',' ? end + 1 : end;
  }
  if (!any) b->Arg(1)->Arg(2);
}

// W1 spawn: 1,000,000 fibers that only signal completion; wait for all.
void BM_Sched_Spawn(benchmark::State& state) {
  SetMaxProcs(static_cast<int>(state.range(0)));
  constexpr int kFibers = 1'000'000;
  for (auto _ : state) {
    RunInFiber([] {
      Latch wg(kFibers);
      for (int i = 0; i < kFibers; ++i) Go([&wg] { wg.Done(); });
      wg.Wait();
    });
  }
  ReportPerOp(state, kFibers);
}
BENCHMARK(BM_Sched_Spawn)->Apply(ProcsArgs)->UseRealTime()->Unit(benchmark::kMillisecond);

// W6 yield: two fibers on one P, 5,000,000 yields each; ns per yield.
void BM_Sched_Yield(benchmark::State& state) {
  SetMaxProcs(1);
  constexpr int kYields = 5'000'000;
  for (auto _ : state) {
    RunInFiber([] {
      Latch wg(2);
      for (int f = 0; f < 2; ++f) {
        Go([&wg] {
          for (int i = 0; i < kYields; ++i) Yield();
          wg.Done();
        });
      }
      wg.Wait();
    });
  }
  ReportPerOp(state, 2 * kYields);
}
BENCHMARK(BM_Sched_Yield)->UseRealTime()->Unit(benchmark::kMillisecond);

// Two fibers hand a token back and forth through the parking API.
void BM_Sched_ParkUnparkPingPong(benchmark::State& state) {
  SetMaxProcs(static_cast<int>(state.range(0)));
  constexpr int kRounds = 1'000'000;
  for (auto _ : state) {
    RunInFiber([] {
      Mailbox ping, pong;
      Latch wg(1);
      Go([&] {
        for (int i = 0; i < kRounds; ++i) {
          ping.Take();
          pong.Put();
        }
        wg.Done();
      });
      for (int i = 0; i < kRounds; ++i) {
        ping.Put();
        pong.Take();
      }
      wg.Wait();
    });
  }
  ReportPerOp(state, kRounds);
}
BENCHMARK(BM_Sched_ParkUnparkPingPong)->Apply(ProcsArgs)->UseRealTime()->Unit(benchmark::kMillisecond);

// Skewed load: 100,000 CPU-bound tasks all spawned by one fiber; stealing
// spreads them over the Ps. Compare wall time across the P counts.
__attribute__((noinline)) std::uint64_t Work(std::uint64_t seed) {
  std::uint64_t x = seed;
  for (int i = 0; i < 2000; ++i) x = x * 6364136223846793005ull + 1442695040888963407ull;
  return x;
}

void BM_Sched_SkewedLoad(benchmark::State& state) {
  SetMaxProcs(static_cast<int>(state.range(0)));
  constexpr int kTasks = 100'000;
  std::atomic<std::uint64_t> sink{0};
  for (auto _ : state) {
    RunInFiber([&] {
      Latch wg(kTasks);
      for (int i = 0; i < kTasks; ++i) {
        Go([&wg, &sink, i] {
          sink.fetch_add(Work(i), std::memory_order_relaxed);
          wg.Done();
        });
      }
      wg.Wait();
    });
  }
  benchmark::DoNotOptimize(sink.load());
  ReportPerOp(state, kTasks);
}
BENCHMARK(BM_Sched_SkewedLoad)->Apply(ProcsArgs)->UseRealTime()->Unit(benchmark::kMillisecond);

long PeakRssKb() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// W2 sleepers: 1,000,000 fibers each sleep 100 ms then signal. Wall time,
// the growth of peak RSS (run last: peak RSS only grows, so the second
// variant's growth is over the first's peak), and how late each fiber
// woke, measured around its Sleep: the issue asks for "within a few ms of
// their deadline under load". range(1): 1 for compact stacks.
void BM_Sched_MillionSleepers(benchmark::State& state) {
  SetMaxProcs(static_cast<int>(state.range(0)));
  const GoOptions options{.compact_stack = state.range(1) != 0};
  constexpr int kFibers = 1'000'000;
  std::vector<std::int32_t> late_us(kFibers);
  long before = PeakRssKb();
  for (auto _ : state) {
    RunInFiber([&] {
      Latch wg(kFibers);
      for (int i = 0; i < kFibers; ++i) {
        Go(options, [&wg, &late_us, i] {
          const auto start = std::chrono::steady_clock::now();
          Sleep(absl::Milliseconds(100));
          const auto slept = std::chrono::steady_clock::now() - start;
          late_us[i] = static_cast<std::int32_t>(
              std::chrono::duration_cast<std::chrono::microseconds>(slept)
                  .count() -
              100'000);
          wg.Done();
        });
      }
      wg.Wait();
    });
  }
  state.counters["peak_rss_mb"] = PeakRssKb() / 1024.0;
  state.counters["rss_growth_bytes_per_fiber"] =
      (PeakRssKb() - before) * 1024.0 / kFibers;
  std::sort(late_us.begin(), late_us.end());
  state.counters["late_p50_ms"] = late_us[kFibers / 2] / 1000.0;
  state.counters["late_p90_ms"] = late_us[kFibers / 10 * 9] / 1000.0;
  state.counters["late_p99_ms"] = late_us[kFibers / 100 * 99] / 1000.0;
  state.counters["late_max_ms"] = late_us.back() / 1000.0;
}
BENCHMARK(BM_Sched_MillionSleepers)
    ->Args({2, 0})
    ->Args({2, 1})
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gort
