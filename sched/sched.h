// gort/sched/sched.h: Go's G/M/P scheduler for gort fibers.
//
//   gort::Go([] { ... });                       // go f()
//   gort::Yield();                              // runtime.Gosched()
//   gort::Sleep(absl::Milliseconds(100));       // time.Sleep: parks the fiber
//   gort::NumFibers();                          // runtime.NumGoroutine()
//   gort::Exit();                               // runtime.Goexit()
//   gort::SetMaxProcs(4);                       // GOMAXPROCS
//   gort::LockOSThread(); gort::UnlockOSThread();
//   ssize_t n = gort::Blocking([&] { return read(fd, buf, len); });
//
//   int main() { return gort::RunMain([] { ...main's body, as a fiber...; return 0; }); }
//
// G = a fiber plus a small control block; M = an OS thread; P = the right to
// run Gs, with its own run queue. MaxProcs Ps exist; an M needs a P to run
// fibers; Ms without work sleep. See docs/sched.md for the design.
//
// Threading rules: every function here may be called from a fiber or from
// any plain thread. A plain thread that sleeps or waits on a gort primitive
// blocks that thread only. The runtime starts lazily on first use with
// default options (MaxProcs = CPUs available to the process, or the
// GORT_MAXPROCS environment variable), or explicitly with Start().
//
// Memory ordering: everything the caller of Go(fn) did before the call is
// visible to fn when it starts (as Go's `go` statement guarantees).
//
// Preemption: C++ cannot be safely interrupted at arbitrary points, so a
// fiber runs until it reaches a scheduling point (Yield, Sleep, a channel or
// mutex wait, Blocking, its end). A fiber that runs for more than 10 ms
// without one is reported by the monitor through the scheduler trace
// (GORT_SCHEDTRACE=<ms>), so hot loops can be found and given a Yield().

#ifndef GORT_SCHED_SCHED_H_
#define GORT_SCHED_SCHED_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <source_location>
#include <type_traits>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "sched/park.h"
#include "stack/stack.h"

