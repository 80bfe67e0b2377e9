// gort/fiber: stackful fibers and the context switch beneath gort's scheduler.
//
// A Fiber is a function with its own stack that runs until it chooses to
// switch to another fiber. //fiber has no scheduler: it is usable alone for
// generators and coroutines (Resume/Suspend), and it is the mechanism //sched
// builds goroutines on (SwitchTo/ExitTo with a post-switch hook).
//
//   gort::Fiber* gen = gort::Fiber::Create([&] {
//     for (int i = 0; i < 3; ++i) { value = i; gort::Fiber::Suspend(); }
//   });
//   while (gen->Resume(), !gen->finished()) Use(value);
//   gort::Fiber::Destroy(gen);
//
// Every OS thread implicitly owns a "thread fiber" standing for its original
// stack, so Fiber::Current() is never null and a thread can switch to a fiber
// and be switched back to like any other fiber.
//
// Threading rules:
//  - A fiber runs on one thread at a time. A suspended fiber may be resumed on
//    any thread (it migrates); resuming a fiber that is running, or resuming
//    it from two threads at once, is undefined: the caller (a scheduler)
//    guarantees exclusive ownership of a suspended fiber.
//  - Switching is a full memory barrier for the fibers involved: everything
//    a fiber did before it was switched away from is visible to it after it
//    is resumed, on whatever thread, provided the handoff between threads
//    was itself synchronised (a scheduler's queues are).
//  - thread_local variables are per OS thread, not per fiber. A fiber that
//    migrates sees the new thread's values, and the compiler must not cache
//    a thread_local's address across a switch: read runtime thread-locals
//    uncacheably: GORT_DECLARE_THREAD_LOCAL below, or functions marked
//    GORT_TLS_ACCESSOR (Fiber::Current() reads its thread state that way).
//
// Memory: the fiber's control block lives inside the top of its own stack
// (as Photon does), so a fiber costs its touched stack pages and nothing else.
//
// An exception that escapes a fiber's function terminates the process with
// "fatal: uncaught exception in fiber <id> (<name>): <type>: <what()>", as
// an unrecovered panic ends a Go program.

#ifndef GORT_FIBER_FIBER_H_
#define GORT_FIBER_FIBER_H_

#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "fiber/internal/context.h"
#include "stack/stack.h"

// Marks a function whose result depends on the OS thread it runs on, so that
// the compiler may neither inline it nor reuse its result across a call that
// switches fibers (which may move the caller to another thread). GCC and
// Clang both cache TLS addresses across calls otherwise.
#define GORT_TLS_ACCESSOR __attribute__((noinline, noipa))

// Declares `inline T* FN()` returning the address of the calling thread's
// instance of `extern "C" __thread T SYMBOL` (initial-exec TLS), in a way
// the compiler can never cache across a fiber switch: on x86-64 through an
// `asm volatile` read of the thread pointer (no call), elsewhere through a
// GORT_TLS_ACCESSOR function. SYMBOL must be defined, once, with
// GORT_DEFINE_THREAD_LOCAL(T, SYMBOL). For the runtime's own thread-locals
// (current fiber, current M): a fiber may resume on another thread.
#if defined(__x86_64__) && defined(__ELF__)
#define GORT_DECLARE_THREAD_LOCAL(T, SYMBOL, FN)                    \
  extern "C" {                                                      \
  extern __thread T SYMBOL __attribute__((tls_model("initial-exec"))); \
  }                                                                 \
  inline T* FN() {                                                  \
    T* p;                                                           \
    asm volatile("movq %%fs:0, %0\n\taddq " #SYMBOL                 \
                 "@gottpoff(%%rip), %0"                             \
                 : "=r"(p));                                        \
    return p;                                                       \
  }
#else
#define GORT_DECLARE_THREAD_LOCAL(T, SYMBOL, FN)                    \
  extern "C" {                                                      \
  extern __thread T SYMBOL __attribute__((tls_model("initial-exec"))); \
  }                                                                 \
  GORT_TLS_ACCESSOR inline T* FN() { return &SYMBOL; }
#endif
#define GORT_DEFINE_THREAD_LOCAL(T, SYMBOL) \
  extern "C" {                              \
  __thread T SYMBOL __attribute__((tls_model("initial-exec"))); \
  }

