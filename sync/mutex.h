// gort/sync/mutex.h: sync.Mutex — a mutual exclusion lock for fibers and
// threads.
//
//   gort::Mutex mu;
//   int balance = 0;                     // guarded by mu
//
//   gort::Go([&] {
//     std::lock_guard<gort::Mutex> l(mu);
//     balance += 100;
//   });
//   {
//     mu.Lock();
//     balance -= 50;
//     mu.Unlock();
//   }
//
// Lockers may be fibers run by gort's scheduler or plain OS threads, in any
// mix. A task that cannot get the lock may spin briefly (on a multi-core
// machine, while nobody is queued), then parks if it is a fiber
// (WaitReason::kMutex, "sync.Mutex.Lock" in fiber dumps), leaving its OS
// thread to other fibers, or sleeps on a futex if it is a thread. Only
// //sched:park is needed: without the scheduler linked, Mutex works between
// threads.
//
// Fairness (Go's): in normal mode waiters queue in FIFO order, but a woken
// waiter competes with newly arriving lockers, which usually win (they are
// already running); a woken waiter that loses goes back to the FRONT of the
// queue. A waiter that has waited for more than 1 ms switches the mutex to
// starvation mode: Unlock then hands ownership directly to the oldest
// waiter, and newcomers neither spin nor grab the lock but queue at the
// back. The mutex returns to normal mode when the waiter that received it
// was the last one or had waited for less than 1 ms.
//
// Threading rules (Go's):
//  - Lock, Unlock and TryLock may be called from any fiber or thread.
//  - The Mutex is not recursive: a task that locks it twice deadlocks.
//  - A locked Mutex is not tied to a task: one fiber may Lock it and another
//    fiber or a thread Unlock it.
//  - It is a fatal error (the process prints "fatal: sync: unlock of
//    unlocked mutex" and aborts) to Unlock a Mutex that is not locked.
//  - A Mutex may be destroyed once it is unlocked and no call on it will be
//    made, even while the Unlock() that let the destroyer in is still
//    returning (the reference-count pattern: lock, drop the last reference,
//    unlock, delete): the destructor waits for such an Unlock to finish.
//  - A fiber must not wait in Lock inside the function it passes to
//    gort::Blocking(): parking there is fatal (see sched.h).
//
// Memory ordering: everything a task did before Unlock() is visible to the
// task whose Lock() (or successful TryLock()) next acquires the mutex: the
// n'th Unlock synchronizes with the (n+1)'th Lock, as in Go's memory model.
//
// Cost: an uncontended Lock/Unlock pair is one compare-and-swap and one
// atomic subtraction, both inlined. See docs/sync.md for the design.
//
// Also usable as a C++ Lockable: std::lock_guard, std::unique_lock,
// std::scoped_lock.

#ifndef GORT_SYNC_MUTEX_H_
#define GORT_SYNC_MUTEX_H_

#include <atomic>
#include <cstdint>

#include "sched/park.h"
#include "sync/internal/sema.h"

namespace gort {

class RWMutex;
namespace sync_internal {
struct MutexPeer;  // test-only access, defined by tests
}  // namespace sync_internal

class Mutex {
 public:
  constexpr Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;
  // Waits for an Unlock() that is still returning (see above). Destroying
  // a mutex that is locked or waited for is undefined, as for std::mutex
  // (it does not hang here: only unlockers' units are waited for). Not
  // trivially destructible, so a static Mutex registers an exit-time
  // destructor, as a static std::mutex does.
  ~Mutex() {
    // acquire: pairs with the release of an unlocker's last access.
    if (UnlockersAtWork(state_.load(std::memory_order_acquire))) {
      AwaitUnlockers();
    }
  }

  // Locks the mutex, blocking the calling fiber or thread until it is
  // available.
  void Lock() { LockFor(WaitReason::kMutex); }

  // Locks the mutex if that is possible without waiting; returns whether it
  // did. Fails while the mutex is locked or in starvation mode (it belongs
  // to the queued waiters then). Go's Mutex.TryLock.
  bool TryLock() {
    std::int64_t old = state_.load(std::memory_order_relaxed);
    if ((old & (kLocked | kStarving)) != 0) return false;
    // CAS-acquire, as in Lock(). A waiter may be queued: we are running and
    // may take the lock before it wakes (normal mode only).
    return state_.compare_exchange_strong(
        old, WithOwnerUnit(old, old | kLocked), std::memory_order_acquire,
        std::memory_order_relaxed);
  }

