// WARNING: internal to gort's //chan; not part of its API.
//
// The type-erased channel: everything Chan<T> does that does not depend on T
// lives here, in chan.cc, so the template in chan.h stays a thin layer. An
// element is moved by two functions: the sender's PutFn constructs the
// element at a destination from the sender's own object (so a value goes
// straight from the sender's variable to the receiver's storage, or to a
// buffer slot), and ElemOps::relocate moves a buffered element out.

#ifndef GORT_CHAN_INTERNAL_CORE_H_
#define GORT_CHAN_INTERNAL_CORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "sched/internal/futex.h"
#include "stack/internal/spinlock.h"
#include "sched/park.h"

namespace gort {

// How a receive that may give up ended (see Chan<T>::TryRecv, RecvFor).
enum class RecvStatus {
  kOk,          // a value was received
  kClosed,      // the channel is closed and drained
  kWouldBlock,  // nothing to receive (TryRecv) or the deadline passed
};

namespace chan_internal {

// How the core handles elements of one type T.
struct ElemOps {
  std::size_t size;
  std::size_t align;
  // Move-constructs a T at `dst` from the T at `src`, then destroys `src`.
  void (*relocate)(void* dst, void* src) noexcept;
  void (*destroy)(void* p) noexcept;
};

// Constructs the element at `dst` from the sender's object `src` (a U& of
// the sender's choosing; the function knows U). Runs under the channel lock.
using PutFn = void (*)(void* src, void* dst) noexcept;

class ChanCore;
struct SelectState;

// A task blocked on a channel (Go's sudog). Lives on the blocked task's
// stack; linked into the channel's sendq or recvq under the channel lock.
struct Waiter {
  ParkTicket ticket;
  Waiter* prev = nullptr;
  Waiter* next = nullptr;
  bool queued = false;
  // Set by the task that completes the operation, under the channel lock:
  // true if a value was exchanged, false if the channel was closed.
  bool success = false;
  // Sender: the object PutFn reads. Receiver: raw storage for one element.
  void* elem = nullptr;
  PutFn put = nullptr;  // senders only
  // Non-null for a waiter that belongs to a select.
  SelectState* select = nullptr;
  int case_index = 0;
};

// Shared by the waiters of one blocked select: the first channel operation
// that claims `done` completes the select with its case.
struct SelectState {
  std::atomic<bool> done{false};
  int fired = -1;  // written by the claimer under its channel's lock
};

// FIFO of waiters.
class WaitQueue {
 public:
  bool empty() const { return head_ == nullptr; }
  void PushBack(Waiter* w);
  void Remove(Waiter* w);  // w must be queued here
  // Removes w if it is still queued (here: a waiter is only ever in the
  // queue it was pushed to); returns whether it was.
  bool RemoveIfQueued(Waiter* w);
  // Removes and returns the first waiter that may be completed: a plain
  // waiter, or a select waiter whose select this call claimed (setting
  // `fired` to its case). Select waiters whose select is already done are
  // dropped on the way. Null if none.
  Waiter* Dequeue();
  std::size_t Count() const;

 private:
  Waiter* head_ = nullptr;
  Waiter* tail_ = nullptr;
};

// Which programming error a channel operation hit.
enum class ChanErrorKind { kSendOnClosed, kCloseOfClosed, kCloseOfNil };
[[noreturn]] void ThrowChanError(ChanErrorKind kind);

// Where a committed element move threw (see chan.h's header comment).
enum class ElemMove {
  kDeliver,      // a sent value into the buffer or a receiver's storage
  kOutOfBuffer,  // a buffered value out of the buffer
  kToReceiver,   // a received value out to the receiving caller
};
// Reports the exception being handled as a fatal error and aborts. Call
// only from a catch handler.
[[noreturn]] void FatalElementMoveThrew(ElemMove where) noexcept;

class ChanCore {
 public:
  static ChanCore* Create(const ElemOps* ops, std::size_t capacity);

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  // Whether more than one handle refers to this channel (a snapshot).
  bool Shared() const { return refs_.load(std::memory_order_acquire) > 1; }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) Destroy();
  }

  // True if a send (or receive) on this buffered channel certainly cannot
  // proceed now, judged without the lock: an open channel whose buffer is
  // full (empty) has no waiting receivers (senders), since those wait only
  // while the buffer is empty (full). Go's fast-path test for non-blocking
  // operations. False when unsure (unbuffered channels: always).
  bool ObviouslyNotReady(bool send) const {
    if (cap_ == 0) return false;
    // Count before closed: if the count was "not ready" and the channel was
    // then still open, it was both at the moment closed_ was read.
    const std::size_t n = count_.load(std::memory_order_acquire);
    if (send ? n != cap_ : n != 0) return false;
    return !closed_.load(std::memory_order_acquire);
  }