namespace gort {

class Fiber;

namespace fiber_internal {
// libstdc++'s per-thread exception state (__cxa_eh_globals).
struct EhGlobals {
  void* caught_exceptions;
  unsigned int uncaught_exceptions;
};
// What the switch needs from the running thread.
struct ThreadState {
  Fiber* current = nullptr;
  EhGlobals* eh = nullptr;
};
// The calling thread's state, read so that the compiler can never reuse the
// address across a switch (a fiber may be on another thread after one).
// Out of line (GORT_TLS_ACCESSOR): the portable form.
GORT_TLS_ACCESSOR ThreadState* CurrentThreadStateSlow();
// Initial-exec TLS (static TLS block; libstdc++ uses it too), so gort must
// not be dlopen()ed into a process whose static TLS is exhausted.
GORT_DECLARE_THREAD_LOCAL(ThreadState, gort_fiber_thread_state,
                          ThreadStateSlot)
inline ThreadState* CurrentThreadState() {
  ThreadState* ts = ThreadStateSlot();
  if (__builtin_expect(ts->current == nullptr, 0)) {
    return CurrentThreadStateSlow();
  }
  return ts;
}
}  // namespace fiber_internal

class Fiber {
 public:
  using Function = absl::AnyInvocable<void() &&>;

  struct Options {
    std::size_t stack_size = kDefaultStackSize;
    // A compact stack (Stack::AllocateCompact: kCompactStackSize bytes, no
    // guard page) instead of one of stack_size bytes. Its canary is checked
    // at every switch away from the fiber; an overrun is fatal, but only
    // detected after it has written into the neighbouring stack. For short,
    // shallow functions only: no exceptions, no printf-family formatting.
    bool compact_stack = false;
    // Shown in fatal messages and fiber dumps. Must outlive the fiber.
    const char* name = nullptr;
  };

  // Who owns the fiber's stack, by state:
  //  kReady:    created, never run. Owned by its creator.
  //  kRunning:  running on some thread, which owns the stack.
  //  kSuspended: switched away from; owned by whoever will resume it.
  //  kFinished: its function returned; the stack may be recycled by Destroy.
  enum class State : std::uint8_t { kReady, kRunning, kSuspended, kFinished };

  // A function run on the destination's side right after a switch, before
  // the destination continues; `from` is the fiber just switched away from,
  // whose stack is no longer in use. Schedulers publish `from` (make it
  // runnable, record it parked, or recycle it) here: doing so before the
  // switch would let another thread resume `from` while still on its stack.
  using AfterSwitch = void (*)(Fiber* from, void* arg);

  // Creates a fiber that will run `fn` when first switched to. The control
  // block is placed in the top of the stack. Never returns null: running out
  // of stack memory is fatal, and an empty `fn` too. `fn` is any callable
  // Function can hold (a lambda, a Function, ...); it is constructed in
  // place in the control block, never moved there. An exception from that
  // construction (a throwing copy; std::bad_alloc for a callable too large
  // to be stored inline) propagates, and no fiber or stack is left behind.
  template <typename F>
  static Fiber* Create(F&& fn, const Options& options);
  template <typename F>
  static Fiber* Create(F&& fn) {
    return Create(std::forward<F>(fn), Options{});
  }
  template <typename F>
  static Fiber* Create(F&& fn, Stack stack, const char* name = nullptr);

  // Destroys a fiber that is kReady or kFinished and returns its stack to
  // the pool. Must not be called on the current fiber.
  static void Destroy(Fiber* fiber);

  // --- Generator-style use -----------------------------------------------

  // Runs this fiber on the calling thread until it calls Suspend() or its
  // function returns. Must not be called on a running fiber.
  inline void Resume();

  // Switches from the current fiber back to the one that last Resume()d it.
  // Fatal if the current fiber was not entered through Resume().
  inline static void Suspend();

  // --- Scheduler-style use -----------------------------------------------

  // Switches from the current fiber to `to` (kReady or kSuspended). The
  // caller becomes kSuspended; `after(caller, arg)`, if given, runs on `to`'s
  // side before `to` continues. Returns when someone switches back.
  inline static void SwitchTo(Fiber* to, AfterSwitch after = nullptr,
                              void* arg = nullptr);

  // Like SwitchTo, for a fiber that has finished its work: the current fiber
  // becomes kFinished and never runs again; `after` typically Destroy()s it.
  // Must be called from a fiber created by Create (not a thread fiber), and
  // not inside a `catch` block (the caught exception would never be freed).
  [[noreturn]] static void ExitTo(Fiber* to, AfterSwitch after = nullptr,
                                  void* arg = nullptr);

  // --- Queries -------------------------------------------------------------

  // The fiber running on the calling thread; the thread fiber when no
  // created fiber runs. Never null. Uncacheable across switches.
  static Fiber* Current() {
    return fiber_internal::CurrentThreadState()->current;
  }

  std::uint64_t id() const { return id_; }
  const char* name() const { return name_; }
  State state() const { return state_; }
  bool finished() const { return state_ == State::kFinished; }
  bool is_thread_fiber() const { return !stack_; }
  const Stack& stack() const { return stack_; }

