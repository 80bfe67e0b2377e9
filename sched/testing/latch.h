// A minimal WaitGroup-like counter for //sched's own tests and benchmarks,
// built on the parking API only (//sync has the real WaitGroup). Any number
// of waiters, fibers or threads. It allocates nothing: each waiter's
// record lives on its own stack, so tests can count the runtime's own
// allocations around it.

#ifndef GORT_SCHED_TESTING_LATCH_H_
#define GORT_SCHED_TESTING_LATCH_H_

#include <atomic>
#include <cstdint>
#include <mutex>

#include "sched/internal/futex.h"
#include "sched/park.h"

namespace gort {
namespace testing {

class Latch {
 public:
  explicit Latch(std::int64_t count = 0) : count_(count) {}

  void Add(std::int64_t n) { count_.fetch_add(n, std::memory_order_relaxed); }

  void Done() {
    // Not the last: this decrement releases nobody. acq_rel, as the last
    // one's: it publishes our writes to the waiters.
    std::int64_t c = count_.load(std::memory_order_relaxed);
    while (c > 1) {
      if (count_.compare_exchange_weak(c, c - 1, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        return;
      }
    }
    // Maybe the last: decrement under the lock. Wait() reads the count under
    // it too, so a waiter cannot see zero, return and destroy the latch (it
    // is usually on the waiter's stack) while we still use it. Decremented
    // outside the lock, a waiter that came by between our decrement and our
    // lock returned at once, and we then locked a dead latch (seen as a
    // hang of sched_bench, 2026-11-28).
    Waiter* waiters;
    {
      std::lock_guard<sched_internal::Lock> l(lock_);
      if (count_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      waiters = waiters_;
      waiters_ = nullptr;
    }
    // The records are ours now; the latch may already be gone. A record
    // lives until its waiter is unparked: read it before the Unpark.
    while (waiters != nullptr) {
      const ParkTicket t = waiters->ticket;
      waiters = waiters->next;
      Unpark(t);
    }
  }

  void Wait() {
    for (;;) {
      lock_.lock();
      if (count_.load(std::memory_order_acquire) == 0) {
        lock_.unlock();
        return;
      }
      Waiter me{Parker::Current()->Prepare(), waiters_};
      waiters_ = &me;
      Park(me.ticket, WaitReason::kWaitGroup, &Unlock, &lock_);
    }
  }

  std::int64_t count() const { return count_.load(std::memory_order_acquire); }

 private:
  static bool Unlock(void* lock) {
    static_cast<sched_internal::Lock*>(lock)->unlock();
    return true;
  }

  struct Waiter {
    ParkTicket ticket;
    Waiter* next;
  };

  std::atomic<std::int64_t> count_;
  sched_internal::Lock lock_;
  Waiter* waiters_ = nullptr;  // a stack of the parked waiters' records
};

}  // namespace testing
}  // namespace gort

#endif  // GORT_SCHED_TESTING_LATCH_H_
