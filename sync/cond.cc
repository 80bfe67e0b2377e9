#include "sync/cond.h"

#include <cstdint>

// Invariants (Go's notifyList):
//  - Tickets t with Less(t, notify_) have been notified; tickets in
//    [notify_, wait_) have not. notify_ only grows (mod 2^32), under lock_,
//    and never past wait_. Fewer than 2^31 tickets are ever outstanding, so
//    the wrap-around comparison Less() is exact.
//  - A Waiter is queued (under lock_) only if its ticket was not notified
//    when it checked under lock_; each queued record belongs to a task that
//    is parked or about to park, and stays alive on its stack until the
//    Signal/Broadcast that dequeues it (under lock_) unparks it, after
//    reading it.
//  - Signal advances notify_ by one ticket, t, and wakes t's owner if it is
//    queued; if it is not queued yet, its owner sees Less(t, notify_) under
//    lock_ and does not sleep. Broadcast sets notify_ = wait_ and wakes the
//    whole queue. So no ticket taken before a Signal/Broadcast that covers it
//    sleeps forever.
//  - The fast paths read wait_ and notify_ without lock_. A Wait that must
//    not be missed took its ticket (fetch_add) before releasing the user's
//    lock, and the signaller acquired that lock afterwards (or otherwise
//    synchronized with the waiter), so the ticket happens-before the
//    signaller's load and coherence makes the load see it. Without such a
//    relation the Wait is concurrent with the Signal and may miss it.

namespace gort {
namespace {

// a < b for running ticket counts that wrap (Go's notifyList less()).
bool Less(std::uint32_t a, std::uint32_t b) {
  return static_cast<std::int32_t>(a - b) < 0;
}

}  // namespace

void Cond::UnlockQueue(void* cond) {
  static_cast<Cond*>(cond)->lock_.unlock();
}

void Cond::Wait() {
  // Take a ticket while we still hold the user's lock. Relaxed: the user's
  // unlock (release) publishes it to the next holder, who may Signal.
  const std::uint32_t t = wait_.fetch_add(1, std::memory_order_relaxed);
  // Read the relocking hook now, so that once a Signal/Broadcast has woken
  // us we touch *this no more (hardening: the documented rule forbids
  // destroying a Cond while any Wait is in progress, but a woken waiter
  // still relocking is easy to overlook).
  auto* const lock_fn = lock_fn_;
  void* const lock_arg = lock_arg_;
  unlock_fn_(lock_arg_);
  WaitTicket(t);
  lock_fn(lock_arg);
}

void Cond::WaitTicket(std::uint32_t t) {
  lock_.lock();
  if (Less(t, notify_.load(std::memory_order_relaxed))) {
    lock_.unlock();  // notified before we got here: don't sleep
    return;
  }
  Waiter me;
  me.ticket = Parker::Current()->Prepare();
  me.t = t;
  if (tail_ == nullptr) {
    head_ = &me;
  } else {
    tail_->next = &me;
  }
  tail_ = &me;
  // Drops lock_ once we are committed to sleeping; returns after the
  // Signal/Broadcast that dequeued us unparked us (no deadline).
  ParkUnderLock(me.ticket, WaitReason::kCond, &UnlockQueue, this);
}

void Cond::SignalSlow() {
  lock_.lock();
  const std::uint32_t t = notify_.load(std::memory_order_relaxed);
  if (t == wait_.load(std::memory_order_relaxed)) {
    lock_.unlock();  // every ticket was notified meanwhile
    return;
  }
  // Relaxed store: readers that need it take lock_ (WaitTicket); the fast
  // paths only compare it, see Invariants.
  notify_.store(t + 1, std::memory_order_relaxed);
  // Find ticket t. Tickets are taken before queueing, so the queue is only
  // roughly in ticket order; t is normally at or near the front. If t's
  // owner has not queued yet, it will see it was notified and not sleep.
  ParkTicket wake;
  for (Waiter *prev = nullptr, *w = head_; w != nullptr;
       prev = w, w = w->next) {
    if (w->t != t) continue;
    if (prev == nullptr) {
      head_ = w->next;
    } else {
      prev->next = w->next;
    }
    if (tail_ == w) tail_ = prev;
    wake = w->ticket;  // read before unparking: the record is on its stack
    break;
  }
  lock_.unlock();
  if (wake) Unpark(wake);  // publishes our writes to the waiter
}

void Cond::BroadcastSlow() {
  lock_.lock();
  Waiter* w = head_;
  head_ = tail_ = nullptr;
  // Every ticket handed out so far is notified; those not queued yet will
  // see it and not sleep.
  notify_.store(wait_.load(std::memory_order_relaxed),
                std::memory_order_relaxed);
  lock_.unlock();
  // Our last access to *this was the unlock: a woken waiter may destroy the
  // Cond. Read each record before unparking its owner.
  while (w != nullptr) {
    Waiter* next = w->next;
    const ParkTicket t = w->ticket;
    Unpark(t);
    w = next;
  }
}

}  // namespace gort
