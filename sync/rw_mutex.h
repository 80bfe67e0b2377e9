// gort/sync/rw_mutex.h: sync.RWMutex — a reader/writer lock for fibers and
// threads.
//
//   gort::RWMutex mu;
//   std::map<std::string, int> table;    // guarded by mu
//
//   int Get(const std::string& k) {      // many readers at once
//     std::shared_lock<gort::RWMutex> l(mu);
//     auto it = table.find(k);
//     return it == table.end() ? 0 : it->second;
//   }
//   void Set(const std::string& k, int v) {  // one writer, no readers
//     std::lock_guard<gort::RWMutex> l(mu);
//     table[k] = v;
//   }
//
// The lock is held by any number of readers or by one writer. Lockers may be
// fibers run by gort's scheduler or plain OS threads, in any mix; a fiber
// that must wait parks (WaitReason::kRWMutexRead "sync.RWMutex.RLock", or
// kRWMutexWrite "sync.RWMutex.Lock"), a thread sleeps on a futex. Only
// //sched:park is needed.
//
// Writer preference (Go's): once a writer is waiting in Lock, new RLock
// calls block (and TryRLock fails) until that writer has had the lock and
// released it, so a steady stream of readers cannot starve writers. The
// readers already holding the lock finish normally. Consequently a task
// must not take a read lock it already holds recursively: if a writer
// queues in between, the second RLock deadlocks. Writers exclude each other
// through a gort::Mutex (with its fairness rules).
//
// Threading rules (Go's):
//  - All methods may be called from any fiber or thread. A lock is not tied
//    to a task: one task may RLock (or Lock) and another RUnlock (Unlock).
//  - Not recursive, for readers (see above) or writers.
//  - Fatal errors (the process prints the message and aborts): RUnlock when
//    no read lock is held ("fatal: sync: RUnlock of unlocked RWMutex"),
//    Unlock when the write lock is not held ("fatal: sync: Unlock of
//    unlocked RWMutex").
//  - At most 2^30 - 1 concurrent readers.
//  - An RWMutex may be destroyed once it is unlocked and no call on it is
//    in progress or will be made, except the writer's Unlock that let the
//    destroying task in: the destructor waits for that one to return (the
//    reference-count pattern: the last reader deletes the object).
//
// Memory ordering (Go's memory model): the n'th Unlock synchronizes with
// the (n+1)'th Lock; an Unlock synchronizes with every RLock that returns
// after it, and every RUnlock that precedes a Lock synchronizes with that
// Lock's return. So a reader sees everything the previous writers did, and a
// writer everything the previous readers and writers did.
//
// Cost: RLock and RUnlock are one atomic add each while no writer is
// involved (inlined); Lock/Unlock add a gort::Mutex and two adds.
//
// Also usable as a C++ SharedLockable: std::unique_lock / std::lock_guard
// for the write side, std::shared_lock for the read side.

#ifndef GORT_SYNC_RW_MUTEX_H_
#define GORT_SYNC_RW_MUTEX_H_

#include <atomic>
#include <cstdint>

#include "sync/internal/sema.h"
#include "sync/mutex.h"

namespace gort {

class RWMutex {
 public:
  constexpr RWMutex() = default;
  RWMutex(const RWMutex&) = delete;
  RWMutex& operator=(const RWMutex&) = delete;

  // Locks for reading. Blocks while a writer holds the lock or waits for it.
  void RLock() {
    // acquire: pairs with the release in Unlock(), whose add made the count
    // non-negative again (a reader that sees no writer sees its writes).
    if (reader_count_.fetch_add(1, std::memory_order_acquire) < 0) {
      RLockSlow();  // a writer is pending or active: wait for its Unlock
    }
  }

  // Locks for reading if that is possible without waiting (no writer holds
  // or waits for the lock); returns whether it did.
  bool TryRLock();

