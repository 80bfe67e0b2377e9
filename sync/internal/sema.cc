#include "sync/internal/sema.h"

#include <mutex>

// Invariants:
//  - count_ > 0 only while the queue is empty: Release() hands its token to
//    the front waiter if there is one and counts it only otherwise, and
//    Acquire() takes a counted token before it would queue.
//  - A Waiter is in the queue from its Acquire's critical section until the
//    Release() that dequeues it under lock_; that Release then owns the
//    record, reads its ticket and unparks it after dropping lock_. The
//    record (on the waiter's stack) stays alive until then, because the
//    waiter's ParkUnderLock returns only after that Unpark (no deadline).
//    That Release is the only waker of the cycle, and it dequeued the
//    record under lock_: ParkUnderLock's contract.
//  - Exactly one token per Release: either count_ is incremented or exactly
//    one waiter is dequeued and unparked, and that waiter returns owning it.

namespace gort {
namespace sync_internal {

void Sema::UnlockQueue(void* sema) {
  static_cast<Sema*>(sema)->lock_.unlock();
}

void Sema::Acquire(WaitReason reason, bool lifo) {
  lock_.lock();
  if (count_ > 0) {
    --count_;
    lock_.unlock();  // lock_ orders the releaser's writes before ours
    return;
  }
  Waiter me;
  me.ticket = Parker::Current()->Prepare();
  if (head_ == nullptr) {
    head_ = tail_ = &me;
  } else if (lifo) {
    me.next = head_;
    head_ = &me;
  } else {
    tail_->next = &me;
    tail_ = &me;
  }
  // Drops lock_ once we are committed to sleeping (for a fiber: after it has
  // switched away). Returns only after the Release() that dequeued us won
  // the Unpark: its writes are visible here (see park.h).
  ParkUnderLock(me.ticket, reason, &UnlockQueue, this);
}

void Sema::Release() {
  lock_.lock();
  Waiter* w = head_;
  if (w == nullptr) {
    ++count_;
    lock_.unlock();
    return;
  }
  head_ = w->next;
  if (head_ == nullptr) tail_ = nullptr;
  // Read the record before its owner can return: it lives on its stack.
  const ParkTicket t = w->ticket;
  lock_.unlock();
  // The only Unpark for this cycle; it wins, and publishes our writes.
  Unpark(t);
}

}  // namespace sync_internal
}  // namespace gort
