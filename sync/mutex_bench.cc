// Mutex and RWMutex benchmarks, beside std::mutex / std::shared_mutex with
// threads, and (through bench/compare_sync.py) beside Go's sync.Mutex and
// sync.RWMutex in bench/go/{mutex,rwmutex}.
//
//   bazel run --config=opt //sync:mutex_bench
//   bench/compare_sync.py --reps 3
//
// Per-operation costs are reported as the counter "ops" (seconds of wall
// time per operation, printed e.g. "30.1n"), the same convention as
// //sched:sched_bench; the times include starting and joining the tasks, as
// Go's programs measure.

#include <cstdint>
#include <mutex>
#include <shared_mutex>

#include "benchmark/benchmark.h"
#include "sched/sched.h"
#include "sched/testing/bench.h"
#include "sync/mutex.h"
#include "sync/rw_mutex.h"
#include "sync/testing/fibers.h"
#include "sync/wait_group.h"

namespace gort {
namespace {

constexpr int kTasks = 8;
constexpr int kOpsPerTask = 1'000'000;

using testing::ReportPerOp;

// Runs `body(task)` in kTasks fibers on the runtime's Ps, or in kTasks
// plain threads, and waits for them from this thread.
template <typename F>
void RunFibers(F body) {
  testing::RunInFibersAndThreads(kTasks, 0, body);
}
template <typename F>
void RunThreads(F body) {
  testing::RunInFibersAndThreads(0, kTasks, body);
}

// W7: 8 fibers on range(0) Ps, each incrementing one shared counter
// 1,000,000 times under one gort::Mutex. ns per increment.
void BM_Mutex_Contended(benchmark::State& state) {
  SetMaxProcs(static_cast<int>(state.range(0)));
  const std::uint64_t starving_before = sync_internal::MutexStarvationCount();
  for (auto _ : state) {
    Mutex mu;
    std::int64_t counter = 0;
    RunFibers([&](int) {
      for (int i = 0; i < kOpsPerTask; ++i) {
        mu.Lock();
        ++counter;
        mu.Unlock();
      }
    });
    benchmark::DoNotOptimize(counter);
    if (counter != std::int64_t{kTasks} * kOpsPerTask) {
      state.SkipWithError("lost increments");
    }
  }
  ReportPerOp(state, std::int64_t{kTasks} * kOpsPerTask);
  // Switches to starvation mode per run: a diagnostic for W7's two modes.
  state.counters["starving"] = benchmark::Counter(
      static_cast<double>(sync_internal::MutexStarvationCount() -
                          starving_before),
      benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_Mutex_Contended)
    ->Arg(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Two fibers on two Ps (one each, normally): where spinning pays off.
void BM_Mutex_ContendedTwoFibers(benchmark::State& state) {
  SetMaxProcs(2);
  constexpr int kFibers = 2;
  constexpr int kOps = 4'000'000;
  for (auto _ : state) {
    Mutex mu;
    std::int64_t counter = 0;
    WaitGroup wg;
    wg.Add(kFibers);
    for (int t = 0; t < kFibers; ++t) {
      Go([&] {
        for (int i = 0; i < kOps; ++i) {
          mu.Lock();
          ++counter;
          mu.Unlock();
        }
        wg.Done();
      });
    }
    wg.Wait();
    benchmark::DoNotOptimize(counter);
  }
  ReportPerOp(state, std::int64_t{kFibers} * kOps);
}
BENCHMARK(BM_Mutex_ContendedTwoFibers)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// W7 with 8 std::threads: any lockable `M`, by its lock()/unlock().
template <typename M>
void ContendedThreads(benchmark::State& state) {
  for (auto _ : state) {
    M mu;
    std::int64_t counter = 0;
    RunThreads([&](int) {
      for (int i = 0; i < kOpsPerTask; ++i) {
        mu.lock();
        ++counter;
        mu.unlock();
      }
    });
    benchmark::DoNotOptimize(counter);
  }
  ReportPerOp(state, std::int64_t{kTasks} * kOpsPerTask);
}

// The baseline: W7 with 8 std::threads and std::mutex.
void BM_StdMutex_ContendedThreads(benchmark::State& state) {
  ContendedThreads<std::mutex>(state);
}
BENCHMARK(BM_StdMutex_ContendedThreads)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// W7 with 8 std::threads and gort::Mutex (its thread path: futex sleeps).
void BM_Mutex_ContendedThreads(benchmark::State& state) {
  ContendedThreads<Mutex>(state);
}
BENCHMARK(BM_Mutex_ContendedThreads)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// A lock/unlock pair on one thread, nobody else around: the fast paths.
template <typename M>
void Uncontended(benchmark::State& state) {
  M mu;
  std::int64_t counter = 0;
  for (auto _ : state) {
    mu.lock();
    ++counter;
    mu.unlock();
  }
  benchmark::DoNotOptimize(counter);
  ReportPerOp(state, 1);
}

void BM_Mutex_Uncontended(benchmark::State& state) {
  Uncontended<Mutex>(state);
}
BENCHMARK(BM_Mutex_Uncontended);

void BM_StdMutex_Uncontended(benchmark::State& state) {
  Uncontended<std::mutex>(state);
}
BENCHMARK(BM_StdMutex_Uncontended);

// The same from a fiber (its Lock/Unlock are the same inline fast paths).
void BM_Mutex_UncontendedInFiber(benchmark::State& state) {
  SetMaxProcs(1);
  constexpr int kPairs = 10'000'000;
  for (auto _ : state) {
    Mutex mu;
    std::int64_t counter = 0;
    WaitGroup wg;
    wg.Add(1);
    Go([&] {
      for (int i = 0; i < kPairs; ++i) {
        mu.Lock();
        ++counter;
        mu.Unlock();
      }
      wg.Done();
    });
    wg.Wait();
    benchmark::DoNotOptimize(counter);
  }
  ReportPerOp(state, kPairs);
}
BENCHMARK(BM_Mutex_UncontendedInFiber)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The read-mostly workload, one body for gort::RWMutex and
// std::shared_mutex (both have lock/unlock/lock_shared/unlock_shared):
// kTasks tasks, each doing 1,000,000 operations on a small shared state,
// 90% under the shared lock (read two fields), 10% exclusive (update both).
template <typename RWLock, typename Runner>
void ReadMostly(benchmark::State& state, Runner run) {
  for (auto _ : state) {
    RWLock mu;
    std::int64_t a = 0, b = 0;
    std::int64_t sums[kTasks] = {};
    run([&](int t) {
      std::int64_t sum = 0;
      for (int i = 0; i < kOpsPerTask; ++i) {
        if (i % 10 == 0) {
          mu.lock();
          ++a;
          ++b;
          mu.unlock();
        } else {
          mu.lock_shared();
          sum += a - b;
          mu.unlock_shared();
        }
      }
      sums[t] = sum;
    });
    for (std::int64_t s : sums) {
      if (s != 0) state.SkipWithError("torn read");
    }
    benchmark::DoNotOptimize(a);
  }
  ReportPerOp(state, std::int64_t{kTasks} * kOpsPerTask);
}

// 8 fibers on range(0) Ps with gort::RWMutex. ns per operation.
void BM_RWMutex_90Read(benchmark::State& state) {
  SetMaxProcs(static_cast<int>(state.range(0)));
  ReadMostly<RWMutex>(state, [](auto body) { RunFibers(body); });
}
BENCHMARK(BM_RWMutex_90Read)
    ->Arg(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The baseline: the same with 8 std::threads and std::shared_mutex.
void BM_StdSharedMutex_90ReadThreads(benchmark::State& state) {
  ReadMostly<std::shared_mutex>(state, [](auto body) { RunThreads(body); });
}
BENCHMARK(BM_StdSharedMutex_90ReadThreads)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// RLock/RUnlock on one thread: the readers' fast path.
void BM_RWMutex_ReadUncontended(benchmark::State& state) {
  RWMutex mu;
  for (auto _ : state) {
    mu.RLock();
    mu.RUnlock();
  }
  ReportPerOp(state, 1);
}
BENCHMARK(BM_RWMutex_ReadUncontended);

}  // namespace
}  // namespace gort
