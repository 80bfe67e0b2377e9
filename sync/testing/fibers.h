// Test helpers for //sync's tests with the scheduler linked: observe fibers
// parked with a given wait reason.

#ifndef GORT_SYNC_TESTING_FIBERS_H_
#define GORT_SYNC_TESTING_FIBERS_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "sched/park.h"
#include "sched/sched.h"

namespace gort {
namespace testing {

// Number of live fibers parked with `reason` (a snapshot).
inline int FibersWaiting(WaitReason reason) {
  int n = 0;
  ForEachFiber([&](const FiberInfo& info) {
    if (info.state == FiberInfo::State::kWaiting &&
        info.wait_reason == reason) {
      ++n;
    }
  });
  return n;
}

// Polls until exactly `n` fibers are parked with `reason`. Behaviour, not
// speed: it waits as long as it takes (the test's own timeout is the limit).
inline void AwaitFibersWaiting(WaitReason reason, int n) {
  while (FibersWaiting(reason) != n) absl::SleepFor(absl::Microseconds(200));
}

}  // namespace testing
}  // namespace gort

#endif  // GORT_SYNC_TESTING_FIBERS_H_
