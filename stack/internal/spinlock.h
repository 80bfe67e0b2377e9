// WARNING: internal to gort; not part of its API. It lives in //stack, the
// lowest package, so that every runtime package may use it: //stack's pools
// and gort's channels (target //stack:spinlock, header only: it brings none
// of //stack's code).
//
// A test-and-test-and-set lock for very short critical sections that never
// block while held (a few dozen words copied). Unlock is a plain release
// store, with no read-modify-write, which halves the atomic traffic of a
// lock/unlock pair against a futex lock; under contention a waiter spins
// with exponential `pause` back-off and then yields its thread (so a holder
// that was preempted can run), and never sleeps in the kernel. A futex lock
// costs a wake-up syscall per contended hand-off instead. Meets the Lockable
// requirements (lock/unlock/try_lock) for std::lock_guard. Built on atomics,
// so ThreadSanitizer sees its happens-before edges.
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
  __attribute__((noinline)) void LockSlow() {
    int round = 0;
    do {
      while (locked_.load(std::memory_order_relaxed)) {
        if (round < kPauseRounds) {
          for (int i = 0; i < (4 << round); ++i) Pause();
          ++round;
        } else {
          sched_yield();
        }
      }
    } while (locked_.exchange(true, std::memory_order_acquire));
  }

  // Rounds of 4, 8, ..., 512 pauses (about 2,000 in all) before yielding.
  static constexpr int kPauseRounds = 8;

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