  std::size_t capacity() const { return cap_; }
  std::size_t size() const { return count_.load(std::memory_order_relaxed); }
  bool closed() const { return closed_.load(std::memory_order_relaxed); }

  // --- Operations. `c` may be null (a nil channel). Deadlines are MonoNow()
  // nanoseconds; kNoDeadline blocks until done; a deadline already passed
  // (0, say) never blocks.

  // Sends the element `put(src, ...)` constructs. Returns false if the
  // deadline passed first (the element was not constructed). Throws
  // ChanError if the channel is or becomes closed (nothing was sent).
  static bool Send(ChanCore* c, void* src, PutFn put, std::int64_t deadline);
  // Receives into the raw storage `dst` (constructed only for kOk).
  static RecvStatus Recv(ChanCore* c, void* dst, std::int64_t deadline);
  // Throws ChanError for a nil or closed channel.
  static void Close(ChanCore* c);

  // Blocked senders (or receivers) queued, selects included: for tests.
  std::size_t WaitersForTest(bool senders);

  // --- The steps the operations above and select (select.cc) are made
  // of. All are called with lock_ held and leave it held.
  stack_internal::SpinLock lock_;
  // Completes a send if a receiver waits or there is room: returns true and
  // sets *wake to the receiver to Unpark once lock_ is released (or leaves
  // it empty). The closed check is the caller's.
  // Inline: the buffered fast path is a few instructions, and every send,
  // receive and select case runs it.
  bool TrySendLocked(void* src, PutFn put, ParkTicket* wake);
  // Completes a receive if a sender waits or an element is buffered. The
  // closed check is the caller's.
  bool TryRecvLocked(void* dst, ParkTicket* wake);
  WaitQueue& sendq() { return sendq_; }
  WaitQueue& recvq() { return recvq_; }

 private:
  ChanCore(const ElemOps* ops, std::size_t capacity, char* buf);
  ~ChanCore() = default;
  void Destroy();
  void* Slot(std::size_t i) const { return buf_ + i * ops_->size; }
  // The waiter halves of TrySendLocked and TryRecvLocked (out of line):
  // complete the operation with the first waiter that can be completed, if
  // any.
  bool SendToWaiterLocked(void* src, PutFn put, ParkTicket* wake);
  bool RecvFromWaiterLocked(void* dst, ParkTicket* wake);

  // Layout: lock_ (declared above) and the state it guards come first, in
  // 64 bytes, which senders and receivers pass back and forth; then the
  // fields that never change after construction, and the reference count
  // (written only when handles are copied). The core is not aligned to a
  // cache line: an aligned allocation made MakeChan 2.5-3x slower (16.5 ->
  // 41-48 ns, BM_Chan_MakeAndDrop) for no gain that W8 could show.
  std::atomic<std::size_t> count_{0};  // written under lock_
  std::size_t recvx_ = 0;
  std::atomic<bool> closed_{false};  // written under lock_
  WaitQueue recvq_;  // receivers blocked: only while count_ == 0
  WaitQueue sendq_;  // senders blocked: only while count_ == cap_
  const ElemOps* const ops_;
  const std::size_t cap_;
  char* const buf_;  // cap_ slots, ring: [recvx_, recvx_ + count_)
  std::atomic<std::int64_t> refs_{1};
};

inline bool ChanCore::TrySendLocked(void* src, PutFn put, ParkTicket* wake) {
  // A receiver waits only while the buffer is empty; an empty queue is the
  // common case and needs no call.
  if (!recvq_.empty() && SendToWaiterLocked(src, put, wake)) return true;
  const std::size_t n = count_.load(std::memory_order_relaxed);
  if (n >= cap_) return false;
  std::size_t i = recvx_ + n;
  if (i >= cap_) i -= cap_;
  put(src, Slot(i));
  count_.store(n + 1, std::memory_order_relaxed);
  return true;
}

inline bool ChanCore::TryRecvLocked(void* dst, ParkTicket* wake) {
  if (!sendq_.empty() && RecvFromWaiterLocked(dst, wake)) return true;
  const std::size_t n = count_.load(std::memory_order_relaxed);
  if (n == 0) return false;
  ops_->relocate(dst, Slot(recvx_));
  if (++recvx_ == cap_) recvx_ = 0;
  count_.store(n - 1, std::memory_order_relaxed);
  return true;
}

}  // namespace chan_internal
}  // namespace gort

#endif  // GORT_CHAN_INTERNAL_CORE_H_
