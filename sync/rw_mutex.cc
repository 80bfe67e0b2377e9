#include "sync/rw_mutex.h"

#include <thread>

#include "fiber/internal/fatal.h"

// Invariants (Go's sync.RWMutex scheme):
//  - With no writer pending, reader_count_ = the number of readers holding
//    the lock (>= 0). A writer holding w_ subtracts kMaxReaders, so from then
//    until its Unlock, reader_count_ = R + N - kMaxReaders < 0, where R is
//    the readers that held the lock at that moment and have not left, and N
//    the new readers, which have all gone to sleep on reader_sem_.
//  - reader_wait_ counts the readers the pending writer waits for: the writer
//    adds R (read off its own subtraction), each of those R readers' RUnlock
//    subtracts 1 (a reader whose RUnlock sees reader_count_ < 0 is always
//    one of the R: the N new ones only RUnlock after the writer's Unlock).
//    The add and the subtractions may come in any order; whoever takes it
//    to 0 is last. If a reader is last it posts writer_sem_ once; if the
//    writer is (it added R after all R left), it does not wait.
//  - writer_sem_ holds at most one token, consumed by the pending writer.
//  - The writer's Unlock adds kMaxReaders back, reading N off its add, and
//    posts reader_sem_ exactly N times: one token for each sleeping reader
//    (a reader that has counted itself but not queued yet finds its token
//    stored in the Sema).
//  - Only the holder of w_ changes reader_count_ by kMaxReaders, so the
//    count is never pushed below -kMaxReaders.
//  - Ordering: readers' RUnlock (release) -> the writer's subtraction in
//    Lock (acquire) for readers that left first; reader_wait_ RMWs (acq_rel)
//    and writer_sem_ for the others. The writer's add in Unlock (release) ->
//    readers' RLock add (acquire), or reader_sem_ for sleeping readers.
//    Writer to writer: w_. All atomics or sched_internal::Lock: TSan sees
//    every edge, no annotations needed.

namespace gort {

using fiber_internal::Fatal;

void RWMutex::AwaitWriterUnlock() {
  // The writer is a few instructions from done, unless its thread was
  // preempted: let it run.
  std::this_thread::yield();
}

void RWMutex::RLockSlow() {
  // We are counted; the writer's Unlock posts one token for us.
  reader_sem_.Acquire(WaitReason::kRWMutexRead);
}

bool RWMutex::TryRLock() {
  std::int32_t c = reader_count_.load(std::memory_order_relaxed);
  for (;;) {
    if (c < 0) return false;  // a writer holds or waits for the lock
    // CAS-acquire, as the add in RLock().
    if (reader_count_.compare_exchange_weak(c, c + 1, std::memory_order_acquire,
                                            std::memory_order_relaxed)) {
      return true;
    }
  }
}

void RWMutex::RUnlockSlow(std::int32_t r) {
  if (r + 1 == 0 || r + 1 == -kMaxReaders) {
    Fatal("sync: RUnlock of unlocked RWMutex");
  }
  // A writer is pending. acq_rel: the RMWs on reader_wait_ form a release
  // sequence, so the reader (or writer) that takes it to 0 has acquired
  // every departing reader's critical section.
  if (reader_wait_.fetch_sub(1, std::memory_order_acq_rel) - 1 == 0) {
    writer_sem_.Release();  // the last reader lets the writer in
  }
}

// Executed by the writer holding w_, whose subtraction found r != 0 readers
// holding the lock: wait until they have all left.
void RWMutex::WaitForReaders(std::int32_t r) {
  // Add r to the departure count, unless they all left already. acq_rel:
  // see RUnlockSlow.
  if (reader_wait_.fetch_add(r, std::memory_order_acq_rel) + r != 0) {
    writer_sem_.Acquire(WaitReason::kRWMutexWrite);  // the last one posts
  }
}

bool RWMutex::TryLock() {
  if (!w_.TryLock()) return false;
  std::int32_t zero = 0;
  // CAS-acquire, as the add in Lock().
  if (!reader_count_.compare_exchange_strong(zero, -kMaxReaders,
                                             std::memory_order_acquire,
                                             std::memory_order_relaxed)) {
    w_.Unlock();  // readers hold (or wait for) the lock
    return false;
  }
  return true;
}

// Executed by Unlock when reader_count_ was not exactly -kMaxReaders before
// its add: `r` readers queued behind us (r > 0), or the lock was not
// write-locked at all (r >= 0 before the add means no writer had subtracted).
void RWMutex::UnlockSlow(std::int32_t before) {
  const std::int32_t r = before + kMaxReaders;  // readers that queued
  if (r >= kMaxReaders) {
    Fatal("sync: Unlock of unlocked RWMutex");
  }
  // Wake them; each Release carries our writes.
  for (std::int32_t i = 0; i < r; ++i) reader_sem_.Release();
}

}  // namespace gort
