#include "sync/mutex.h"

#include <sched.h>

#include <atomic>
#include <cstdint>
#include <thread>

#include "fiber/internal/fatal.h"

// Invariants:
//  - state_ = units << kUnlockerShift | waiters << kWaiterShift |
//    kStarving | kWoken | kLocked; the low bits as in Go's sync.Mutex.
//    `waiters` counts the tasks that have committed, by a successful CAS, to
//    sleep on sema_ and have not been given a token yet. Exactly one token is
//    released per wake-up: by the Unlock whose CAS takes one waiter off the
//    count (normal mode), or by the Unlock that hands the mutex over
//    (starvation mode; the woken waiter then takes itself off the count). So
//    sema_ never holds more tokens than there are counted waiters, and no
//    counted waiter sleeps forever while the mutex is unlocked.
//  - kWoken is set by the Unlock that wakes a waiter (in normal mode), in
//    the same CAS that takes that waiter off the count, and cleared by the
//    woken waiter in its next successful CAS (which locks the mutex or
//    queues it again). While it is set, Unlock wakes nobody: at most one
//    woken waiter competes at a time. (Go's spinners set it too; ours spin
//    only while nobody is queued, see CanSpin.)
//  - kStarving implies waiters >= 1: it is set only by a waiter's CAS that
//    also counts it, on a locked mutex. In starvation mode nobody sets
//    kLocked except the waiter that receives the hand-off: Unlock clears
//    kLocked and gives the oldest waiter the token; that waiter adds kLocked
//    and removes itself (and possibly kStarving) in one CAS. Between
//    the two the mutex looks unlocked, but newcomers only queue.
//  - `units` = (Unlocks that made the mutex lockable and must still look at
//    state_ to decide whether to wake a waiter) + (1 if OwnerCounted(state_)).
//    Go's Unlock releases, then picks a waiter in a second step; our
//    destructor waits until `units` is 0, so that the last user may delete
//    the mutex as soon as its own Unlock returns, even while another task's
//    Unlock, which let it in, is still between its two steps (its thread
//    descheduled there, say). The unit is taken in advance, for the owner:
//    every locker's CAS adds or removes it as OwnerCounted changes (while
//    locked, waiters only queue, kWoken only clears and kStarving only sets,
//    all by lockers' CASes), so that Unlock stays one fetch_sub: if
//    OwnerCounted held before it, the unit is now the unlocker's, and its
//    last access removes it. An Unlock that posts a token to sema_ after its
//    last state_ access needs no unit: the token is owed to a waiter that
//    cannot return from Lock before it arrives, so nobody may destroy the
//    mutex before then, and Sema::Release touches nothing of the Sema after
//    handing the token over.
//  - Ordering: the critical section's writes travel from Unlock's
//    fetch_sub (release) to the next owner's acquire CAS, through the release
//    sequence of the RMWs in between; on a hand-off also through sema_
//    (Release's Unpark, release, and the waiter's Park, acquire). All are
//    atomics or the sched_internal::Lock, so TSan sees every edge; there is
//    no relaxed hand-off needing __tsan_acquire/__tsan_release annotations.

namespace gort {
namespace {

using fiber_internal::Fatal;

// A waiter that has waited longer than this switches the mutex to
// starvation mode (Go's starvationThresholdNs).
constexpr std::int64_t kStarvationThresholdNs = 1'000'000;

// Go's active_spin and active_spin_cnt: at most 4 rounds of 30 pauses.
constexpr int kActiveSpin = 4;
constexpr int kActiveSpinCount = 30;

std::atomic<std::uint64_t> g_starvation_count{0};

int NumCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return CPU_COUNT(&set);
}
// CPUs this process may run on, at start-up (Go's ncpu).
const int g_ncpu = NumCpus();

// Whether a locker that found the mutex held in normal mode should spin
// (Go's sync_runtime_canSpin, adapted). Spinning pays when the owner runs on
// another core and will release the lock within a few hundred nanoseconds,
// and when the spinner is likely to be the next owner; so: a multi-core
// machine, at most kActiveSpin rounds, and nobody queued yet. Go also
// refuses to spin while the caller's P has other goroutines to run; the
// parking API does not show run queues, and queued waiters are our sign of
// the same over-subscription: with waiters queued, a spinner competes with
// the woken waiter, keeps the lock's cache line moving between cores and
// burns time that other fibers on its P could use. (Measured on the 2-vCPU
// VM, W7 with 8 fibers on 2 Ps: 36-52 ns per increment with Go's rule,
// about 21 ns with this one; see docs/sync.md.)
bool CanSpin(int iter, bool waiters_queued) {
  return iter < kActiveSpin && g_ncpu > 1 && !waiters_queued;
}

void DoSpin() {
  for (int i = 0; i < kActiveSpinCount; ++i) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
}

}  // namespace

namespace sync_internal {
std::uint64_t MutexStarvationCount() {
  return g_starvation_count.load(std::memory_order_relaxed);
}
}  // namespace sync_internal

