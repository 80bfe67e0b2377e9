#include "chan/chan.h"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <vector>

#include "fiber/internal/fatal.h"

// Invariants (compare Go's runtime/chan.go):
//  - lock_ protects recvx_, count_, closed_, the buffer and both queues.
//    count_ and closed_ are atomics only so that Len() and the fast checks
//    may read them without the lock; they are written under it.
//  - At least one of recvq_ and sendq_ is empty (ignoring select waiters
//    whose select is already done, which Dequeue drops). Receivers wait only
//    while the buffer is empty, senders only while it is full (for an
//    unbuffered channel: always "empty" and "full").
//  - Once closed_ is set, both queues are empty and stay empty: Close wakes
//    every waiter, and nobody queues on a closed channel.
//  - A queued Waiter is owned by its blocked task (it is on its stack). Only
//    a task holding lock_ may complete it: Dequeue it, write its element and
//    `success`, copy its ticket, and Unpark the ticket after unlocking. A
//    waiter that wakes by its deadline takes lock_ and checks `queued`: still
//    queued means it timed out (it removes itself); not queued means the
//    operation was completed under the lock, so it is complete and visible.
//    Either way the waiter's record is not touched by others afterwards.
//  - A select's waiters sit in several queues at once; a completer claims
//    the whole select by CAS on SelectState::done before touching it.

namespace gort {

ChanError::ChanError(Kind kind)
    : std::logic_error(kind == Kind::kSendOnClosed    ? "send on closed channel"
                       : kind == Kind::kCloseOfClosed ? "close of closed channel"
                                                      : "close of nil channel"),
      kind_(kind) {}

namespace chan_internal {

void ThrowChanError(ChanErrorKind kind) {
  switch (kind) {
    case ChanErrorKind::kSendOnClosed:
      throw ChanError(ChanError::Kind::kSendOnClosed);
    case ChanErrorKind::kCloseOfClosed:
      throw ChanError(ChanError::Kind::kCloseOfClosed);
    case ChanErrorKind::kCloseOfNil:
      throw ChanError(ChanError::Kind::kCloseOfNil);
  }
  std::abort();
}

void FatalElementMoveThrew(ElemMove where) noexcept {
  const char* what = where == ElemMove::kDeliver
                         ? "delivering a sent value (to the buffer or a "
                           "receiver)"
                     : where == ElemMove::kOutOfBuffer
                         ? "taking a value out of the buffer"
                         : "handing a received value to the receiver";
  // The value has been taken by the channel and cannot be given back (see
  // chan.h): say what threw, and stop.
  try {
    throw;
  } catch (const std::exception& e) {
    fiber_internal::Fatal(
        "gort::Chan: an element's move threw while %s: %s; a channel cannot "
        "give back a value it has taken, so a throwing move there is fatal",
        what, e.what());
  } catch (...) {
    fiber_internal::Fatal(
        "gort::Chan: an element's move threw while %s (not a "
        "std::exception); a channel cannot give back a value it has taken, "
        "so a throwing move there is fatal",
        what);
  }
}

std::int64_t DeadlineAfter(absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) return sched_internal::kNoDeadline;
  if (timeout <= absl::ZeroDuration()) return 0;
  const std::int64_t ns = absl::ToInt64Nanoseconds(timeout);
  const std::int64_t now = MonoNow();
  if (ns >= sched_internal::kNoDeadline - now) return sched_internal::kNoDeadline;
  return now + ns;
}

std::int64_t DeadlineAt(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return sched_internal::kNoDeadline;
  return DeadlineAfter(deadline - absl::Now());
}

// --- WaitQueue ---------------------------------------------------------------

void WaitQueue::PushBack(Waiter* w) {
  w->next = nullptr;
  w->prev = tail_;
  if (tail_ == nullptr) {
    head_ = w;
  } else {
    tail_->next = w;
  }
  tail_ = w;
  w->queued = true;
}

void WaitQueue::Remove(Waiter* w) {
  if (w->prev == nullptr) {
    head_ = w->next;
  } else {
    w->prev->next = w->next;
  }
  if (w->next == nullptr) {
    tail_ = w->prev;
  } else {
    w->next->prev = w->prev;
  }
  w->prev = w->next = nullptr;
  w->queued = false;
}

bool WaitQueue::RemoveIfQueued(Waiter* w) {
  if (!w->queued) return false;
  Remove(w);
  return true;
}

Waiter* WaitQueue::Dequeue() {
  while (head_ != nullptr) {
    Waiter* w = head_;
    Remove(w);
    if (w->select == nullptr) return w;
    bool expected = false;
    // acq_rel: orders this claim against the select's own (a timed select
    // claims itself) and against other channels' claimers.
    if (w->select->done.compare_exchange_strong(expected, true,
                                                std::memory_order_acq_rel)) {
      w->select->fired = w->case_index;
      return w;
    }
    // Another channel won this select; it removes its other waiters itself.
  }
  return nullptr;
}

std::size_t WaitQueue::Count() const {
  std::size_t n = 0;
  for (Waiter* w = head_; w != nullptr; w = w->next) ++n;
  return n;
}

// --- ChanCore ----------------------------------------------------------------

namespace {

// The core and its buffer share one allocation.
std::size_t BufferOffset(std::size_t align) {
  return (sizeof(ChanCore) + align - 1) / align * align;
}
std::align_val_t AllocAlign(const ElemOps* ops) {
  return std::align_val_t(std::max(alignof(ChanCore), ops->align));
}

// The unlock as ParkUnderLock takes it, and as Park's commit.
void UnlockCoreVoid(void* c) { static_cast<ChanCore*>(c)->lock_.unlock(); }
bool UnlockCore(void* c) {
  UnlockCoreVoid(c);
  return true;
}

// Parks forever, or until `deadline` (operations on a nil channel).
void BlockOnNil(WaitReason reason, std::int64_t deadline) {
  if (deadline != sched_internal::kNoDeadline && deadline <= MonoNow()) return;
  Parker* self = Parker::Current();
  // Nobody holds the ticket: only the deadline ends this park.
  while (Park(self->Prepare(), reason, nullptr, nullptr, deadline) !=
         ParkResult::kTimedOut) {
  }
}

bool Expired(std::int64_t deadline) {
  return deadline != sched_internal::kNoDeadline && MonoNow() >= deadline;
}

}  // namespace

ChanCore* ChanCore::Create(const ElemOps* ops, std::size_t capacity) {
  const std::size_t offset = BufferOffset(ops->align);
  if (capacity > (std::numeric_limits<std::size_t>::max() - offset) / ops->size) {
    throw std::length_error("gort::MakeChan: capacity too large");
  }
  void* mem = ::operator new(offset + capacity * ops->size, AllocAlign(ops));
  return ::new (mem) ChanCore(ops, capacity, static_cast<char*>(mem) + offset);
}

ChanCore::ChanCore(const ElemOps* ops, std::size_t capacity, char* buf)
    : ops_(ops), cap_(capacity), buf_(buf) {}

void ChanCore::Destroy() {
  // The last handle is gone, so no operation is in progress: no waiters.
  const std::size_t n = count_.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < n; ++i) ops_->destroy(Slot((recvx_ + i) % cap_));
  const ElemOps* ops = ops_;
  this->~ChanCore();
  ::operator delete(static_cast<void*>(this), AllocAlign(ops));
}

