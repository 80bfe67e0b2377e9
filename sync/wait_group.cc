#include "sync/wait_group.h"

#include <cstdint>
#include <limits>
#include <mutex>
#include <thread>

#include "fiber/internal/fatal.h"

// Invariants:
//  - state_ = counter << 32 | waiters. `waiters` counts the Waiter records in
//    the queue (head_..tail_) of the current round; a waiter is counted (CAS
//    on state_) and queued in one critical section of lock_, so whoever holds
//    lock_ sees exactly `waiters` records queued.
//  - A waiter is only counted while the counter is > 0. So state_ is
//    (0, w > 0) only between the Add/Done that took the counter to zero (the
//    "releaser") and the releaser's state_.store(0): a release window that
//    exactly one task owns. In that window no Wait registers (the counter is
//    0), any Add is fatal (negative, or "Add called concurrently with Wait"),
//    and Wait callers spin until the store.
//  - The releaser detaches the whole queue under lock_, and its store(0) is
//    its last access to *this; the records are then only reachable by it, and
//    each waiter's record stays alive (on its stack) until that waiter is
//    unparked. So a waiter never returns while *this is still being used, and
//    the WaitGroup may be destroyed as soon as any Wait returns.
//  - A waiter is unparked only by the releaser of its own round: reusing the
//    WaitGroup before the previous round's waiters have returned is safe.

namespace gort {
namespace {

using fiber_internal::Fatal;

std::int32_t Counter(std::uint64_t state) {
  return static_cast<std::int32_t>(state >> 32);
}
std::uint32_t Waiters(std::uint64_t state) {
  return static_cast<std::uint32_t>(state);
}

[[noreturn]] void FatalNegative() {
  Fatal("sync: negative WaitGroup counter");
}
[[noreturn]] void FatalConcurrentAdd() {
  Fatal("sync: WaitGroup misuse: Add called concurrently with Wait");
}
[[noreturn]] void FatalOverflow() { Fatal("sync: WaitGroup counter overflow"); }

constexpr std::int64_t kMaxCounter = std::numeric_limits<std::int32_t>::max();

}  // namespace

void WaitGroup::Add(std::int64_t delta) {
  // acq_rel. Release: publishes what this task did before Add/Done to the
  // task that sees the counter reach zero (a Wait's load-acquire of the final
  // state, or the releaser's RMW). Acquire: the releaser's RMW reads the end
  // of the release sequence of every earlier Add/Done (all RMWs), so it
  // passes their writes on to the waiters it unparks and to its store(0).
  //
  // The counter is 32 bits: a delta outside them is fatal here, before it
  // could be truncated (a counter <= INT32_MAX plus a delta < INT32_MIN is
  // negative anyway), and the new counter is computed in 64 bits from the
  // old one, so that one past INT32_MAX is an overflow, not a wrap.
  if (delta > kMaxCounter) FatalOverflow();
  if (delta < -kMaxCounter - 1) FatalNegative();
  const std::uint64_t d = static_cast<std::uint64_t>(delta) << 32;
  const std::uint64_t old = state_.fetch_add(d, std::memory_order_acq_rel);
  const std::int64_t v = std::int64_t{Counter(old)} + delta;
  if (v > kMaxCounter) FatalOverflow();
  if (v < 0) FatalNegative();
  const std::uint64_t s = old + d;
  const std::uint32_t w = Waiters(s);
  // The counter went from 0 to positive while waiters are still counted: we
  // are inside another task's release window (see Invariants).
  if (w != 0 && delta > 0 && v == delta) FatalConcurrentAdd();
  if (v > 0 || w == 0 || delta == 0) return;
  Release(s);
}

void WaitGroup::DoneSlow(std::uint64_t s) {
  if (Counter(s) < 0) FatalNegative();
  if (Waiters(s) == 0) return;  // reached zero, nobody to wake
  Release(s);
}

// Executed only by the releaser: the Add/Done whose RMW took the counter to
// zero with waiters counted. `s` is the state that RMW produced: (0, w > 0).
void WaitGroup::Release(std::uint64_t s) {
  Waiter* head;
  {
    std::lock_guard<sched_internal::Lock> l(lock_);
    // Nobody may change state_ in the release window; an Add that did is
    // also caught by its own check, this one catches it if we got here first.
    if (state_.load(std::memory_order_relaxed) != s) FatalConcurrentAdd();
    head = head_;
    head_ = tail_ = nullptr;
  }
  // store-release, pairs with the load-acquire in Wait(): a Wait that sees 0
  // sees every Done of the round (we acquired them all in our RMW). This is
  // the releaser's last access to *this.
  state_.store(0, std::memory_order_release);
  // Read each record before unparking its owner: once unparked, it may return
  // and its record (on its stack) is gone.
  while (head != nullptr) {
    Waiter* next = head->next;
    const ParkTicket t = head->ticket;
    Unpark(t);  // Unpark publishes our writes (and the acquired Dones) to it
    head = next;
  }
}

void WaitGroup::UnlockQueue(void* wg) {
  static_cast<WaitGroup*>(wg)->lock_.unlock();
}

void WaitGroup::Wait() {
  for (;;) {
    // load-acquire, pairs with the release of the RMW or store that made the
    // state zero (the last Done, or the releaser's store(0)).
    std::uint64_t s = state_.load(std::memory_order_acquire);
    if (s == 0) return;
    if (Counter(s) == 0) {
      // Another task is releasing this round's waiters; it resets state_ to
      // 0 in a few instructions. Returning before that would let our caller
      // destroy the WaitGroup under the releaser's feet.
      std::this_thread::yield();
      continue;
    }
    lock_.lock();
    s = state_.load(std::memory_order_relaxed);
    while (Counter(s) > 0) {
      // Count ourselves. Relaxed: lock_ orders our queueing before the
      // releaser's detach (the releaser's RMW saw this CAS, so by coherence
      // its lock_ section comes after ours).
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_relaxed,
                                       std::memory_order_relaxed)) {
        Waiter me;
        me.ticket = Parker::Current()->Prepare();
        if (tail_ == nullptr) {
          head_ = &me;
        } else {
          tail_->next = &me;
        }
        tail_ = &me;
        // Unlocks lock_ once we are committed to sleeping. Only the releaser
        // of this round holds our ticket, and it unparks us after its last
        // access to *this; no deadline, so ParkUnderLock returns only then.
        ParkUnderLock(me.ticket, WaitReason::kWaitGroup, &UnlockQueue, this);
        return;
      }
    }
    lock_.unlock();  // the counter reached zero meanwhile: start over
  }
}

}  // namespace gort
