// Test helpers for //sync's tests with the scheduler linked: observe fibers
// parked with a given wait reason; run one task body in fibers and threads
// at once. Call them from the test's own (plain) thread.

#ifndef GORT_SYNC_TESTING_FIBERS_H_
#define GORT_SYNC_TESTING_FIBERS_H_

#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "sched/park.h"
#include "sched/sched.h"
#include "sync/wait_group.h"

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

// Runs work(i) in `fibers` fibers (i = 0 .. fibers-1) and in `threads`
// plain threads (i = fibers .. fibers+threads-1) at once; returns when all
// have finished. Each call gets a distinct i (a seed, say).
template <typename F>
void RunInFibersAndThreads(int fibers, int threads, F work) {
  WaitGroup wg;
  wg.Add(fibers);
  for (int f = 0; f < fibers; ++f) {
    Go([&wg, &work, f] {
      work(f);
      wg.Done();
    });
  }
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) ts.emplace_back(work, fibers + t);
  wg.Wait();
  for (auto& t : ts) t.join();
}

}  // namespace testing
}  // namespace gort

#endif  // GORT_SYNC_TESTING_FIBERS_H_
