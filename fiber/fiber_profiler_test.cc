// gperftools' CPU profiler on fiber-heavy code: SIGPROF lands in the middle
// of switches, on fiber stacks, and the profile it writes records samples.
// (Under ASan/TSan the profiler is not linked: tools/build_defs.bzl.)

#include <sys/stat.h>

#include <cstdlib>
#include <string>

#include "fiber/fiber.h"
#include "gtest/gtest.h"

#if !defined(GORT_SANITIZED)
#include <gperftools/profiler.h>
#endif

namespace gort {
namespace {

TEST(FiberProfilerTest, SigprofDuringSwitchesIsSafeAndSampled) {
#if defined(GORT_SANITIZED)
  GTEST_SKIP() << "the CPU profiler is not linked under sanitizers";
#else
  const std::string path = ::testing::TempDir() + "/fiber_profile.prof";
  ASSERT_TRUE(ProfilerStart(path.c_str()));
  // Switch-heavy work until enough SIGPROFs have landed (bounded).
  ProfilerState st{};
  bool done = false;
  Fiber* f = Fiber::Create([&] {
    while (!done) Fiber::Suspend();
  });
  for (int round = 0; round < 20000; ++round) {
    for (int i = 0; i < 100000; ++i) f->Resume();
    for (int i = 0; i < 1000; ++i) {
      Fiber* g = Fiber::Create([] {});
      g->Resume();
      Fiber::Destroy(g);
    }
    ProfilerGetCurrentState(&st);
    if (st.samples_gathered >= 50) break;  // 100 Hz by default
  }
  done = true;
  f->Resume();
  Fiber::Destroy(f);
  ProfilerStop();
  EXPECT_GE(st.samples_gathered, 50);
  struct stat sb;
  ASSERT_EQ(stat(path.c_str(), &sb), 0);
  EXPECT_GT(sb.st_size, 0);
#endif
}

}  // namespace
}  // namespace gort