bool ChanCore::SendToWaiterLocked(void* src, PutFn put, ParkTicket* wake) {
  Waiter* w = recvq_.Dequeue();
  if (w == nullptr) return false;  // only selects already done were queued
  // Straight into the receiver's storage (Go's sendDirect).
  put(src, w->elem);
  w->success = true;
  *wake = w->ticket;
  return true;
}

bool ChanCore::RecvFromWaiterLocked(void* dst, ParkTicket* wake) {
  Waiter* w = sendq_.Dequeue();
  if (w == nullptr) return false;
  if (cap_ == 0) {
    w->put(w->elem, dst);  // straight from the sender's object
  } else {
    // The buffer is full: take its head, and put the sender's value in the
    // slot that frees up, which is the new tail (Go's recv()).
    ops_->relocate(dst, Slot(recvx_));
    w->put(w->elem, Slot(recvx_));
    if (++recvx_ == cap_) recvx_ = 0;
  }
  w->success = true;
  *wake = w->ticket;
  return true;
}

bool ChanCore::Send(ChanCore* c, void* src, PutFn put, std::int64_t deadline) {
  if (c == nullptr) {
    BlockOnNil(WaitReason::kChanNil, deadline);
    return false;
  }
  if (deadline == 0 && c->ObviouslyNotReady(/*send=*/true)) return false;
  c->lock_.lock();
  if (c->closed_.load(std::memory_order_relaxed)) {
    c->lock_.unlock();
    ThrowChanError(ChanErrorKind::kSendOnClosed);
  }
  ParkTicket wake;
  if (c->TrySendLocked(src, put, &wake)) {
    c->lock_.unlock();
    if (wake) Unpark(wake);
    return true;
  }
  if (Expired(deadline)) {
    c->lock_.unlock();
    return false;
  }
  Waiter me;
  me.ticket = Parker::Current()->Prepare();
  me.elem = src;
  me.put = put;
  c->sendq_.PushBack(&me);
  if (deadline == sched_internal::kNoDeadline) {
    // Only a holder of lock_ dequeues `me`, once: see ParkUnderLock.
    ParkUnderLock(me.ticket, WaitReason::kChanSend, &UnlockCoreVoid, c);
  } else if (Park(me.ticket, WaitReason::kChanSend, &UnlockCore, c,
                  deadline) == ParkResult::kTimedOut) {
    std::lock_guard<stack_internal::SpinLock> l(c->lock_);
    if (c->sendq_.RemoveIfQueued(&me)) return false;
    // Completed (or closed) under the lock before our timeout: done.
  }
  if (!me.success) ThrowChanError(ChanErrorKind::kSendOnClosed);
  return true;
}

