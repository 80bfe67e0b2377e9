// gort/sched/park.h: the parking API that //chan, //sync and //netpoll build on.
//
// A task is either a fiber run by gort's scheduler or a plain OS thread; both
// park and are unparked through the same calls, so a channel or mutex built
// on this header works between fibers, between threads, and in any mix. With
// no scheduler linked (only //sched:park), every task is a thread and parks
// on a futex; when //sched is linked, fibers park by switching away, leaving
// their OS thread (M) free to run other fibers.
//
// A park cycle (Go's gopark/goready):
//
//   ParkTicket t = Parker::Current()->Prepare();
//   queue.Add(t);            // under the channel's lock, say
//   Park(t, WaitReason::kChanReceive, &UnlockChannel, &ch);
//
//   // elsewhere, on any thread or fiber:
//   ParkTicket t = queue.Take();   // under the lock
//   ...unlock...
//   Unpark(t);
//
// Rules:
//  - Prepare() is called by the task itself; it starts a new cycle and
//    invalidates every ticket of earlier cycles, so a late Unpark of an old
//    ticket (a timed-out waiter woken twice, say) is a harmless no-op.
//  - Park() runs `commit(arg)` once the task is committed to sleeping: for a
//    fiber, after it has switched away (its stack is no longer in use); for
//    a thread, just before it sleeps. `commit` typically unlocks the lock
//    that protected the queue the ticket was put in. If it returns false the
//    park is abandoned and Park returns kUnparked at once.
//  - Unpark(t) may be called from any fiber or thread, at any time after
//    Prepare() returned t, even before Park(t) has been called: then Park
//    returns at once. At most one Unpark per cycle wins (returns true).
//    (ParkUnderLock, below, is the exception: its one Unpark comes only
//    after its unlock.)
//  - A deadline (absolute, MonoNow() nanoseconds) makes Park return
//    kTimedOut if no Unpark won by then.
// Memory ordering: everything the unparker did before a winning Unpark(t)
// is visible to the parked task when Park returns kUnparked.
// Parker objects are never freed while the runtime runs (they are pooled
// with their G or thread), so a stale ticket is always safe to Unpark. A
// fiber's parker is freed by gort::Shutdown(): tickets must not outlive it.

#ifndef GORT_SCHED_PARK_H_
#define GORT_SCHED_PARK_H_

#include <atomic>
#include <cstdint>

#include "sched/internal/futex.h"

namespace gort {

// Why a task is parked: shown by fiber dumps and leak reports.
enum class WaitReason : std::uint8_t {
  kNone,
  kChanSend,
  kChanReceive,
  kChanNil,         // send on a nil channel: forever
  kChanNilReceive,  // receive on a nil channel: forever
  kSelect,
  kSelectNoCases,
  kSleep,
  kMutex,
  kRWMutexRead,
  kRWMutexWrite,
  kCond,
  kWaitGroup,
  kSemaphore,
  kIOWait,
  kPark,  // generic
};

// "chan receive", "select", "sleep", ... as Go's runtime spells them.
const char* WaitReasonString(WaitReason reason);

class Parker;

// Identifies one park cycle of one task.
struct ParkTicket {
  Parker* parker = nullptr;
  std::uint64_t seq = 0;
  explicit operator bool() const { return parker != nullptr; }
};

enum class ParkResult { kUnparked, kTimedOut };

using ParkCommitFn = bool (*)(void* arg);

class Parker {
 public:
  enum class Kind : std::uint8_t { kThread, kFiber };

  // The calling task's parker: its fiber's (when run by the scheduler) or
  // its thread's. Cheap; valid for the task's life. Never throws, so it may
  // be called with a spin lock held (a thread's first call allocates).
  static Parker* Current();

  // Starts a park cycle. Called only by the task that owns this parker.
  ParkTicket Prepare() {
    std::uint64_t seq = (word_.load(std::memory_order_relaxed) >> kStateBits) + 1;
    word_.store((seq << kStateBits) | kPreparing, std::memory_order_relaxed);
    return ParkTicket{this, seq};
  }

  Kind kind() const { return kind_; }
  // Readable from any thread (fiber dumps): a snapshot.
  WaitReason wait_reason() const {
    return reason_.load(std::memory_order_relaxed);
  }
  // For kFiber: the scheduler's G.
  void* owner() const { return owner_; }

