// WARNING: internal to gort's //sync; not part of its API.
//
// Sema: a counting semaphore with a FIFO queue of parked waiters, the
// equivalent of Go's runtime_Semacquire/runtime_Semrelease that sync.Mutex
// and sync.RWMutex sleep on. Fibers park through the parking API; plain
// threads sleep on their parker's futex.

#ifndef GORT_SYNC_INTERNAL_SEMA_H_
#define GORT_SYNC_INTERNAL_SEMA_H_

#include <cstdint>

#include "sched/internal/futex.h"
#include "sched/park.h"

namespace gort {
namespace sync_internal {

class Sema {
 public:
  constexpr Sema() = default;
  Sema(const Sema&) = delete;
  Sema& operator=(const Sema&) = delete;

  // Takes a token, parking the calling fiber or thread with `reason` until
  // one is released to it. `lifo`: queue at the front instead of the back
  // (Go's queueLifo, for a waiter that was woken and has to wait again).
  // May be called from any fiber or thread.
  void Acquire(WaitReason reason, bool lifo = false);

  // Gives a token to the waiter at the front of the queue (it returns from
  // Acquire owning it), or stores it if nobody waits. Never blocks beyond
  // the short internal lock. May be called from any fiber or thread.
  //
  // Memory ordering: everything the caller did before Release() is visible
  // to the Acquire() that takes this token, once it returns.
  void Release();

 private:
  // A parked Acquire: lives on the waiter's stack until it is unparked
  // (Go's sudog). Linked into the queue under lock_.
  struct Waiter {
    ParkTicket ticket;
    Waiter* next = nullptr;
  };

  static void UnlockQueue(void* sema);

  sched_internal::Lock lock_;  // protects everything below
  std::uint32_t count_ = 0;    // tokens released while nobody waited
  Waiter* head_ = nullptr;     // FIFO (LIFO inserts go to the front)
  Waiter* tail_ = nullptr;
};

}  // namespace sync_internal
}  // namespace gort

#endif  // GORT_SYNC_INTERNAL_SEMA_H_
