// WaitGroup benchmarks. Workload W1 (docs: ARCHITECTURE.md): start N fibers
// that only signal completion, wait for all; reported as ns per fiber.

#include <cstdint>

#include "benchmark/benchmark.h"
#include "sched/sched.h"
#include "sync/wait_group.h"

namespace gort {
namespace {

// Seconds of real time per item (printed as e.g. "1.05us").
benchmark::Counter TimePer(double items) {
  return benchmark::Counter(
      items, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// Fan-out/fan-in from a fiber: the main fiber (RunMain) starts N fibers that
// each call Done(), then Waits; range(1) Ps. Go's counterpart is
// bench/go/waitgroup (bench/compare_sync.py runs both).
void BM_WaitGroup_FanOutFanIn(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  SetMaxProcs(static_cast<int>(state.range(1)));
  for (auto _ : state) {
    RunMain([n] {
      WaitGroup wg;
      wg.Add(n);
      for (int i = 0; i < n; ++i) Go([&wg] { wg.Done(); });
      wg.Wait();
      return 0;
    });
  }
  state.counters["per_fiber"] = TimePer(double(state.iterations()) * n);
  state.counters["procs"] = MaxProcs();
}
BENCHMARK(BM_WaitGroup_FanOutFanIn)
    ->Args({100000, 1})
    ->Args({100000, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Done() with nobody waiting: the fast path, one atomic RMW. The counter is
// topped up once every 2^20 iterations.
void BM_WaitGroup_DoneUncontended(benchmark::State& state) {
  constexpr std::int64_t kBatch = 1 << 20;
  WaitGroup wg;
  std::int64_t left = 0;
  for (auto _ : state) {
    if (left == 0) {
      wg.Add(kBatch);
      left = kBatch;
    }
    wg.Done();
    --left;
  }
  wg.Add(-left);
  benchmark::DoNotOptimize(wg.count());
}
BENCHMARK(BM_WaitGroup_DoneUncontended);

// Add(1)+Done() on one shared WaitGroup from 1..2 threads: the cache line
// ping-pong of a contended counter.
void BM_WaitGroup_AddDoneShared(benchmark::State& state) {
  static WaitGroup* wg = new WaitGroup;
  for (auto _ : state) {
    wg->Add(1);
    wg->Done();
  }
}
BENCHMARK(BM_WaitGroup_AddDoneShared)->ThreadRange(1, 2)->UseRealTime();

}  // namespace
}  // namespace gort