  // For a suspended fiber: its saved frame pointer and resume address, from
  // which a debugger or leak checker can walk its stack (frame pointers are
  // kept: -fno-omit-frame-pointer). Null for a running or never-run fiber.
  inline void* SavedFramePointer() const;
  inline void* SavedProgramCounter() const;

  // Called on the fiber's own stack after its function has returned and the
  // function object has been destroyed; must not return (it ends with
  // ExitTo). The default switches back to the fiber that last Resume()d it.
  // Schedulers install one that picks the next fiber to run.
  using ExitHandler = void (*)(Fiber* self);
  void set_exit_handler(ExitHandler h) { exit_handler_ = h; }

  // One word for the layer above (the scheduler stores its G here).
  void* user_data() const { return user_data_; }
  void set_user_data(void* p) { user_data_ = p; }

  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

 private:
  friend struct FiberAccess;

  Fiber(Stack stack, const char* name);  // fn_ is set by Create
  // The control block and first frame in `stack`, with an empty fn_.
  static Fiber* Place(Stack stack, const char* name);
  [[noreturn]] static void EmptyFunction();
  explicit Fiber(std::uint64_t id);  // a thread fiber
  ~Fiber();

  static void Entry(void* self, void* transfer);
  // The switch is inline, so that each call site resumes in its own code:
  // a shared out-of-line function would `ret` through a return-stack-buffer
  // entry pushed by the other fiber, a mispredict on every switch.
  // `ts` is the calling thread's state, `from` its current fiber; the
  // caller has checked that `to` may be switched to when `to_checked`.
  __attribute__((always_inline)) static void SwitchImpl(
      fiber_internal::ThreadState* ts, Fiber* from, Fiber* to,
      AfterSwitch after, void* arg, bool exiting, bool to_checked = false);
  __attribute__((always_inline)) static void OnResumed(Fiber* from);
  // The saved switch frame while suspended; null otherwise.
  const fiber_internal::SwitchFrame* SuspendedFrame() const;
  static void SanitizerStartSwitch(Fiber* from, Fiber* to, bool exiting);
  static void SanitizerFinishSwitch(Fiber* from);
  [[noreturn]] static void BadSwitch(Fiber* from, Fiber* to, bool exiting);
  // Fatal unless the canary of `from`'s unguarded (e.g. compact) stack is
  // intact.
  static void CheckCanary(const Fiber* from);
  static void SwapExceptionState(fiber_internal::EhGlobals* eh, Fiber* from,
                                 Fiber* to);
  [[noreturn]] static void BadResume(Fiber* f);
  [[noreturn]] static void BadSuspend(Fiber* f);

