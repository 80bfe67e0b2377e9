#include "sync/once.h"

#include <thread>

// Invariants:
//  - state_ moves kIdle -> kRunning (under lock_, by the caller that will run
//    its f: the "runner"), then kRunning -> kIdle (under lock_, f threw) or
//    kRunning -> kReleasing (under lock_, f returned) -> kDone (the runner's
//    store-release after dropping lock_, its last access to *this). kDone is
//    final. Only the runner moves state_ out of kRunning or kReleasing.
//  - The queue (head_..tail_) is non-empty only while state_ is kRunning, or
//    kIdle with one waiter that the failed runner dequeued and woke on its
//    way back to lock_ (it will run its own f, or queue again behind a new
//    runner). So every queued waiter is woken by some runner's Finish.
//  - On success the runner detaches the whole queue under lock_ (setting
//    kReleasing, so that nobody queues afterwards), stores kDone, and then
//    marks each record done and unparks it; a woken waiter reads only its
//    own record and returns. A Waiter record lives on its owner's stack
//    until it is unparked, and is read by the runner only before that.
//  - A caller that sees kReleasing yields and retries: the runner stores
//    kDone within a few instructions (it is running: nothing between its
//    unlock and its store can park). Returning early would let that caller
//    destroy the Once under the runner's feet.
//  - Ordering: f's writes reach fast-path callers through the store-release
//    of kDone (their load-acquire), and woken waiters through Unpark.

namespace gort {

void Once::UnlockQueue(void* once) {
  static_cast<Once*>(once)->lock_.unlock();
}

void Once::CallSlow(void (*invoke)(void*), void* bound) {
  lock_.lock();
  for (;;) {
    // load-acquire: kDone is stored outside lock_ (see Finish).
    const std::uint32_t s = state_.load(std::memory_order_acquire);
    if (s == kDone) {
      lock_.unlock();
      return;
    }
    if (s == kReleasing) {
      lock_.unlock();
      std::this_thread::yield();
      lock_.lock();
      continue;
    }
    if (s == kIdle) {
      // We run our f; lock_ is not held while it runs.
      state_.store(kRunning, std::memory_order_relaxed);
      lock_.unlock();
      try {
        invoke(bound);
      } catch (...) {
        Finish(/*done=*/false);
        throw;
      }
      Finish(/*done=*/true);
      return;
    }
    // kRunning: queue and park until the runner finishes.
    Waiter me;
    me.ticket = Parker::Current()->Prepare();
    if (tail_ == nullptr) {
      head_ = &me;
    } else {
      tail_->next = &me;
    }
    tail_ = &me;
    // Drops lock_ once we are committed to sleeping; returns once a runner's
    // Finish has dequeued and unparked us (no deadline).
    ParkUnderLock(me.ticket, WaitReason::kMutex, &UnlockQueue, this);
    // f completed: its writes are visible (Unpark). Do not touch *this: the
    // Once may be destroyed as soon as any Call returns.
    if (me.done) return;
    lock_.lock();  // f threw: try again, maybe running our own f
  }
}

// Executed only by the runner, after its f returned (`done`) or threw.
void Once::Finish(bool done) {
  lock_.lock();
  if (!done) {
    // Not done: let the oldest waiter try its own f. The others stay queued
    // until it (or a newcomer that gets there first) finishes.
    state_.store(kIdle, std::memory_order_relaxed);
    Waiter* w = head_;
    ParkTicket t;
    if (w != nullptr) {
      head_ = w->next;
      if (head_ == nullptr) tail_ = nullptr;
      t = w->ticket;  // read before unparking: the record is on its stack
    }
    lock_.unlock();
    if (t) Unpark(t);
    return;
  }
  Waiter* w = head_;
  head_ = tail_ = nullptr;
  state_.store(kReleasing, std::memory_order_relaxed);
  lock_.unlock();
  // store-release, pairs with the load-acquire in Call() and Done(). Our
  // last access to *this.
  state_.store(kDone, std::memory_order_release);
  while (w != nullptr) {
    Waiter* next = w->next;
    const ParkTicket t = w->ticket;
    w->done = true;
    Unpark(t);  // publishes f's writes and `done`; the record may vanish now
    w = next;
  }
}

}  // namespace gort
