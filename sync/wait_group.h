// gort/sync/wait_group.h: sync.WaitGroup — wait for a collection of tasks.
//
// A WaitGroup counts outstanding work. The coordinator calls Add(n) before
// starting n tasks, each task calls Done() when it finishes, and Wait()
// blocks until the count is back to zero:
//
//   gort::WaitGroup wg;
//   for (int i = 0; i < 1000; ++i) {
//     wg.Add(1);                       // before starting the task
//     gort::Go([&wg, i] {
//       Work(i);
//       wg.Done();
//     });
//   }
//   wg.Wait();                         // every Work(i) has finished
//
// Tasks and waiters may be fibers run by gort's scheduler or plain OS threads,
// in any mix, and there may be any number of waiters: all of them return when
// the counter reaches zero. A waiting fiber parks (WaitReason::kWaitGroup,
// shown as "sync.WaitGroup.Wait" in fiber dumps) and leaves its OS thread to
// other fibers; a waiting thread sleeps on a futex. Only //sched:park is
// needed: without the scheduler linked, WaitGroup works between threads.
//
// Threading rules (Go's):
//  - Add, Done and Wait may be called from any fiber or thread concurrently.
//  - Calls to Add with a positive delta that start from a zero counter must
//    happen before Wait. Typically Add is called by the coordinator before it
//    starts the task, not by the task itself.
//  - A WaitGroup may be reused for a new round once its counter has reached
//    zero. Unlike Go, gort does not require the previous round's Wait calls to
//    have returned first: a woken waiter always belongs to its own round.
//  - It is a fatal error (the process prints a message and aborts) if the
//    counter goes negative ("fatal: sync: negative WaitGroup counter"), if
//    it would exceed INT32_MAX, Go's limit too ("fatal: sync: WaitGroup
//    counter overflow"; an Add whose delta alone is out of that range is
//    fatal the same way, never truncated), or if an Add races with the
//    release of the waiters of a round that has just reached zero ("fatal:
//    sync: WaitGroup misuse: Add called concurrently with Wait").
//  - The WaitGroup may be destroyed as soon as any Wait() has returned and no
//    other call is in progress or will be made (e.g. a WaitGroup on the stack
//    of the fiber that waits on it).
//
// Memory ordering: any action taken by a task before it calls Done() (or
// Add with a negative delta) is visible to every waiter after its Wait()
// returns. In the C++ memory model: each Done() happens-before the return of
// every Wait() that observes the counter reaching zero after it.
//
// Cost: Done() with nobody waiting is one atomic read-modify-write. See
// docs/sync.md for the design.

#ifndef GORT_SYNC_WAIT_GROUP_H_
#define GORT_SYNC_WAIT_GROUP_H_

#include <atomic>
#include <cstdint>

#include "sched/internal/futex.h"
#include "sched/park.h"

namespace gort {

namespace sync_internal {
struct WaitGroupPeer;  // test-only access, defined by tests
}  // namespace sync_internal

class WaitGroup {
 public:
  WaitGroup() = default;
  WaitGroup(const WaitGroup&) = delete;
  WaitGroup& operator=(const WaitGroup&) = delete;

  // Adds `delta`, which may be negative, to the counter. When the counter
  // reaches zero, every task blocked in Wait() is released. Fatal if the
  // counter becomes negative or would exceed INT32_MAX.
  void Add(std::int64_t delta);

  // Decrements the counter by one: Add(-1).
  void Done() {
    // acq_rel, as in Add(): see wait_group.cc.
    const std::uint64_t s =
        state_.fetch_sub(kOne, std::memory_order_acq_rel) - kOne;
    if (static_cast<std::int32_t>(s >> 32) > 0) return;  // the fast path
    DoneSlow(s);
  }

  // Blocks the calling fiber or thread until the counter is zero. Returns at
  // once if it is zero already.
  void Wait();

  // The current counter: a snapshot, for tests and diagnostics only.
  std::int64_t count() const {
    return static_cast<std::int32_t>(state_.load(std::memory_order_relaxed) >>
                                     32);
  }

 private:
  friend struct sync_internal::WaitGroupPeer;

  // A blocked waiter: lives on the waiting task's stack for the duration of
  // its Wait() (Go's sudog). Linked into the queue under lock_.
  struct Waiter {
    ParkTicket ticket;
    Waiter* next = nullptr;
  };

  static constexpr std::uint64_t kOne = std::uint64_t{1} << 32;  // counter 1

  static void UnlockQueue(void* wg);
  void DoneSlow(std::uint64_t state);
  void Release(std::uint64_t state);

  // High 32 bits: the counter (signed). Low 32 bits: the number of waiters
  // queued in this round. Go's sync.WaitGroup.state, same layout.
  std::atomic<std::uint64_t> state_{0};
  // Protects head_/tail_, and makes "count a waiter + queue it" one step.
  sched_internal::Lock lock_;
  Waiter* head_ = nullptr;  // FIFO: waiters are woken in arrival order
  Waiter* tail_ = nullptr;
};

}  // namespace gort

#endif  // GORT_SYNC_WAIT_GROUP_H_