  // Saved stack pointer while not running; first member: hot in the switch.
  void* sp_ = nullptr;
  Fiber* resumer_ = nullptr;  // who Resume()d us; Suspend() returns there
  void* user_data_ = nullptr;
  ExitHandler exit_handler_ = nullptr;
  AfterSwitch pending_after_ = nullptr;  // for the fiber we switch to
  void* pending_arg_ = nullptr;
  std::uint64_t id_;
  State state_ = State::kReady;
  // No guard below the stack (compact, or past the mprotect guard budget):
  // check its canary at every switch away.
  bool check_canary_ = false;
  const char* name_ = nullptr;
  Stack stack_;  // empty for a thread fiber
  // Per-fiber C++ exception state (libstdc++'s __cxa_eh_globals), swapped in
  // and out on every switch so that catch blocks and uncaught_exceptions()
  // stay per fiber even when fibers interleave or migrate mid-catch.
  void* eh_caught_ = nullptr;
  unsigned int eh_uncaught_ = 0;
#if defined(__SANITIZE_ADDRESS__)
  void* asan_fake_stack_ = nullptr;
  const void* asan_stack_bottom_ = nullptr;
  std::size_t asan_stack_size_ = 0;
#endif
#if defined(__SANITIZE_THREAD__)
  void* tsan_fiber_ = nullptr;
#endif
  Function fn_;
};

template <typename F>
Fiber* Fiber::Create(F&& fn, const Options& options) {
  return Create(std::forward<F>(fn),
                options.compact_stack ? Stack::AllocateCompact()
                                      : Stack::Allocate(options.stack_size),
                options.name);
}

template <typename F>
Fiber* Fiber::Create(F&& fn, Stack stack, const char* name) {
  static_assert(std::is_constructible_v<Function, F&&>,
                "Fiber::Create needs a callable taking no arguments that "
                "Fiber::Function can hold (movable, or copyable)");
  Fiber* f = Place(std::move(stack), name);
  // In place: constructing a Function and then moving it here would read
  // back, 16 bytes at a time, the callable's captures just stored, which
  // stalls store forwarding (~10 ns of create + run + destroy on AMD Zen 4).
  // fn_ is empty: ending its lifetime needs no destructor call.
#if defined(__cpp_exceptions)
  try {
    ::new (static_cast<void*>(&f->fn_)) Function(std::forward<F>(fn));
  } catch (...) {
    ::new (static_cast<void*>(&f->fn_)) Function();
    Destroy(f);
    throw;
  }
#else
  ::new (static_cast<void*>(&f->fn_)) Function(std::forward<F>(fn));
#endif
  if (!f->fn_) EmptyFunction();
  return f;
}

// --- Inline hot path ----------------------------------------------------------

inline void Fiber::SwitchImpl(fiber_internal::ThreadState* ts, Fiber* from,
                              Fiber* to, AfterSwitch after, void* arg,
                              bool exiting, bool to_checked) {
  // Handed to the destination through `from` (addressed by a plain pointer),
  // not through a struct on from's stack: on AMD Zen a load, through another
  // register, of data just stored rsp-relatively defeats memory renaming and
  // costs more than the switch itself. OnResumed reads `arg` only with an
  // `after`.
  from->pending_after_ = after;
  if (!__builtin_constant_p(after == nullptr) || after != nullptr) {
    from->pending_arg_ = arg;
  }
  if (__builtin_expect((exiting && from->is_thread_fiber()) ||
                           (!to_checked && to->state_ != State::kReady &&
                            to->state_ != State::kSuspended),
                       0)) {
    BadSwitch(from, to, exiting);
  }
  if (__builtin_expect(from->check_canary_, 0)) CheckCanary(from);
  // Exception state moves only when there is some (a switch inside a catch
  // block or during unwinding): a suspended fiber's eh_* fields hold its
  // state, a running fiber's are zero, so the common case only loads.
  fiber_internal::EhGlobals* eh = ts->eh;
  if (__builtin_expect((reinterpret_cast<std::uintptr_t>(eh->caught_exceptions) |
                        eh->uncaught_exceptions |
                        reinterpret_cast<std::uintptr_t>(to->eh_caught_) |
                        to->eh_uncaught_) != 0,
                       0)) {
    SwapExceptionState(eh, from, to);
  }
  from->state_ = exiting ? State::kFinished : State::kSuspended;
  to->state_ = State::kRunning;
  ts->current = to;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  SanitizerStartSwitch(from, to, exiting);
#endif
  void* prev = fiber_internal::SwitchContext(&from->sp_, to->sp_, from);
  OnResumed(static_cast<Fiber*>(prev));
}

inline void Fiber::OnResumed(Fiber* from) {
#if defined(__SANITIZE_ADDRESS__)
  SanitizerFinishSwitch(from);
#endif
  // `from` may be resumed elsewhere, or destroyed, once `after` has
  // published it: nothing here touches it afterwards.
  if (AfterSwitch after = from->pending_after_) after(from, from->pending_arg_);
}

inline const fiber_internal::SwitchFrame* Fiber::SuspendedFrame() const {
  if (state_ != State::kSuspended || sp_ == nullptr) return nullptr;
  return static_cast<const fiber_internal::SwitchFrame*>(sp_);
}

// Inline: the scheduler records it on every park and yield.
inline void* Fiber::SavedFramePointer() const {
  const fiber_internal::SwitchFrame* f = SuspendedFrame();
  return f != nullptr ? f->frame_pointer() : nullptr;
}

inline void* Fiber::SavedProgramCounter() const {
  const fiber_internal::SwitchFrame* f = SuspendedFrame();
  return f != nullptr ? f->resume_address() : nullptr;
}

inline void Fiber::SwitchTo(Fiber* to, AfterSwitch after, void* arg) {
  fiber_internal::ThreadState* ts = fiber_internal::CurrentThreadState();
  SwitchImpl(ts, ts->current, to, after, arg, /*exiting=*/false);
}

inline void Fiber::Resume() {
  if (__builtin_expect(
          state_ != State::kReady && state_ != State::kSuspended, 0)) {
    BadResume(this);
  }
  fiber_internal::ThreadState* ts = fiber_internal::CurrentThreadState();
  resumer_ = ts->current;
  SwitchImpl(ts, ts->current, this, nullptr, nullptr, /*exiting=*/false,
             /*to_checked=*/true);
}

inline void Fiber::Suspend() {
  fiber_internal::ThreadState* ts = fiber_internal::CurrentThreadState();
  Fiber* self = ts->current;
  if (__builtin_expect(self->resumer_ == nullptr, 0)) BadSuspend(self);
  SwitchImpl(ts, self, self->resumer_, nullptr, nullptr, /*exiting=*/false);
}

}  // namespace gort

#endif  // GORT_FIBER_FIBER_H_