  // Releases a read lock. Fatal if no read lock is held.
  void RUnlock() {
    // release: pairs with the acquire in Lock() (our reads happen before the
    // writer's writes).
    const std::int32_t r =
        reader_count_.fetch_sub(1, std::memory_order_release) - 1;
    if (r < 0) RUnlockSlow(r);  // a writer is waiting (or misuse)
  }

  // Locks for writing: waits for other writers, then for the readers that
  // hold the lock to leave. New readers wait from the moment we are the
  // pending writer.
  void Lock() {
    // Exclude other writers first; shown as "sync.RWMutex.Lock" if we sleep.
    w_.LockFor(WaitReason::kRWMutexWrite);
    // Announce ourselves to readers. acquire: orders the critical sections
    // of the readers that already left (their RUnlock's release) before
    // ours.
    const std::int32_t r =
        reader_count_.fetch_sub(kMaxReaders, std::memory_order_acquire);
    if (r != 0) WaitForReaders(r);  // r readers hold the lock
  }

  // Locks for writing if no reader or writer holds or waits for the lock;
  // returns whether it did.
  bool TryLock();

  // Releases the write lock, letting in the readers that queued meanwhile
  // (all of them) and then the next writer. Fatal if not write-locked.
  void Unlock() {
    // Let readers in. release: orders our critical section before the
    // RLocks that see a non-negative count (their add is acquire).
    const std::int32_t r =
        reader_count_.fetch_add(kMaxReaders, std::memory_order_release);
    if (r != -kMaxReaders) UnlockSlow(r);  // readers queued (or misuse)
    w_.Unlock();                           // then let the next writer in
  }

  // A reader that a writer's Unlock let in may unlock and destroy the
  // RWMutex while that Unlock is still returning (the reference-count
  // pattern): its last step, w_.Unlock(), comes after the readers are let
  // in (in the other order the next writer could act before they are).
  // Nobody else may hold w_ then, so wait for it to be released. acquire:
  // pairs with w_.Unlock()'s release; if that Unlock goes on to wake a
  // queued writer, w_'s own destructor waits for it (see mutex.h).
  // w_ held with reader_count_ >= 0 is that window, or briefly a Lock
  // between taking w_ and its subtraction, or a failing TryLock: calls in
  // progress, which a legitimate destruction excludes. A writer that holds
  // the lock has made the count negative, so no wait for it.
  ~RWMutex() {
    while ((w_.state_.load(std::memory_order_acquire) & Mutex::kLocked) != 0 &&
           reader_count_.load(std::memory_order_relaxed) >= 0) {
      AwaitWriterUnlock();
    }
  }

  // C++ Lockable / SharedLockable spellings.
  void lock() { Lock(); }
  void unlock() { Unlock(); }
  bool try_lock() { return TryLock(); }
  void lock_shared() { RLock(); }
  void unlock_shared() { RUnlock(); }
  bool try_lock_shared() { return TryRLock(); }

 private:
  // A writer subtracts this from reader_count_: it goes negative, which new
  // readers see, and adding it back recovers the number of readers.
  static constexpr std::int32_t kMaxReaders = 1 << 30;

  void RLockSlow();
  static void AwaitWriterUnlock();
  void RUnlockSlow(std::int32_t r);
  void WaitForReaders(std::int32_t r);
  void UnlockSlow(std::int32_t before);

  Mutex w_;  // held by the pending or active writer
  // Readers holding or waiting for a read lock; minus kMaxReaders while a
  // writer is pending or active (Go's readerCount).
  std::atomic<std::int32_t> reader_count_{0};
  // Readers the pending writer still waits for to leave (Go's readerWait).
  std::atomic<std::int32_t> reader_wait_{0};
  sync_internal::Sema writer_sem_;  // the pending writer waits here
  sync_internal::Sema reader_sem_;  // readers wait here for the writer
};

}  // namespace gort

#endif  // GORT_SYNC_RW_MUTEX_H_
