// WARNING: internal to //stack. Do not include it outside //stack; it may
// change without notice.
//
// A small test-and-test-and-set lock for the shared stack pools, whose
// critical sections copy a few dozen words. Under contention a std::mutex
// sleeps in futex(2) and costs a wake-up syscall per hand-off; this lock spins
// briefly, then yields the CPU (so a preempted holder can run) and never
// sleeps in the kernel. Meets the Lockable requirements (lock/unlock/try_lock)
// for std::lock_guard.
//
// Threading: any thread may call lock()/try_lock(); unlock() only by the
// holder. Everything the holder did before unlock() is visible to the next
// thread that acquires the lock (release store / acquire exchange).

#ifndef GORT_STACK_INTERNAL_SPINLOCK_H_
#define GORT_STACK_INTERNAL_SPINLOCK_H_

#include <sched.h>

#include <atomic>

namespace gort::stack_internal {

class SpinLock {
 public:
  void lock() {
    // Acquire, pairs with the release store in unlock().
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    LockSlow();
  }

  bool try_lock() {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }

  // Release, pairs with the acquire exchanges in lock() and try_lock().
  void unlock() { locked_.store(false, std::memory_order_release); }

 private:
  void LockSlow() {
    int spins = 0;
    do {
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins < kSpinsBeforeYield) {
          ++spins;
          Pause();
        } else {
          sched_yield();
        }
      }
    } while (locked_.exchange(true, std::memory_order_acquire));
  }

  static constexpr int kSpinsBeforeYield = 128;

  static void Pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
  }

  std::atomic<bool> locked_{false};
};

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_SPINLOCK_H_
