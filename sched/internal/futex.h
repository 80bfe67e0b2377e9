// WARNING: internal to gort's //sched; not part of its API.
//
// Linux futex wrappers and the monotonic clock gort's runtime uses.

#ifndef GORT_SCHED_INTERNAL_FUTEX_H_
#define GORT_SCHED_INTERNAL_FUTEX_H_

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <limits>

namespace gort {
namespace sched_internal {

inline constexpr std::int64_t kNoDeadline =
    std::numeric_limits<std::int64_t>::max();

// Nanoseconds on CLOCK_MONOTONIC.
inline std::int64_t MonoNow() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Sleeps while *addr == expected, until woken or until `deadline` (absolute
// CLOCK_MONOTONIC ns; kNoDeadline waits forever). Spurious returns happen:
// callers re-check their condition.
inline void FutexWait(std::atomic<std::uint32_t>* addr, std::uint32_t expected,
                      std::int64_t deadline = kNoDeadline) {
  timespec ts;
  timespec* tsp = nullptr;
  if (deadline != kNoDeadline) {
    if (deadline < 0) deadline = 0;
    ts.tv_sec = deadline / 1'000'000'000;
    ts.tv_nsec = deadline % 1'000'000'000;
    tsp = &ts;
  }
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC timeout.
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr),
          FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected, tsp, nullptr,
          FUTEX_BITSET_MATCH_ANY);
}

inline void FutexWake(std::atomic<std::uint32_t>* addr, int count = 1) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr),
          FUTEX_WAKE | FUTEX_PRIVATE_FLAG, count, nullptr, nullptr, 0);
}

// A small mutex for the runtime's own short critical sections: spins
// briefly, then sleeps on a futex. Built on atomics so that ThreadSanitizer
// sees its happens-before edges (Debian's Abseil is not instrumented).
class Lock {
 public:
  void lock() {
    std::uint32_t c = 0;
    if (state_.compare_exchange_strong(c, 1, std::memory_order_acquire)) {
      return;
    }
    LockSlow();
  }
  bool try_lock() {
    std::uint32_t c = 0;
    return state_.compare_exchange_strong(c, 1, std::memory_order_acquire);
  }
  void unlock() {
    // store-release via exchange; pairs with the acquire in lock(). The
    // exchange is our last memory access: the object holding this lock may
    // be destroyed by whoever takes it next (the reference-count pattern
    // the sync primitives allow), so the FutexWake that may follow only
    // names the address in a syscall, as glibc's mutexes do: on a reused
    // address it is at worst a spurious wake, which FutexWait's callers
    // tolerate.
    if (state_.exchange(0, std::memory_order_release) == 2) FutexWake(&state_);
  }

 private:
  void LockSlow() {
    for (int spin = 0; spin < 100; ++spin) {
      std::uint32_t c = 0;
      if (state_.load(std::memory_order_relaxed) == 0 &&
          state_.compare_exchange_weak(c, 1, std::memory_order_acquire)) {
        return;
      }
#if defined(__x86_64__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    }
    // 2 = locked with (possible) sleepers.
    while (state_.exchange(2, std::memory_order_acquire) != 0) {
      FutexWait(&state_, 2);
    }
  }

  std::atomic<std::uint32_t> state_{0};  // 0 free, 1 locked, 2 contended
};

}  // namespace sched_internal
}  // namespace gort

#endif  // GORT_SCHED_INTERNAL_FUTEX_H_
