// gort/sync/once.h: sync.Once — run an initialization exactly once.
//
//   gort::Once once;
//   Config* config = nullptr;
//
//   const Config& GetConfig() {            // from any fiber or thread
//     once.Call([] { config = LoadConfig(); });
//     return *config;                      // LoadConfig() is visible here
//   }
//
// Call(f) runs f if no earlier call has completed successfully; at most one
// f runs at a time, and callers that arrive while one runs wait until it
// finishes: a fiber parks (WaitReason::kMutex, "sync.Mutex.Lock" in fiber
// dumps, which is what Go shows for a goroutine waiting in Once.Do), a thread
// sleeps on a futex. Fibers run by gort's scheduler and plain threads may
// call it in any mix. Only //sched:park is needed.
//
// Exceptions (std::call_once's semantics, NOT Go's): if f throws, the
// exception propagates to the caller whose f threw, the Once is NOT marked
// done, and one of the waiting callers (or the next caller) runs its own f.
// Go's sync.Once instead counts a panicking f as done: later Do calls return
// at once without running anything. gort::Exit() inside f unwinds like an
// exception, so it too leaves the Once not done.
//
// Threading rules:
//  - Call and Done may be called from any fiber or thread, concurrently.
//  - f must not call Call on the same Once: it would wait for itself
//    forever (as with std::call_once and Go's Once.Do).
//  - Each caller's own f is the one that may run; different callers may pass
//    different functions, as with std::call_once.
//  - The Once may be destroyed as soon as a Call has returned, if no other
//    Call will be made and none is in progress, except possibly the one
//    whose f ran: that one no longer touches the Once once Done() is true.
//
// Memory ordering: everything the successful f did (and its caller before
// calling Call) is visible to every caller after its Call returns, and to
// any task that sees Done() return true.
//
// Cost: once done, Call is one load-acquire and a branch, inlined.

#ifndef GORT_SYNC_ONCE_H_
#define GORT_SYNC_ONCE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "sched/internal/futex.h"
#include "sched/park.h"

namespace gort {

class Once {
 public:
  constexpr Once() = default;
  Once(const Once&) = delete;
  Once& operator=(const Once&) = delete;

  // Runs std::invoke(f, args...) unless a call has already completed without
  // throwing; waits while another caller's f is running. Rethrows what f
  // throws.
  template <typename F, typename... Args>
  void Call(F&& f, Args&&... args) {
    // load-acquire, pairs with the store-release of kDone in CallSlow().
    if (state_.load(std::memory_order_acquire) == kDone) return;
    auto bound = [&] {
      std::invoke(std::forward<F>(f), std::forward<Args>(args)...);
    };
    CallSlow(&Invoke<decltype(bound)>, &bound);
  }

  // Whether a call has completed (without throwing). A load-acquire: if
  // true, what f did is visible to the caller.
  bool Done() const { return state_.load(std::memory_order_acquire) == kDone; }

 private:
  // state_ values. Who owns what in each is in once.cc.
  enum : std::uint32_t {
    kIdle = 0,       // f has not completed; nobody runs it
    kRunning = 1,    // one caller runs its f; others queue
    kReleasing = 2,  // f returned; its caller is waking the queue
    kDone = 3,       // f completed; Call returns at once
  };

  // A caller waiting for the running f: lives on its stack (Go's sudog).
  struct Waiter {
    ParkTicket ticket;
    Waiter* next = nullptr;
    bool done = false;  // set by the waker: f completed, return at once
  };

  template <typename B>
  static void Invoke(void* bound) {
    (*static_cast<B*>(bound))();
  }
  static void UnlockQueue(void* once);

  void CallSlow(void (*invoke)(void*), void* bound);
  void Finish(bool done);

  std::atomic<std::uint32_t> state_{kIdle};
  sched_internal::Lock lock_;  // protects head_/tail_ and state_'s changes
  Waiter* head_ = nullptr;     // FIFO
  Waiter* tail_ = nullptr;
};

}  // namespace gort

#endif  // GORT_SYNC_ONCE_H_
