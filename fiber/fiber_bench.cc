// Benchmarks for //fiber, beside Boost.Context 1.74 in the same binary.
//
//   bazel run --config=opt //fiber:fiber_bench
//   CPUPROFILE=/tmp/fiber.prof bazel run --config=opt //fiber:fiber_bench
//   google-pprof --text bazel-bin/fiber/fiber_bench /tmp/fiber.prof

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "benchmark/benchmark.h"
#include "fiber/fiber.h"
#include "fiber/internal/context.h"

#if defined(GORT_HAVE_BOOST_CONTEXT)
#include <boost/context/fiber.hpp>
#include <boost/context/pooled_fixedsize_stack.hpp>
#endif

namespace gort {
namespace {

// A→B→A through the generator API: two switches per iteration.
void BM_Fiber_SwitchRoundTrip(benchmark::State& state) {
  bool done = false;
  Fiber* f = Fiber::Create([&] {
    while (!done) Fiber::Suspend();
  });
  for (auto _ : state) f->Resume();
  done = true;
  f->Resume();
  Fiber::Destroy(f);
}
BENCHMARK(BM_Fiber_SwitchRoundTrip);

// The same round trip through the raw scheduler-level SwitchTo.
Fiber* g_main = nullptr;
void BM_Fiber_SwitchToRoundTrip(benchmark::State& state) {
  g_main = Fiber::Current();
  bool done = false;
  Fiber* f = Fiber::Create([&] {
    while (!done) Fiber::SwitchTo(g_main);
  });
  for (auto _ : state) Fiber::SwitchTo(f);
  done = true;
  f->Resume();
  Fiber::Destroy(f);
}
BENCHMARK(BM_Fiber_SwitchToRoundTrip);

// Create a fiber on a pooled stack, run it to completion, destroy it.
void BM_Fiber_CreateRunDestroy(benchmark::State& state) {
  int runs = 0;
  for (auto _ : state) {
    Fiber* f = Fiber::Create([&runs] { ++runs; });
    f->Resume();
    Fiber::Destroy(f);
  }
  benchmark::DoNotOptimize(runs);
}
BENCHMARK(BM_Fiber_CreateRunDestroy);

// The same on a compact stack (2 KiB, no guard, canary checked per switch).
void BM_Fiber_CreateRunDestroyCompact(benchmark::State& state) {
  Fiber::Options opts;
  opts.compact_stack = true;
  int runs = 0;
  for (auto _ : state) {
    Fiber* f = Fiber::Create([&runs] { ++runs; }, opts);
    f->Resume();
    Fiber::Destroy(f);
  }
  benchmark::DoNotOptimize(runs);
}
BENCHMARK(BM_Fiber_CreateRunDestroyCompact);

#if defined(GORT_HAVE_BOOST_CONTEXT)
namespace ctx = boost::context;

void BM_BoostContext_SwitchRoundTrip(benchmark::State& state) {
  bool done = false;
  ctx::fiber f{[&done](ctx::fiber&& main) {
    while (!done) main = std::move(main).resume();
    return std::move(main);
  }};
  for (auto _ : state) f = std::move(f).resume();
  done = true;
  f = std::move(f).resume();
}
BENCHMARK(BM_BoostContext_SwitchRoundTrip);

void BM_BoostContext_CreateRunDestroy(benchmark::State& state) {
  ctx::pooled_fixedsize_stack pool(256 * 1024);
  int runs = 0;
  for (auto _ : state) {
    ctx::fiber f{std::allocator_arg, pool, [&runs](ctx::fiber&& main) {
                   ++runs;
                   return std::move(main);
                 }};
    f = std::move(f).resume();
  }
  benchmark::DoNotOptimize(runs);
}
BENCHMARK(BM_BoostContext_CreateRunDestroy);
#endif

}  // namespace
}  // namespace gort

namespace gort {
namespace {
// The bare assembly switch, without the Fiber bookkeeping: the floor.
void* g_main_sp;
void* g_fib_sp;
void RawEntry(void*, void*) {
  for (;;) fiber_internal::SwitchContext(&g_fib_sp, g_main_sp, nullptr);
}
void BM_Fiber_RawContextSwitchRoundTrip(benchmark::State& state) {
  Stack s = Stack::Allocate();
  auto top = (reinterpret_cast<std::uintptr_t>(s.top()) - 128) & ~15ul;
  auto* f = reinterpret_cast<fiber_internal::SwitchFrame*>(
      top - fiber_internal::kSwitchFrameSpan);
  fiber_internal::InitFrame(f, &RawEntry, nullptr);
  g_fib_sp = f;
  for (auto _ : state) {
    fiber_internal::SwitchContext(&g_main_sp, g_fib_sp, nullptr);
  }
}
BENCHMARK(BM_Fiber_RawContextSwitchRoundTrip);
}
}

namespace gort {
namespace {

// Current resident set size in bytes, from /proc/self/statm.
long ResidentBytes() {
  long pages_total = 0, pages_resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) {
      pages_resident = 0;
    }
    std::fclose(f);
  }
  return pages_resident * 4096;
}

__attribute__((noinline)) void TouchKilobyteAndSuspend() {
  volatile char buf[1024];
  std::memset(const_cast<char*>(buf), 1, sizeof(buf));
  Fiber::Suspend();
  buf[0] = 2;
}

// N live fibers at once, each having touched 1 KB of its stack and
// suspended: RSS per fiber and the time to get there. range(1): 0 for the
// default stack (256 KiB, guard-paged), 1 for a compact one (2 KiB).
void BM_Fiber_LiveFibers(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  Fiber::Options opts;
  opts.compact_stack = state.range(1) != 0;
  ReleaseStackCache();
  for (auto _ : state) {
    const long rss_before = ResidentBytes();
    auto start = std::chrono::steady_clock::now();
    std::vector<Fiber*> fibers;
    fibers.reserve(n);
    for (int i = 0; i < n; ++i) {
      Fiber* f = Fiber::Create(&TouchKilobyteAndSuspend, opts);
      f->Resume();
      fibers.push_back(f);
    }
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start)
                         .count();
    const long rss_after = ResidentBytes();
    state.counters["create_s"] = seconds;
    state.counters["rss_bytes_per_fiber"] =
        static_cast<double>(rss_after - rss_before) / n;
    state.counters["rss_mb"] = rss_after / (1024.0 * 1024.0);
    for (Fiber* f : fibers) {
      f->Resume();
      Fiber::Destroy(f);
    }
    ReleaseStackCache();
  }
}
BENCHMARK(BM_Fiber_LiveFibers)
    ->Args({100'000, 0})
    ->Args({1'000'000, 0})
    ->Args({100'000, 1})
    ->Args({1'000'000, 1})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gort
