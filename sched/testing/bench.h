// Helpers shared by gort's *_bench targets (//sched:bench_util, testonly).
//
//   ReportPerOp(state, n);      // counter "ops": seconds of wall time per op
//   RunInFiber([] { ... });     // runs fn as a fiber, waits from this thread
//
// The counter "ops" is what bench/compare_*.py read (x 1e9 = ns per op, the
// number Go's bench/go programs print). Threading: call from the benchmark's
// own (plain) thread.

#ifndef GORT_SCHED_TESTING_BENCH_H_
#define GORT_SCHED_TESTING_BENCH_H_

#include <cstdint>

#include "benchmark/benchmark.h"
#include "sched/sched.h"
#include "sched/testing/latch.h"

namespace gort {
namespace testing {

// Reports `ops_per_iteration` operations per benchmark iteration as the
// counter "ops", inverted: seconds of wall time per operation.
inline void ReportPerOp(benchmark::State& state,
                        std::int64_t ops_per_iteration) {
  state.counters["ops"] = benchmark::Counter(
      static_cast<double>(ops_per_iteration),
      benchmark::Counter::kIsIterationInvariantRate |
          benchmark::Counter::kInvert);
}

// Runs fn as a fiber and waits for it from this (plain) thread.
template <typename F>
void RunInFiber(F fn) {
  Latch done(1);
  Go([&] {
    fn();
    done.Done();
  });
  done.Wait();
}

}  // namespace testing
}  // namespace gort

#endif  // GORT_SCHED_TESTING_BENCH_H_