RecvStatus ChanCore::Recv(ChanCore* c, void* dst, std::int64_t deadline) {
  if (c == nullptr) {
    BlockOnNil(WaitReason::kChanNilReceive, deadline);
    return RecvStatus::kWouldBlock;
  }
  // A non-blocking receive on an empty, open channel fails without the lock.
  if (deadline == 0 && c->ObviouslyNotReady(/*send=*/false)) {
    return RecvStatus::kWouldBlock;
  }
  c->lock_.lock();
  ParkTicket wake;
  if (c->TryRecvLocked(dst, &wake)) {
    c->lock_.unlock();
    if (wake) Unpark(wake);
    return RecvStatus::kOk;
  }
  if (c->closed_.load(std::memory_order_relaxed)) {
    c->lock_.unlock();
    return RecvStatus::kClosed;
  }
  if (Expired(deadline)) {
    c->lock_.unlock();
    return RecvStatus::kWouldBlock;
  }
  Waiter me;
  me.ticket = Parker::Current()->Prepare();
  me.elem = dst;
  c->recvq_.PushBack(&me);
  if (deadline == sched_internal::kNoDeadline) {
    ParkUnderLock(me.ticket, WaitReason::kChanReceive, &UnlockCoreVoid, c);
  } else if (Park(me.ticket, WaitReason::kChanReceive, &UnlockCore, c,
                  deadline) == ParkResult::kTimedOut) {
    std::lock_guard<stack_internal::SpinLock> l(c->lock_);
    if (c->recvq_.RemoveIfQueued(&me)) return RecvStatus::kWouldBlock;
  }
  return me.success ? RecvStatus::kOk : RecvStatus::kClosed;
}

void ChanCore::Close(ChanCore* c) {
  if (c == nullptr) ThrowChanError(ChanErrorKind::kCloseOfNil);
  // The waiters' tickets are copied out under the lock (a record may be gone
  // once the lock is released) into storage sized beforehand, so nothing
  // allocates, and nothing can throw, while the lock is held.
  std::vector<ParkTicket> wake;
  for (;;) {
    c->lock_.lock();
    if (c->closed_.load(std::memory_order_relaxed)) {
      c->lock_.unlock();
      ThrowChanError(ChanErrorKind::kCloseOfClosed);
    }
    const std::size_t n = c->recvq_.Count() + c->sendq_.Count();
    if (n <= wake.capacity()) break;
    c->lock_.unlock();
    wake.reserve(2 * n);
  }
  c->closed_.store(true, std::memory_order_release);
  for (WaitQueue* q : {&c->recvq_, &c->sendq_}) {
    while (Waiter* w = q->Dequeue()) {
      w->success = false;
      wake.push_back(w->ticket);  // within capacity: no allocation
    }
  }
  c->lock_.unlock();
  for (const ParkTicket& t : wake) Unpark(t);
}

std::size_t ChanCore::WaitersForTest(bool senders) {
  std::lock_guard<stack_internal::SpinLock> l(lock_);
  return senders ? sendq_.Count() : recvq_.Count();
}

}  // namespace chan_internal
}  // namespace gort
