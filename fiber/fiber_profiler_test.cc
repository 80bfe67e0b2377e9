// gperftools' CPU profiler on fiber-heavy code: SIGPROF lands in the middle
// of switches, on fiber stacks, and the profile it writes records samples.
// (Under ASan/TSan the profiler is not linked: tools/build_defs.bzl.)

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fiber/fiber.h"
#include "gtest/gtest.h"

#if !defined(GORT_SANITIZED)
#include <gperftools/profiler.h>

extern "C" const char __start_gort_prof_leaf[], __stop_gort_prof_leaf[];
extern "C" const char __start_gort_prof_body[], __stop_gort_prof_body[];
#endif

namespace gort {
namespace {

#if !defined(GORT_SANITIZED)
constexpr int kSamples = 50;  // half a second at the default 100 Hz

// Runs `step` until the profiler has gathered kSamples samples, or
// `max_rounds` times (bounded: a broken profiler must not hang the test).
// Returns the samples gathered.
template <typename Step>
int SampleWhileRunning(int max_rounds, Step step) {
  ProfilerState st{};
  for (int round = 0; round < max_rounds; ++round) {
    step();
    ProfilerGetCurrentState(&st);
    if (st.samples_gathered >= kSamples) break;
  }
  return st.samples_gathered;
}
#endif

TEST(FiberProfilerTest, SigprofDuringSwitchesIsSafeAndSampled) {
#if defined(GORT_SANITIZED)
  GTEST_SKIP() << "the CPU profiler is not linked under sanitizers";
#else
  const std::string path = ::testing::TempDir() + "/fiber_profile.prof";
  ASSERT_TRUE(ProfilerStart(path.c_str()));
  // Switch-heavy work until enough SIGPROFs have landed.
  bool done = false;
  Fiber* f = Fiber::Create([&] {
    while (!done) Fiber::Suspend();
  });
  const int samples = SampleWhileRunning(20000, [&] {
    for (int i = 0; i < 100000; ++i) f->Resume();
    for (int i = 0; i < 1000; ++i) {
      Fiber* g = Fiber::Create([] {});
      g->Resume();
      Fiber::Destroy(g);
    }
  });
  done = true;
  f->Resume();
  Fiber::Destroy(f);
  ProfilerStop();
  EXPECT_GE(samples, kSamples);
  struct stat sb;
  ASSERT_EQ(stat(path.c_str(), &sb), 0);
  EXPECT_GT(sb.st_size, 0);
#endif
}

#if !defined(GORT_SANITIZED)
// Code that runs only on the fiber below, each function in a section of its
// own, whose bounds the linker defines (__start_<name>, __stop_<name>, at
// the top of this file): a profile's PCs can be attributed to them exactly.
__attribute__((noinline, section("gort_prof_leaf"))) void FiberHotLoop() {
  for (int i = 0; i < 20000; ++i) asm volatile("");
}

__attribute__((noinline, section("gort_prof_body"))) void FiberBody(
    const std::atomic<bool>* done) {
  while (!done->load(std::memory_order_relaxed)) {
    FiberHotLoop();
    Fiber::Suspend();
  }
}

bool In(std::uintptr_t pc, const char* start, const char* stop) {
  return pc >= reinterpret_cast<std::uintptr_t>(start) &&
         pc < reinterpret_cast<std::uintptr_t>(stop);
}
#endif

// The profile shows the fiber's own frames. gperftools' CPU profile is,
// in machine words: a header {0, 3, 0, period, 0}, then one record
// {count, depth, pc[depth]} per distinct stack, ended by {0, 1, 0}, then
// the text of /proc/self/maps. The fiber spends nearly all its time in
// FiberHotLoop, called by FiberBody: most samples must have a PC in
// FiberHotLoop (where SIGPROF landed), and most of those, further up the
// same stack, a return address in FiberBody (the unwinder walked the
// fiber's stack).
TEST(FiberProfilerTest, ProfileShowsTheFibersOwnFrames) {
#if defined(GORT_SANITIZED)
  GTEST_SKIP() << "the CPU profiler is not linked under sanitizers";
#else
  const std::string path = ::testing::TempDir() + "/fiber_frames.prof";
  ASSERT_TRUE(ProfilerStart(path.c_str()));
  std::atomic<bool> done{false};
  Fiber* f = Fiber::Create([&] { FiberBody(&done); });
  const int gathered = SampleWhileRunning(1'000'000, [&] {
    for (int i = 0; i < 100; ++i) f->Resume();
  });
  done = true;
  f->Resume();
  Fiber::Destroy(f);
  ProfilerStop();
  ASSERT_GE(gathered, kSamples);

  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  std::vector<std::uintptr_t> words(bytes.size() / sizeof(std::uintptr_t));
  std::memcpy(words.data(), bytes.data(), words.size() * sizeof(words[0]));
  ASSERT_GE(words.size(), 8u);
  EXPECT_EQ(words[0], 0u);
  EXPECT_EQ(words[1], 3u);
  EXPECT_EQ(words[2], 0u);
  EXPECT_EQ(words[4], 0u);
  std::uint64_t samples = 0, in_leaf = 0, in_leaf_and_body = 0;
  std::size_t i = 5;
  bool ended = false;
  while (i + 2 <= words.size()) {
    const std::uintptr_t count = words[i], depth = words[i + 1];
    ASSERT_LE(i + 2 + depth, words.size()) << "a truncated record";
    if (count == 0 && depth == 1 && words[i + 2] == 0) {
      ended = true;
      break;
    }
    bool leaf = false, body = false;
    for (std::size_t k = 0; k < depth; ++k) {
      const std::uintptr_t pc = words[i + 2 + k];
      if (In(pc, __start_gort_prof_leaf, __stop_gort_prof_leaf)) leaf = true;
      if (leaf && In(pc, __start_gort_prof_body, __stop_gort_prof_body)) {
        body = true;
      }
    }
    samples += count;
    if (leaf) in_leaf += count;
    if (leaf && body) in_leaf_and_body += count;
    i += 2 + depth;
  }
  EXPECT_TRUE(ended) << "no end-of-profile record";
  std::printf(
      "samples %llu: %llu in FiberHotLoop, %llu of them via FiberBody\n",
      static_cast<unsigned long long>(samples),
      static_cast<unsigned long long>(in_leaf),
      static_cast<unsigned long long>(in_leaf_and_body));
  EXPECT_GT(in_leaf, samples / 2);
  EXPECT_GT(in_leaf_and_body, in_leaf / 2);
#endif
}

}  // namespace
}  // namespace gort
