// A GoogleTest fixture for tests that need the scheduler: each test gets a
// fresh runtime with GetParam() Ps and fails if it leaks a fiber.
//
//   class MyTest : public gort::testing::RuntimeTest {};
//   INSTANTIATE_TEST_SUITE_P(Procs, MyTest, ::testing::Values(1, 2, 4),
//                            gort::testing::ProcsName);

#ifndef GORT_SCHED_TESTING_RUNTIME_TEST_H_
#define GORT_SCHED_TESTING_RUNTIME_TEST_H_

#include <string>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "sched/sched.h"

namespace gort {
namespace testing {

// Heavy stress loops divide their counts by this under ASan/TSan
// (GORT_SANITIZED comes from tools/build_defs.bzl).
#if defined(GORT_SANITIZED)
inline constexpr int kStressScale = 10;
#else
inline constexpr int kStressScale = 1;
#endif

class RuntimeTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    RuntimeOptions options;
    options.max_procs = GetParam();
    Start(options);
  }
  void TearDown() override {
    EXPECT_TRUE(Shutdown(absl::Seconds(60))) << "fibers leaked";
    EXPECT_FALSE(Running());
  }
};

inline std::string ProcsName(const ::testing::TestParamInfo<int>& info) {
  return "P" + std::to_string(info.param);
}

}  // namespace testing
}  // namespace gort

#endif  // GORT_SCHED_TESTING_RUNTIME_TEST_H_