// Go's lockSlow, state for state. `reason` is what fiber dumps show while
// we sleep (RWMutex::Lock passes kRWMutexWrite).
void Mutex::LockSlow(WaitReason reason) {
  std::int64_t wait_start = 0;  // when we first queued; 0: never
  bool starving = false;        // we have waited longer than the threshold
  bool awoke = false;           // Unlock woke us and set kWoken for us
  int iter = 0;
  std::int64_t old = state_.load(std::memory_order_relaxed);
  for (;;) {
    // Spin only while the mutex is locked in normal mode: in starvation mode
    // it is handed to the waiters, so we could not get it anyway.
    // (Go's spinner also sets kWoken so that Unlock wakes nobody while it
    // spins; ours spin only while nobody is queued, so there is no one to
    // keep asleep.)
    if ((old & (kLocked | kStarving)) == kLocked &&
        CanSpin(iter, /*waiters_queued=*/Waiters(old) != 0)) {
      DoSpin();
      ++iter;
      old = state_.load(std::memory_order_relaxed);
      continue;
    }
    std::int64_t next = old;
    // Newcomers do not grab a starving mutex: it belongs to the waiters.
    if ((old & kStarving) == 0) next |= kLocked;
    if ((old & (kLocked | kStarving)) != 0) next += kWaiter;
    // Switch to starvation mode, but only if the mutex is locked: Unlock
    // expects a starving mutex to have waiters, and we might not wait.
    if (starving && (old & kLocked) != 0) next |= kStarving;
    if (awoke) {
      if ((next & kWoken) == 0) Fatal("sync: inconsistent mutex state");
      next &= ~kWoken;  // we own it; clear it whether we lock or sleep
    }
    next = WithOwnerUnit(old, next);
    // CAS-acquire: when it takes the lock, pairs with Unlock's release.
    if (!state_.compare_exchange_weak(old, next, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
      continue;  // `old` is fresh
    }
    if ((old & (kLocked | kStarving)) == 0) return;  // locked it
    if ((next & kStarving) != 0 && (old & kStarving) == 0) {
      g_starvation_count.fetch_add(1, std::memory_order_relaxed);
    }
    if (starving && (next & kStarving) != 0) {
      if (void (*hook)(const Mutex*) =
              sync_internal::mutex_starving_waiter_hook.load(
                  std::memory_order_relaxed)) {
        hook(this);
      }
    }
    // Counted as a waiter: sleep. A waiter that was woken and lost the race
    // goes back to the front of the queue.
    const bool lifo = wait_start != 0;
    if (wait_start == 0) wait_start = MonoNow();
    sema_.Acquire(reason, lifo);
    starving = starving || MonoNow() - wait_start > kStarvationThresholdNs;
    old = state_.load(std::memory_order_relaxed);
    if ((old & kStarving) != 0) {
      // Handed off to us: kLocked is clear and we are still counted as a
      // waiter. Take the lock and leave the count in one step (a CAS: the
      // owner's unit depends on the waiters left, which newcomers change).
      for (;;) {
        if ((old & (kLocked | kWoken)) != 0 || Waiters(old) == 0) {
          Fatal("sync: inconsistent mutex state");
        }
        next = old + kLocked - kWaiter;
        // Leave starvation mode if we did not wait long or are the last
        // waiter: two tasks could otherwise hand the lock back and forth
        // in lock step forever, and starvation mode is slow.
        if (!starving || Waiters(old) == 1) next &= ~kStarving;
        // acquire: with the Unpark we returned from, orders the previous
        // owner's critical section before ours.
        if (state_.compare_exchange_weak(old, WithOwnerUnit(old, next),
                                         std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
          if ((next & kStarving) == 0) {
            if (void (*hook)(const Mutex*) =
                    sync_internal::mutex_starvation_exit_hook.load(
                        std::memory_order_relaxed)) {
              hook(this);
            }
          }
          return;
        }
      }
    }
    // Normal mode: the Unlock that woke us set kWoken for us; compete.
    awoke = true;
    iter = 0;
  }
}

// Executed by the unlocker when state_ was not just kLocked; `old` is the
// state before its fetch_sub.
void Mutex::UnlockSlow(std::int64_t old) {
  if ((old & kLocked) == 0) Fatal("sync: unlock of unlocked mutex");
  if ((old & kStarving) != 0) {
    // Starvation mode: hand the mutex to the oldest waiter. kLocked stays
    // clear; newcomers see kStarving and queue behind it. The token is owed
    // to a waiter, so the mutex stays alive (see the invariants).
    sema_.Release();
    return;
  }
  // Nobody to wake, or a woken waiter competes: done. Otherwise our unit
  // was in state_ and is ours now: we are an unlocker still at work.
  if (!OwnerCounted(old)) return;
  if (void (*hook)() = sync_internal::mutex_unlock_window_hook.load(
          std::memory_order_relaxed)) {
    hook();
  }
  old -= kLocked;
  for (;;) {
    // Someone took the lock meanwhile (its Unlock will wake), or a waiter
    // took off: uncount ourselves, our last access. release: pairs with
    // the destructor's acquire.
    if (Waiters(old) == 0 || (old & (kLocked | kWoken | kStarving)) != 0) {
      state_.fetch_sub(kUnlocker, std::memory_order_release);
      return;
    }
    // Take one waiter off the count, mark it woken and uncount ourselves,
    // then wake it. The woken waiter orders itself after us through its
    // acquire CAS on state_ (reading the release sequence of our fetch_sub)
    // and the Sema; the destructor, through this CAS (release) or through
    // the waiter, which cannot leave Lock before our token.
    const std::int64_t next = old - kWaiter + kWoken - kUnlocker;
    if (state_.compare_exchange_weak(old, next, std::memory_order_release,
                                     std::memory_order_relaxed)) {
      sema_.Release();
      return;
    }
  }
}

void Mutex::AwaitUnlockers() {
  // An unlocker is a few instructions from its last access, unless its
  // thread was preempted there: let it run.
  while (UnlockersAtWork(state_.load(std::memory_order_acquire))) {
    std::this_thread::yield();
  }
}

}  // namespace gort