namespace gort {

struct RuntimeOptions {
  // Number of Ps. 0: $GORT_MAXPROCS if set, else the CPUs this process may
  // run on.
  int max_procs = 0;
  // Stack size of every fiber started by Go().
  std::size_t stack_size = kDefaultStackSize;
  // Print a scheduler trace line every this many milliseconds (0: never).
  // 0 here defers to $GORT_SCHEDTRACE.
  int sched_trace_ms = 0;
};

// Starts the runtime with `options`. Fatal if it is already running.
void Start(const RuntimeOptions& options = {});

// Whether the runtime is running.
bool Running();

// Waits until every fiber has finished (at most `timeout`), then stops and
// joins all Ms and the monitor and frees the runtime's memory. Returns false,
// leaving the runtime running, if fibers are still alive at the timeout.
// Once none is, it also waits, without a timeout, for threads outside the
// runtime that are still returning from readying a fiber (a few
// instructions, unless such a thread was preempted there).
// Must be called from a plain thread, not from a fiber, and no other
// thread may call Go() while it runs (that includes gort::AfterFunc
// functions: stop those timers first). The runtime may be started again
// afterwards; a Go() after Shutdown starts it with default options.
bool Shutdown(absl::Duration timeout = absl::InfiniteDuration());

// Starts a fiber running `fn` (any movable callable taking no arguments;
// a result is discarded). `site` records where it was started, for fiber
// dumps and leak reports. A callable of up to 56 bytes, aligned to at most
// 8 (a lambda capturing seven pointers), is stored in the fiber's control
// block itself: no heap allocation; a bigger one (an absl::AnyInvocable,
// 16-aligned, say) is moved to the heap. If copying or moving `fn` throws,
// no fiber is started and the exception propagates.
//
// Called from a fiber, Go() is a scheduling point when the fibers it starts
// pile up faster than all Ps run them: it then yields once (back-pressure,
// where Go would preempt the spawner after 10 ms), so that a loop starting
// a million fibers does not hold a million unstarted ones at once. As with
// every scheduling point, do not call it while holding an OS-level lock
// (std::mutex) that another fiber may block its thread on.
template <typename F>
void Go(F&& fn, std::source_location site = std::source_location::current());

// How Go(options, fn) starts a fiber.
struct GoOptions {
  // Run it on a compact stack (//stack: kCompactStackSize, 2 KiB, two to a
  // page, no guard page; a canary checked at every switch), for programs
  // that hold very many small fibers: a fiber parked on a compact stack
  // costs about 2.3 KB of memory instead of about 4.1 KB (one page plus a
  // page-table share). The runtime runs its own slow paths for such a fiber
  // on its M's stack (a compact fiber always switches through the M's g0,
  // one extra switch each time it parks, yields or exits), so the 2 KiB are
  // the function's own, less about 1 KiB that gort's calls may use. For
  // short, shallow functions only: sleeping, channel and mutex operations,
  // Go(), small computations. NOT for code that throws (unwinding needs
  // about 5 KB; Exit() there is a fatal error), formats with printf-family
  // functions, or recurses; signal handlers that may run on it must use
  // SA_ONSTACK. An overrun is fatal, but found only at the fiber's next
  // switch, after it has written into a neighbouring fiber's stack: the
  // price of the memory saved (docs/stack.md).
  bool compact_stack = false;
};

// Go(fn) with options: gort::Go({.compact_stack = true}, [] { ... });
template <typename F>
void Go(const GoOptions& options, F&& fn,
        std::source_location site = std::source_location::current());

// Lets other fibers run; the caller stays runnable. From a plain thread:
// std::this_thread::yield().
void Yield();

// Parks the calling fiber (or blocks the calling thread) for `d` / until `t`
// (time.Sleep). Named Sleep, not SleepFor, so that an unqualified call is
// never ambiguous with absl::SleepFor, which argument-dependent lookup finds.
void Sleep(absl::Duration d);
void SleepUntil(absl::Time t);

// Number of fibers started by Go() (or RunMain) that have not finished.
std::int64_t NumFibers();

// Ends the calling fiber: its stack unwinds (destructors run), as Go's
// runtime.Goexit. Implemented with an exception of a private type: a
// `catch (...)` on the way must rethrow. Fatal from a plain thread.
[[noreturn]] void Exit();

// GOMAXPROCS. SetMaxProcs starts the runtime if needed; n >= 1.
void SetMaxProcs(int n);
int MaxProcs();

// Wires the calling fiber to its current OS thread: until the matching
// UnlockOSThread, it only ever runs on this thread and no other fiber runs
// on it. Calls nest. No-ops on a plain thread.
void LockOSThread();
void UnlockOSThread();

// Runs `fn`, a call that may block in the kernel, on the calling fiber's
// thread while letting the scheduler hand this thread's P to another thread
// if the call takes more than ~20 us (Go's system call hand-off), so other
// fibers keep running. `fn` must not use gort's own blocking primitives.
// Returns what `fn` returns.
template <typename F>
auto Blocking(F&& fn) -> std::invoke_result_t<F&>;

// Runs `main_fn` as the main fiber (Go's main goroutine: it can park, sleep
// and wait like any fiber) and returns its result once it returns. Fibers
// still alive then are abandoned, as in Go: they keep running in the
// background until the process exits.
//   int main() { return gort::RunMain([] { ...; return 0; }); }
int RunMain(absl::AnyInvocable<int() &&> main_fn);

// One live fiber, as fiber dumps and leak checkers see it.
struct FiberInfo {
  std::uint64_t id;
  enum class State { kRunnable, kRunning, kWaiting, kSyscall } state;
  WaitReason wait_reason;
  const char* created_file;  // where Go() was called
  int created_line;
  // When not running: the fiber's saved frame pointer, the head of a chain
  // of {next frame pointer, return address} pairs on its stack that ends
  // with a null link. Valid only while the fiber stays off its thread.
  void* saved_frame_pointer;
};
// Calls `fn` for every live fiber. The snapshot is not atomic.
void ForEachFiber(const std::function<void(const FiberInfo&)>& fn);

// Scheduler statistics, for tests and the trace.
struct SchedStats {
  int procs;
  int idle_procs;
  int threads;           // Ms
  int spinning_threads;
  int idle_threads;
  std::int64_t global_runq;
  std::int64_t fibers;
  std::int64_t handoffs;          // Ps retaken from Blocking calls
  std::int64_t long_running;      // fibers reported running > 10 ms
  std::int64_t trace_lines;       // scheduler trace lines printed
};
SchedStats GetSchedStats();

namespace sched_internal {
bool EnterBlocking();
void ExitBlocking(bool entered);

// How Go() stores a fiber's function in its G (see Go).
inline constexpr std::size_t kTaskInlineBytes = 56;
// Runs the callable at `storage` if `run`, then destroys it (also when it
// throws, Exit() included).
using TaskFn = void (*)(void* storage, bool run);
struct SpawnSlot {
  void* g;
  void* storage;  // kTaskInlineBytes, aligned for a pointer
};
SpawnSlot BeginSpawn();  // a fresh G, not yet runnable
void CommitSpawn(SpawnSlot slot, TaskFn fn, std::source_location site,
                 const GoOptions& options);
void AbortSpawn(SpawnSlot slot) noexcept;  // the callable was never built

template <typename Fn>
void InlineTask(void* storage, bool run) {
  struct Destroy {
    Fn* f;
    ~Destroy() { f->~Fn(); }
  } destroy{std::launder(static_cast<Fn*>(storage))};
  if (run) static_cast<void>(std::move(*destroy.f)());
}

template <typename Fn>
void HeapTask(void* storage, bool run) {
  std::unique_ptr<Fn> f(*static_cast<Fn**>(storage));
  if (run) static_cast<void>(std::move(*f)());
}
}  // namespace sched_internal

template <typename F>
void Go(F&& fn, std::source_location site) {
  Go(GoOptions{}, std::forward<F>(fn), site);
}

template <typename F>
void Go(const GoOptions& options, F&& fn, std::source_location site) {
  using Fn = std::decay_t<F>;
  static_assert(std::is_invocable_v<Fn&&>,
                "gort::Go needs a callable taking no arguments");
  static_assert(std::is_constructible_v<Fn, F&&>,
                "gort::Go needs a movable (or copyable) callable");
  static_assert(std::is_nothrow_destructible_v<Fn>,
                "gort::Go needs a callable whose destructor does not throw");
  if constexpr (sizeof(Fn) <= sched_internal::kTaskInlineBytes &&
                alignof(Fn) <= alignof(void*)) {
    sched_internal::SpawnSlot slot = sched_internal::BeginSpawn();
    if constexpr (std::is_nothrow_constructible_v<Fn, F&&>) {
      ::new (slot.storage) Fn(std::forward<F>(fn));
    } else {
      try {
        ::new (slot.storage) Fn(std::forward<F>(fn));
      } catch (...) {
        sched_internal::AbortSpawn(slot);
        throw;
      }
    }
    sched_internal::CommitSpawn(slot, &sched_internal::InlineTask<Fn>, site,
                                options);
  } else {
    auto heap = std::make_unique<Fn>(std::forward<F>(fn));
    sched_internal::SpawnSlot slot = sched_internal::BeginSpawn();
    ::new (slot.storage) Fn*(heap.release());
    sched_internal::CommitSpawn(slot, &sched_internal::HeapTask<Fn>, site,
                                options);
  }
}

template <typename F>
auto Blocking(F&& fn) -> std::invoke_result_t<F&> {
  struct Guard {
    bool entered = sched_internal::EnterBlocking();
    ~Guard() { sched_internal::ExitBlocking(entered); }
  } guard;
  return fn();
}

}  // namespace gort

#endif  // GORT_SCHED_SCHED_H_
