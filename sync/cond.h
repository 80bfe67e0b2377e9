// gort/sync/cond.h: sync.Cond — a condition variable for fibers and threads.
//
//   gort::Mutex mu;
//   gort::Cond cond(&mu);
//   std::deque<Job> queue;                // guarded by mu
//
//   // consumer
//   mu.Lock();
//   while (queue.empty()) cond.Wait();    // unlocks mu while it waits
//   Job j = std::move(queue.front());
//   queue.pop_front();
//   mu.Unlock();
//
//   // producer
//   mu.Lock();
//   queue.push_back(std::move(job));
//   mu.Unlock();
//   cond.Signal();                        // or Broadcast() to wake everyone
//
// Cond works with any lock offering lock() and unlock(): gort::Mutex,
// gort::RWMutex (its write side), std::mutex, ... named at construction, as
// Go's Cond.L. Waiters may be fibers run by gort's scheduler or plain OS
// threads, in any mix; a waiting fiber parks (WaitReason::kCond,
// "sync.Cond.Wait" in fiber dumps), a thread sleeps on a futex. Only
// //sched:park is needed.
//
// No lost wake-ups (Go's notifyList): Wait takes a ticket before it unlocks
// the lock, and Signal wakes the oldest ticket not yet woken, even if its
// owner has not gone to sleep yet (it then does not sleep). A Signal or
// Broadcast wakes only waiters whose Wait took its ticket before it; a Wait
// that starts later is not affected by it.
//
// Threading rules (Go's):
//  - Wait must be called with the lock held; it returns with it held again.
//    As with every condition variable, Wait may return while the condition
//    is still false (another task got there first): re-check it in a loop,
//    or use Wait(pred).
//  - Signal and Broadcast may be called with or without the lock held, from
//    any fiber or thread.
//  - The Cond may be destroyed once no call on it is in progress or will be
//    made; the Signal or Broadcast that woke a waiter does not count: it no
//    longer touches the Cond when the waiter's Wait returns (so a waiter may
//    destroy the Cond it was woken from).
//
// Memory ordering: everything a task did before Signal/Broadcast is visible
// to the waiters it wakes when their Wait returns (and, through the lock,
// everything done under the lock by earlier holders).

#ifndef GORT_SYNC_COND_H_
#define GORT_SYNC_COND_H_

#include <atomic>
#include <cstdint>

#include "sched/internal/futex.h"
#include "sched/park.h"

namespace gort {

class Cond {
 public:
  // `lock` (held while the condition is checked or changed) must outlive the
  // Cond. L needs lock() and unlock().
  template <typename L>
  explicit Cond(L* lock)
      : lock_arg_(lock),
        lock_fn_([](void* l) { static_cast<L*>(l)->lock(); }),
        unlock_fn_([](void* l) { static_cast<L*>(l)->unlock(); }) {}
  Cond(const Cond&) = delete;
  Cond& operator=(const Cond&) = delete;

  // Atomically unlocks the lock and waits for a Signal or Broadcast, then
  // locks it again before returning. Call with the lock held.
  void Wait();

  // Waits until pred() is true, checking it with the lock held:
  // while (!pred()) Wait();
  template <typename Pred>
  void Wait(Pred pred) {
    while (!pred()) Wait();
  }

  // Wakes the oldest waiter, if any.
  void Signal() {
    // Nobody took a ticket that was not notified yet: nothing to do. Loads
    // suffice: a Wait whose ticket must be seen here happened before this
    // call through the lock (see cond.cc).
    if (wait_.load(std::memory_order_acquire) ==
        notify_.load(std::memory_order_acquire)) {
      return;
    }
    SignalSlow();
  }

  // Wakes every waiter.
  void Broadcast() {
    if (wait_.load(std::memory_order_acquire) ==
        notify_.load(std::memory_order_acquire)) {
      return;
    }
    BroadcastSlow();
  }

 private:
  // A waiter with its ticket: lives on its stack (Go's sudog).
  struct Waiter {
    ParkTicket ticket;
    std::uint32_t t = 0;  // its notifyList ticket
    Waiter* next = nullptr;
  };

  static void UnlockQueue(void* cond);
  void WaitTicket(std::uint32_t t);
  void SignalSlow();
  void BroadcastSlow();

  void* lock_arg_;
  void (*lock_fn_)(void*);
  void (*unlock_fn_)(void*);

  // Go's notifyList. wait_: the next ticket to hand out (incremented outside
  // lock_). notify_: the next ticket to wake (written under lock_, read
  // anywhere). Both wrap; see Less() in cond.cc.
  std::atomic<std::uint32_t> wait_{0};
  std::atomic<std::uint32_t> notify_{0};
  sched_internal::Lock lock_;  // protects head_/tail_ and notify_'s writes
  Waiter* head_ = nullptr;     // in the order waiters queued
  Waiter* tail_ = nullptr;
};

}  // namespace gort

#endif  // GORT_SYNC_COND_H_