  explicit Parker(Kind kind, void* owner = nullptr)
      : owner_(owner), kind_(kind) {}
  Parker(const Parker&) = delete;
  Parker& operator=(const Parker&) = delete;

  // --- For the scheduler and this library only -----------------------------
  static constexpr int kStateBits = 3;
  static constexpr std::uint64_t kStateMask = (1u << kStateBits) - 1;
  enum : std::uint64_t {
    kIdle = 0,       // no cycle in progress
    kPreparing = 1,  // Prepare()d, not yet asleep
    kParked = 2,     // asleep: the winner of Unpark must wake it
    kUnparked = 3,   // an Unpark won
    kTimedOut = 4,   // the deadline won
    // Asleep in ParkUnderLock: its one waker holds the lock, so the waker
    // moves it to kUnparked with a plain store.
    kParkedUnderLock = 5,
  };
  // seq << kStateBits | state. The low 32 bits are a futex word for threads.
  std::atomic<std::uint64_t> word_{0};
  void* owner_;
  Kind kind_;
  std::atomic<WaitReason> reason_{WaitReason::kNone};

  // Moves the cycle `seq` from kPreparing or kParked to `to` (kUnparked or
  // kTimedOut). Returns the state it replaced, or kIdle if it lost.
  std::uint64_t Finish(std::uint64_t seq, std::uint64_t to);

  // ParkUnderLock's commit point, called by the parking side just before
  // its unlock: moves the cycle `seq` from kPreparing to kParkedUnderLock
  // with a store-release, and returns the new word. Fatal if the cycle was
  // moved already (its ticket escaped the lock; best effort: a load).
  std::uint64_t MarkParkedUnderLock(std::uint64_t seq);
};

// Parks the calling task for the cycle `t` (which it Prepare()d). See above.
ParkResult Park(ParkTicket t, WaitReason reason, ParkCommitFn commit = nullptr,
                void* arg = nullptr,
                std::int64_t deadline = sched_internal::kNoDeadline);

// Park for a cycle whose ticket is reachable only under one lock, which
// `unlock(arg)` releases once the task is committed to sleeping (as Park's
// commit does), with no deadline. The caller promises that
//  - the ticket is Unparked only by a task that took it out of a structure
//    that lock protects, while holding the lock (it may call Unpark after
//    releasing it), and
//  - at most one Unpark of this cycle happens.
// A channel's plain send and receive are such parks: the waiter's record is
// dequeued once, under the channel's lock. Then neither side needs an atomic
// read-modify-write on the parker (each costs ~6 ns here, and a blocking
// hand-off would otherwise pay two of them): the sleeper publishes "parked"
// with a store before it releases the lock, and the waker, which took the
// lock after that, publishes "unparked" with a store.
// Always returns as if Unparked.
void ParkUnderLock(ParkTicket t, WaitReason reason, void (*unlock)(void*),
                   void* arg);

// Wakes the task of cycle `t` if that cycle is still in progress and no
// other Unpark or the deadline won. Returns whether this call won.
bool Unpark(ParkTicket t);

// Nanoseconds on the monotonic clock deadlines are expressed in.
inline std::int64_t MonoNow() { return sched_internal::MonoNow(); }

namespace sched_internal {

// How the scheduler, when linked, takes over parking for its fibers.
struct SchedulerHooks {
  // The running fiber's parker, or null if the caller is not a scheduled
  // fiber (then it parks as a thread).
  Parker* (*current)();
  // Parks a fiber's parker (the cycle is already Prepare()d).
  ParkResult (*park)(Parker* p, std::uint64_t seq, ParkCommitFn commit,
                     void* arg, std::int64_t deadline);
  // ParkUnderLock for a fiber's parker.
  void (*park_under_lock)(Parker* p, std::uint64_t seq, void (*unlock)(void*),
                          void* arg);
  // Makes a parked fiber runnable; called by the winner of Finish().
  void (*ready)(Parker* p);
};
void InstallSchedulerHooks(const SchedulerHooks* hooks);

}  // namespace sched_internal
}  // namespace gort

#endif  // GORT_SCHED_PARK_H_
