// A minimal WaitGroup-like counter for //sched's own tests and benchmarks,
// built on the parking API only (//sync has the real WaitGroup). Any number
// of waiters, fibers or threads.

#ifndef GORT_SCHED_TESTING_LATCH_H_
#define GORT_SCHED_TESTING_LATCH_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "sched/internal/futex.h"
#include "sched/park.h"

namespace gort {
namespace testing {

class Latch {
 public:
  explicit Latch(std::int64_t count = 0) : count_(count) {}

  void Add(std::int64_t n) { count_.fetch_add(n, std::memory_order_relaxed); }

  void Done() {
    if (count_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    std::vector<ParkTicket> waiters;
    {
      std::lock_guard<sched_internal::Lock> l(lock_);
      waiters.swap(waiters_);
    }
    for (ParkTicket t : waiters) Unpark(t);
  }

  void Wait() {
    for (;;) {
      lock_.lock();
      if (count_.load(std::memory_order_acquire) == 0) {
        lock_.unlock();
        return;
      }
      ParkTicket t = Parker::Current()->Prepare();
      waiters_.push_back(t);
      Park(t, WaitReason::kWaitGroup, &Unlock, &lock_);
    }
  }

  std::int64_t count() const { return count_.load(std::memory_order_acquire); }

 private:
  static bool Unlock(void* lock) {
    static_cast<sched_internal::Lock*>(lock)->unlock();
    return true;
  }

  std::atomic<std::int64_t> count_;
  sched_internal::Lock lock_;
  std::vector<ParkTicket> waiters_;
};

}  // namespace testing
}  // namespace gort

#endif  // GORT_SCHED_TESTING_LATCH_H_
