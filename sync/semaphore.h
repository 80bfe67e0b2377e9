// gort/sync/semaphore.h: a weighted semaphore, as golang.org/x/sync/semaphore
// (semaphore.Weighted): bound the total weight of work in flight.
//
//   gort::Semaphore sem(4 << 20);            // at most 4 MiB being decoded
//   for (const Image& img : images) {
//     if (absl::Status s = sem.Acquire(ctx, img.size()); !s.ok()) {
//       return s;                           // ctx done: nothing acquired
//     }
//     gort::Go([&sem, &img] {
//       Decode(img);
//       sem.Release(img.size());
//     });
//   }
//
// Semantics are x/sync's:
//  - Acquire(ctx, n) takes n units, blocking until they are free or `ctx` is
//    done. On success it returns OkStatus(); if ctx is done first (or is
//    already done when Acquire is called) it returns ctx.Err() and holds
//    nothing. If units become free at the moment ctx is done, Acquire may
//    return either way, but an error always means nothing is held.
//  - Waiters are served first come, first served: while a waiter is
//    queued, no later Acquire or TryAcquire takes units ahead of it, even a
//    smaller one that would fit. So a large request is never starved by a
//    stream of small ones. A request larger than the semaphore's size can
//    never succeed: it waits for ctx (for ever with Background()), without
//    blocking the others.
//  - TryAcquire(n) takes n units only if they are free and nobody waits.
//  - Release(n) returns n units and wakes the waiters at the head of the
//    queue that now fit. Releasing more than is held is a fatal error
//    ("fatal: semaphore: released more than held"), as x/sync panics. Units
//    need not be released by the task that acquired them.
//  - Weights are >= 0; a negative weight is a fatal error.
//
// Threading rules: every member may be called from any fiber or thread
// concurrently. A waiting fiber parks (in a select on its own ready channel
// and ctx.Done(): WaitReason::kSelect) and leaves its OS thread to other
// fibers; a waiting thread sleeps. Only //sched:park and //chan are needed.
// The Semaphore may be destroyed once no call is in progress or will be
// made; units still held then are simply forgotten. An Acquire that has
// returned is not in progress, even if the Release that granted it has not
// returned yet: the releaser no longer touches the semaphore once it wakes
// anyone (x/sync's "Acquire(size) to wait for all workers", then return,
// is safe).
//
// Memory ordering: a Release(n) happens-before the return of every Acquire
// or TryAcquire that obtains any of the units it returned (more precisely,
// the semaphore's operations are totally ordered by its lock, and each
// happens-before the ones after it).
//
// Cost: an uncontended Acquire or Release takes the semaphore's lock once
// (plus one load for ctx.Err()); a waiter allocates one channel.

#ifndef GORT_SYNC_SEMAPHORE_H_
#define GORT_SYNC_SEMAPHORE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "chan/chan.h"
#include "sched/internal/futex.h"
#include "sync/context.h"

namespace gort {

class Semaphore {
 public:
  // A semaphore of `n` units (n >= 0), all free.
  explicit Semaphore(std::int64_t n);
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  // Takes `n` units, blocking until they are free or `ctx` is done; then
  // returns ctx.Err() and holds nothing.
  absl::Status Acquire(const Context& ctx, std::int64_t n);

  // Takes `n` units if they are free and no one is waiting. Never blocks.
  bool TryAcquire(std::int64_t n);

  // Returns `n` units. Fatal if more than held.
  void Release(std::int64_t n);

  // The semaphore's size, as given to the constructor.
  std::int64_t size() const { return size_; }

  // Snapshots, for tests and diagnostics only.
  std::int64_t HeldForTest();
  int WaitersForTest();

 private:
  // A queued Acquire: lives on the waiting task's stack. Linked, and
  // granted, under mu_.
  struct Waiter {
    std::int64_t n = 0;
    DoneChan ready;  // closed when granted
    bool granted = false;
    Waiter* prev = nullptr;
    Waiter* next = nullptr;
    Waiter* granted_next = nullptr;  // the granter's list, once granted
  };

  void Unlink(Waiter* w);
  // Grants units to the waiters at the head of the queue while they fit.
  // Called with mu_ held; returns with it released.
  void NotifyWaitersAndUnlock();

  const std::int64_t size_;
  sched_internal::Lock mu_;
  std::int64_t cur_ = 0;    // units held; guarded by mu_
  Waiter* head_ = nullptr;  // FIFO; guarded by mu_
  Waiter* tail_ = nullptr;
};

}  // namespace gort

#endif  // GORT_SYNC_SEMAPHORE_H_