  // Unlocks the mutex. Fatal if it is not locked.
  void Unlock() {
    // Release, pairs with the acquire of the next Lock.
    const std::int64_t old =
        state_.fetch_sub(kLocked, std::memory_order_release);
    if (old != kLocked) UnlockSlow(old);  // waiters, or not locked at all
  }

  // C++ Lockable spelling.
  void lock() { Lock(); }
  void unlock() { Unlock(); }
  bool try_lock() { return TryLock(); }

 private:
  friend class RWMutex;
  friend struct sync_internal::MutexPeer;

  // state_ bits: Go's sync.Mutex.state, plus a count of units, one for
  // each Unlock still between its release and its last access, and one for
  // the owner while OwnerCounted (see mutex.cc).
  static constexpr std::int64_t kLocked = 1;    // held
  static constexpr std::int64_t kWoken = 2;     // a woken waiter competes
  static constexpr std::int64_t kStarving = 4;  // starvation mode
  static constexpr int kWaiterShift = 3;        // bits 3-34: waiter count
  static constexpr std::int64_t kWaiter = std::int64_t{1} << kWaiterShift;
  static constexpr int kUnlockerShift = 35;  // bits 35-62: units
  static constexpr std::int64_t kUnlocker = std::int64_t{1} << kUnlockerShift;
  static std::int64_t Waiters(std::int64_t s) {
    return (s >> kWaiterShift) & ((std::int64_t{1} << 32) - 1);
  }
  // Whether the owner's Unlock will have to look at state_ again, to wake a
  // waiter: it is locked in normal mode, with waiters and none woken.
  static bool OwnerCounted(std::int64_t s) {
    return (s & (kLocked | kWoken | kStarving)) == kLocked && Waiters(s) != 0;
  }
  // Whether some Unlock is between its release and its last access: the
  // units beyond the owner's own.
  static bool UnlockersAtWork(std::int64_t s) {
    return (s >> kUnlockerShift) > (OwnerCounted(s) ? 1 : 0);
  }
  // `next`, a locker's CAS target from `old`, with the owner's unit added
  // or removed as OwnerCounted changes.
  static std::int64_t WithOwnerUnit(std::int64_t old, std::int64_t next) {
    return next + (OwnerCounted(next) - OwnerCounted(old)) * kUnlocker;
  }

  // Lock(), sleeping with `reason` if it must (RWMutex's writers pass
  // kRWMutexWrite).
  void LockFor(WaitReason reason) {
    std::int64_t unlocked = 0;
    // CAS-acquire, pairs with the release in Unlock() (directly, or through
    // the release sequence of later read-modify-writes of state_).
    if (state_.compare_exchange_weak(unlocked, kLocked,
                                     std::memory_order_acquire,
                                     std::memory_order_relaxed)) {
      return;
    }
    LockSlow(reason);
  }
  void LockSlow(WaitReason reason);
  void UnlockSlow(std::int64_t old);
  void AwaitUnlockers();

  std::atomic<std::int64_t> state_{0};
  // Waiters sleep here; Unlock releases one token per wake-up or hand-off.
  sync_internal::Sema sema_;
};

namespace sync_internal {

// For tests: how many times, process-wide, some Mutex switched to
// starvation mode. A snapshot.
std::uint64_t MutexStarvationCount();

// For tests: when set, a waiter that has waited longer than the starvation
// threshold calls it, on its own fiber or thread, each time it queues again
// with the mutex in starvation mode (having switched it to that mode, or
// found it there): from then on Unlock hands the mutex to the oldest
// waiter, and this one is at the front of the queue. Lets a test tell
// which waiter starved. Not for production use.
inline std::atomic<void (*)(const Mutex*)> mutex_starving_waiter_hook{nullptr};

// For tests: when set, a waiter that was handed the mutex in starvation
// mode and switched it back to normal mode (it had waited less than the
// threshold, or was the last waiter) calls it, on its own fiber or thread,
// after taking the lock. A starving waiter that had queued at the front
// loses its claim to the next hand-off then (Go's rule too): a test that
// bounds its wait must know. Not for production use.
inline std::atomic<void (*)(const Mutex*)> mutex_starvation_exit_hook{nullptr};

// For tests: when set, every Unlock that may have to wake a waiter calls it
// between making the mutex lockable and deciding whom to wake: the window
// in which the unlocker must keep the mutex alive. Not for production use.
inline std::atomic<void (*)()> mutex_unlock_window_hook{nullptr};

}  // namespace sync_internal
}  // namespace gort

#endif  // GORT_SYNC_MUTEX_H_
