#include "sched/park.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

// Invariants:
//  - A Parker's word_ holds (seq, state). Only the owning task moves it from
//    kIdle/kUnparked/kTimedOut to a new (seq+1, kPreparing) (Prepare), and
//    from kPreparing to kParked (when it is about to sleep). Anyone holding
//    the ticket (seq) may move it from kPreparing/kParked to kUnparked or
//    kTimedOut, by CAS: exactly one such move wins per cycle. Whoever moves
//    it out of kParked must wake the task.
//  - ParkUnderLock moves kPreparing to kParkedUnderLock with a store, before
//    its unlock; the one waker (which took the lock after that unlock) moves
//    it to kUnparked with a store and wakes the task. Finish never moves a
//    kParkedUnderLock cycle, and a stale ticket's CAS fails on the seq.
//  - Thread parkers are never freed: a thread's parker returns to a pool at
//    thread exit and is reused by a later thread, with its seq carried on.

namespace gort {
namespace {

using sched_internal::FutexWait;
using sched_internal::FutexWake;

std::atomic<const sched_internal::SchedulerHooks*> g_hooks{nullptr};

std::atomic<std::uint32_t>* FutexWord(Parker* p) {
  // The low 32 bits of word_ on a little-endian machine.
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__);
  return reinterpret_cast<std::atomic<std::uint32_t>*>(&p->word_);
}

// Pool of thread parkers (never freed; see Invariants).
std::mutex g_pool_mu;
std::vector<Parker*>* g_pool = new std::vector<Parker*>;

struct ThreadParkerHolder {
  Parker* parker = nullptr;
  ~ThreadParkerHolder() {
    if (parker == nullptr) return;
    std::lock_guard<std::mutex> l(g_pool_mu);
    g_pool->push_back(parker);
    // A later thread_local destructor of this thread that parks must not
    // share the pooled parker with the thread that takes it next.
    parker = nullptr;
  }
};
thread_local ThreadParkerHolder t_parker;

__attribute__((noinline, noipa)) Parker* ThreadParker() {
  if (t_parker.parker == nullptr) {
    {
      std::lock_guard<std::mutex> l(g_pool_mu);
      if (!g_pool->empty()) {
        t_parker.parker = g_pool->back();
        g_pool->pop_back();
      }
    }
    if (t_parker.parker == nullptr) {
      // Once per thread. Callers may hold a spin lock (a channel's), so this
      // must not throw: out of memory here is fatal.
      t_parker.parker = new (std::nothrow) Parker(Parker::Kind::kThread);
      if (t_parker.parker == nullptr) {
        std::fputs("fatal: gort: out of memory for a thread's parker\n",
                   stderr);
        std::abort();
      }
    }
  }
  return t_parker.parker;
}

ParkResult ThreadPark(Parker* p, std::uint64_t seq, ParkCommitFn commit,
                      void* arg, std::int64_t deadline) {
  const std::uint64_t base = seq << Parker::kStateBits;
  if (commit != nullptr && !commit(arg)) {
    p->Finish(seq, Parker::kUnparked);
    return ParkResult::kUnparked;
  }
  std::uint64_t w = base | Parker::kPreparing;
  if (!p->word_.compare_exchange_strong(w, base | Parker::kParked,
                                        std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
    // An Unpark (or nothing else: threads have no timer) won already.
    return (w & Parker::kStateMask) == Parker::kTimedOut
               ? ParkResult::kTimedOut
               : ParkResult::kUnparked;
  }
  const auto parked32 = static_cast<std::uint32_t>(base | Parker::kParked);
  for (;;) {
    FutexWait(FutexWord(p), parked32, deadline);
    w = p->word_.load(std::memory_order_acquire);
    if ((w & Parker::kStateMask) != Parker::kParked) break;
    if (deadline != sched_internal::kNoDeadline &&
        sched_internal::MonoNow() >= deadline) {
      if (p->Finish(seq, Parker::kTimedOut) != Parker::kIdle) {
        return ParkResult::kTimedOut;
      }
      w = p->word_.load(std::memory_order_acquire);
      break;
    }
  }
  return (w & Parker::kStateMask) == Parker::kTimedOut ? ParkResult::kTimedOut
                                                       : ParkResult::kUnparked;
}

// ParkUnderLock found its cycle already moved: a caller broke its contract.
[[noreturn]] void FatalParkUnderLockMisuse() {
  std::fputs(
      "fatal: gort: a ParkUnderLock cycle was unparked before it parked: its "
      "ticket was used outside the lock its park releases (see "
      "ParkUnderLock in sched/park.h)\n",
      stderr);
  std::abort();
}

void ThreadParkUnderLock(Parker* p, std::uint64_t seq, void (*unlock)(void*),
                         void* arg) {
  const std::uint64_t parked = p->MarkParkedUnderLock(seq);
  unlock(arg);
  while (p->word_.load(std::memory_order_acquire) == parked) {
    FutexWait(FutexWord(p), static_cast<std::uint32_t>(parked),
              sched_internal::kNoDeadline);
  }
}

}  // namespace

const char* WaitReasonString(WaitReason reason) {
  switch (reason) {
    case WaitReason::kNone: return "";
    case WaitReason::kChanSend: return "chan send";
    case WaitReason::kChanReceive: return "chan receive";
    case WaitReason::kChanNil: return "chan send (nil chan)";
    case WaitReason::kChanNilReceive: return "chan receive (nil chan)";
    case WaitReason::kSelect: return "select";
    case WaitReason::kSelectNoCases: return "select (no cases)";
    case WaitReason::kSleep: return "sleep";
    case WaitReason::kMutex: return "sync.Mutex.Lock";
    case WaitReason::kRWMutexRead: return "sync.RWMutex.RLock";
    case WaitReason::kRWMutexWrite: return "sync.RWMutex.Lock";
    case WaitReason::kCond: return "sync.Cond.Wait";
    case WaitReason::kWaitGroup: return "sync.WaitGroup.Wait";
    case WaitReason::kSemaphore: return "semacquire";
    case WaitReason::kIOWait: return "IO wait";
    case WaitReason::kPark: return "park";
  }
  return "unknown";
}

std::uint64_t Parker::Finish(std::uint64_t seq, std::uint64_t to) {
  const std::uint64_t base = seq << kStateBits;
  std::uint64_t w = word_.load(std::memory_order_acquire);
  for (;;) {
    const std::uint64_t state = w & kStateMask;
    if ((w >> kStateBits) != seq ||
        (state != kPreparing && state != kParked)) {
      return kIdle;  // another cycle, or someone else won
    }
    // acq_rel: release publishes the waker's writes to the parked task,
    // acquire orders this after the task's Prepare/park.
    if (word_.compare_exchange_weak(w, base | to, std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      return state;
    }
  }
}

std::uint64_t Parker::MarkParkedUnderLock(std::uint64_t seq) {
  const std::uint64_t base = seq << kStateBits;
  if (word_.load(std::memory_order_relaxed) != (base | kPreparing)) {
    FatalParkUnderLockMisuse();
  }
  word_.store(base | kParkedUnderLock, std::memory_order_release);
  return base | kParkedUnderLock;
}

Parker* Parker::Current() {
  const auto* hooks = g_hooks.load(std::memory_order_acquire);
  if (hooks != nullptr) {
    if (Parker* p = hooks->current()) return p;
  }
  return ThreadParker();
}

ParkResult Park(ParkTicket t, WaitReason reason, ParkCommitFn commit,
                void* arg, std::int64_t deadline) {
  Parker* p = t.parker;
  p->reason_.store(reason, std::memory_order_relaxed);
  ParkResult r;
  if (p->kind() == Parker::Kind::kFiber) {
    r = g_hooks.load(std::memory_order_acquire)
            ->park(p, t.seq, commit, arg, deadline);
  } else {
    r = ThreadPark(p, t.seq, commit, arg, deadline);
  }
  p->reason_.store(WaitReason::kNone, std::memory_order_relaxed);
  return r;
}

void ParkUnderLock(ParkTicket t, WaitReason reason, void (*unlock)(void*),
                   void* arg) {
  Parker* p = t.parker;
  p->reason_.store(reason, std::memory_order_relaxed);
  if (p->kind() == Parker::Kind::kFiber) {
    g_hooks.load(std::memory_order_acquire)
        ->park_under_lock(p, t.seq, unlock, arg);
  } else {
    ThreadParkUnderLock(p, t.seq, unlock, arg);
  }
  p->reason_.store(WaitReason::kNone, std::memory_order_relaxed);
}

bool Unpark(ParkTicket t) {
  Parker* p = t.parker;
  const std::uint64_t base = t.seq << Parker::kStateBits;
  std::uint64_t prev;
  if (p->word_.load(std::memory_order_acquire) ==
      (base | Parker::kParkedUnderLock)) {
    // The sole waker (see ParkUnderLock): nobody else writes the word now.
    // store-release: publishes the waker's writes to the woken task.
    p->word_.store(base | Parker::kUnparked, std::memory_order_release);
    prev = Parker::kParked;
  } else {
    prev = p->Finish(t.seq, Parker::kUnparked);
  }
  if (prev == Parker::kIdle) return false;
  if (prev == Parker::kParked) {
    if (p->kind() == Parker::Kind::kFiber) {
      g_hooks.load(std::memory_order_acquire)->ready(p);
    } else {
      FutexWake(FutexWord(p));
    }
  }
  return true;
}

namespace sched_internal {
void InstallSchedulerHooks(const SchedulerHooks* hooks) {
  g_hooks.store(hooks, std::memory_order_release);
}
}  // namespace sched_internal

}  // namespace gort
