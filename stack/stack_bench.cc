// Benchmarks of the stack pool.
//
//   bazel run --config=opt //stack:stack_bench
//
// BM_Stack_AllocFree          thread-cache hot path (no locks, no syscalls)
// BM_Stack_AllocFreeBatch/N   N allocations then N frees: past 32 the thread
//                             cache spills to the shared pool (a mutex)
// BM_Stack_AllocTouchFree     as AllocFree, writing the top page (resident:
//                             the LIFO pool hands back the same hot stack)
// BM_Stack_AllocTouchFreshFree  the same with stacks whose pages were given
//                             back: the page fault that LIFO reuse avoids
// BM_Stack_AllocFreeOtherSize a non-default size class (cached too)
// BM_Stack_MillionLive        1,000,000 live stacks: time, mappings, memory

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "stack/internal/test_util.h"
#include "stack/stack.h"

namespace gort {
namespace {

void BM_Stack_AllocFree(benchmark::State& state) {
  for (auto _ : state) {
    Stack s = Stack::Allocate();
    benchmark::DoNotOptimize(s.top());
  }
}
BENCHMARK(BM_Stack_AllocFree)->ThreadRange(1, 2);

void BM_Stack_AllocFreeOtherSize(benchmark::State& state) {
  for (auto _ : state) {
    Stack s = Stack::Allocate(64 * 1024);
    benchmark::DoNotOptimize(s.top());
  }
}
BENCHMARK(BM_Stack_AllocFreeOtherSize);

void BM_Stack_AllocFreeBatch(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  std::vector<Stack> stacks;
  stacks.reserve(n);
  // Warm the pool so the loop measures reuse, not first-time carving.
  for (std::size_t i = 0; i < n; ++i) stacks.push_back(Stack::Allocate());
  stacks.clear();
  const std::size_t trims_before = GetStackStats(false).trim_calls;
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) stacks.push_back(Stack::Allocate());
    benchmark::DoNotOptimize(stacks.data());
    stacks.clear();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  if (state.thread_index() == 0) {
    state.counters["madvise/iter"] = benchmark::Counter(
        static_cast<double>(GetStackStats(false).trim_calls - trims_before) /
        static_cast<double>(state.iterations()));
  }
}
BENCHMARK(BM_Stack_AllocFreeBatch)
    ->RangeMultiplier(4)
    ->Range(1, 4096)
    ->ThreadRange(1, 2);

void BM_Stack_AllocTouchFree(benchmark::State& state) {
  for (auto _ : state) {
    Stack s = Stack::Allocate();
    static_cast<volatile char*>(s.top())[-1] = 1;
    benchmark::DoNotOptimize(s.top());
  }
}
BENCHMARK(BM_Stack_AllocTouchFree);

// Per stack: allocate one whose pages were given back, touch its top page
// (a page fault), free it. ReleaseStackCache runs outside the timing.
void BM_Stack_AllocTouchFreshFree(benchmark::State& state) {
  constexpr std::size_t kBatch = 256;
  std::vector<Stack> stacks;
  stacks.reserve(kBatch);
  for (auto _ : state) {
    state.PauseTiming();
    ReleaseStackCache();
    state.ResumeTiming();
    for (std::size_t i = 0; i < kBatch; ++i) {
      stacks.push_back(Stack::Allocate());
      static_cast<volatile char*>(stacks.back().top())[-1] = 1;
    }
    stacks.clear();
  }
  state.SetItemsProcessed(
      static_cast<std::int64_t>(state.iterations() * kBatch));
}
BENCHMARK(BM_Stack_AllocTouchFreshFree);

// One million live default stacks, each touching its top page once: wall time
// per stack, mappings, and memory. Runs once (it carves fresh slots).
std::size_t StatusKiB(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t len = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, len, field) == 0) {
      return std::strtoull(line.c_str() + len + 1, nullptr, 10);
    }
  }
  return 0;
}

void BM_Stack_MillionLive(benchmark::State& state) {
  constexpr std::size_t kStacks = 1000000;
  std::vector<Stack> stacks;
  stacks.reserve(kStacks);
  for (auto _ : state) {
    const std::size_t rss0 = StatusKiB("VmRSS:");
    const std::size_t pte0 = StatusKiB("VmPTE:");
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < kStacks; ++i) {
      stacks.push_back(Stack::Allocate());
      static_cast<volatile char*>(stacks.back().top())[-1] = 1;
    }
    state.PauseTiming();
    const auto t1 = std::chrono::steady_clock::now();
    state.counters["alloc_touch_ns"] =
        std::chrono::duration<double, std::nano>(t1 - t0).count() / kStacks;
    const StackStats live = GetStackStats(false);
    state.counters["maps"] =
        static_cast<double>(stack_internal::MappingCount());
    state.counters["slabs"] = static_cast<double>(live.slabs);
    state.counters["rss_B_per_stack"] =
        static_cast<double>((StatusKiB("VmRSS:") - rss0) * 1024) / kStacks;
    state.counters["pte_B_per_stack"] =
        static_cast<double>((StatusKiB("VmPTE:") - pte0) * 1024) / kStacks;
    state.ResumeTiming();
    const auto t2 = std::chrono::steady_clock::now();
    stacks.clear();
    state.PauseTiming();
    state.counters["free_ns"] = std::chrono::duration<double, std::nano>(
                                    std::chrono::steady_clock::now() - t2)
                                    .count() /
                                kStacks;
    const StackStats freed = GetStackStats(false);
    state.counters["madvise_calls"] =
        static_cast<double>(freed.trim_calls - live.trim_calls);
    state.counters["rss_MiB_after_free"] =
        static_cast<double>(StatusKiB("VmRSS:") - rss0) / 1024;
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(kStacks));
}
BENCHMARK(BM_Stack_MillionLive)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gort
