// WARNING: internal to gort; not part of its API.
//
// SpinLock: the lock of gort's channels and other very short critical
// sections that never block while held. Unlock is a plain release store
// (no read-modify-write), which halves the atomic traffic of a
// lock/unlock pair compared with a futex lock; a waiter spins with
// exponential `pause` back-off and then yields its thread, so a holder that
// was preempted gets the CPU back. Built on atomics so that ThreadSanitizer
// sees its happens-before edges.

#ifndef GORT_SCHED_INTERNAL_SPIN_LOCK_H_
#define GORT_SCHED_INTERNAL_SPIN_LOCK_H_

#include <sched.h>

#include <atomic>
#include <cstdint>

namespace gort {
namespace sched_internal {

inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class SpinLock {
 public:
  void lock() {
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    LockSlow();
  }
  bool try_lock() {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  __attribute__((noinline)) void LockSlow() {
    int round = 0;
    do {
      while (locked_.load(std::memory_order_relaxed)) {
        if (round < 8) {
          for (int i = 0; i < (4 << round); ++i) CpuRelax();
          ++round;
        } else {
          sched_yield();
        }
      }
    } while (locked_.exchange(true, std::memory_order_acquire));
  }

  std::atomic<bool> locked_{false};
};

}  // namespace sched_internal
}  // namespace gort

#endif  // GORT_SCHED_INTERNAL_SPIN_LOCK_H_
