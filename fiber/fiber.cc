#include "fiber/fiber.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <typeinfo>
#include <utility>

#include "fiber/internal/context.h"
#include "fiber/internal/fatal.h"
#include "fiber/internal/sanitizers.h"

// Invariants:
//  - gort_fiber_thread_state.current is the fiber running on this thread. It is written only by
//    the thread itself, just before a switch (SwitchImpl) and when the
//    thread fiber is created, and read only through Fiber::Current().
//  - A fiber's sp_ is meaningful only while it is not kRunning; it is
//    written by gort_fiber_switch on the fiber's own thread and read by the
//    thread that resumes it, after a handoff that the scheduler synchronises
//    (the AfterSwitch hook publishes a fiber only once its sp_ is stored).
//  - A fiber's pending_after_/pending_arg_ are written by the fiber itself
//    just before it switches away and read by OnResumed on the destination
//    before `after` runs; after that the source may be resumed elsewhere.

namespace __cxxabiv1 {
struct __cxa_eh_globals;
extern "C" __cxa_eh_globals* __cxa_get_globals() noexcept;
}  // namespace __cxxabiv1

namespace gort {
namespace {

using fiber_internal::EhGlobals;
using fiber_internal::ThreadState;

// Everything the switch needs from the thread, behind one TLS access: the
// running fiber and the address of libstdc++'s per-thread exception state
// (looked up once: __cxa_get_globals goes through the dynamic TLS model).

// Storage for the calling thread's thread fiber (never destroyed: it holds
// no resources, and thread exit releases the storage).
struct alignas(Fiber) ThreadFiberStorage {
  unsigned char bytes[sizeof(Fiber)];
};
thread_local ThreadFiberStorage t_thread_fiber;

// Fiber ids are handed out in per-thread batches so that spawning from many
// threads does not contend on one cache line.
std::atomic<std::uint64_t> g_next_id_batch{1};
constexpr std::uint64_t kIdBatch = 1024;
thread_local std::uint64_t t_next_id = 0;
thread_local std::uint64_t t_id_limit = 0;

GORT_TLS_ACCESSOR std::uint64_t NextId() {
  if (t_next_id == t_id_limit) {
    t_next_id = g_next_id_batch.fetch_add(kIdBatch, std::memory_order_relaxed);
    t_id_limit = t_next_id + kIdBatch;
  }
  return t_next_id++;
}

ThreadState* InitThreadState();

}  // namespace

#if defined(__x86_64__)
// Defined in switch_x86_64.S, which reads it rip-relative.
extern "C" __attribute__((visibility("hidden"))) unsigned char
    gort_fiber_merge_mxcsr_flags;

namespace {
// AMD's cores (and Hygon's, derived from Zen) reload MXCSR cheaply but stall
// when the switch reads back its own stmxcsr store: they restore exactly.
// Intel's pay a microcode assist for every load that changes only the
// flags: they merge. Unknown vendors merge too (correct everywhere).
bool PrefersExactMxcsr() {
  unsigned int eax, ebx, ecx, edx;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
  char vendor[13];
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  vendor[12] = '\0';
  return std::strcmp(vendor, "AuthenticAMD") == 0 ||
         std::strcmp(vendor, "HygonGenuine") == 0;
}
const bool kMxcsrPathChosen = [] {
  gort_fiber_merge_mxcsr_flags = PrefersExactMxcsr() ? 0 : 1;
  return true;
}();
}  // namespace
#endif

namespace fiber_internal {
GORT_DEFINE_THREAD_LOCAL(ThreadState, gort_fiber_thread_state)

#if defined(__x86_64__)
void SetMxcsrFlagMerging(bool merge) {
  gort_fiber_merge_mxcsr_flags = merge ? 1 : 0;
}
bool MxcsrFlagMerging() { return gort_fiber_merge_mxcsr_flags != 0; }
#else
void SetMxcsrFlagMerging(bool) {}
bool MxcsrFlagMerging() { return false; }
#endif

GORT_TLS_ACCESSOR ThreadState* CurrentThreadStateSlow() {
  ThreadState* ts = &fiber_internal::gort_fiber_thread_state;
  if (__builtin_expect(ts->current == nullptr, 0)) return InitThreadState();
  return ts;
}
}  // namespace fiber_internal

namespace {
using fiber_internal::CurrentThreadState;

}  // namespace

// Grants this file's helpers access to Fiber's private constructor.
struct FiberAccess {
  static Fiber* NewThreadFiber() {
    PrepareThreadForStacks();  // alternate signal stack for overflow reports
    return new (t_thread_fiber.bytes) Fiber(NextId());
  }
};

namespace {
GORT_TLS_ACCESSOR ThreadState* InitThreadState() {
  ThreadState* ts = &fiber_internal::gort_fiber_thread_state;
  ts->eh = reinterpret_cast<EhGlobals*>(__cxxabiv1::__cxa_get_globals());
  ts->current = FiberAccess::NewThreadFiber();
  return ts;
}
}  // namespace

namespace {

// The report of an overrun stack without a guard (compact, or carved past
// the mprotect guard budget) runs on the report stack: the fiber's is full,
// and formatting the message takes a few KiB.
[[noreturn]] void ReportOverrun(void* arg) {
  const Fiber* f = static_cast<const Fiber*>(arg);
  const auto lo = reinterpret_cast<std::uintptr_t>(f->stack().base());
  const auto id = static_cast<unsigned long long>(f->id());
  const char* name = f->name() != nullptr ? f->name() : "unnamed";
  const auto hi = static_cast<unsigned long long>(lo + f->stack().size());
  if (f->stack().is_compact()) {
    fiber_internal::Fatal(
        "fiber stack overflow: fiber %llu (%s) overran its compact stack "
        "[0x%llx, 0x%llx) (%zu bytes): the canary at its bottom is "
        "overwritten, and the stack below it (another fiber's) may be "
        "corrupted; give this fiber a regular stack",
        id, name, static_cast<unsigned long long>(lo), hi, f->stack().size());
  }
  fiber_internal::Fatal(
      "fiber stack overflow: fiber %llu (%s) overran its unguarded stack "
      "[0x%llx, 0x%llx) (%zu bytes): the kernel has no MADV_GUARD_INSTALL "
      "and the mprotect guard budget was exhausted, so the stack had a "
      "canary instead of a guard; the canary at its bottom is overwritten, "
      "and the memory below it (%zu bytes of unused guard space, then "
      "another fiber's stack) may be corrupted; use Linux >= 6.13 or raise "
      "vm.max_map_count",
      id, name, static_cast<unsigned long long>(lo), hi, f->stack().size(),
      kStackGuardSize);
}

// Fatal()'s question: is the calling thread on a compact stack too small to
// format a message (2 KiB; the sanitizers' 16 KiB ones are not)?
// Reads the thread's state without creating it: a thread that never ran a
// fiber (the monitor, a plain thread) is not on one.
bool OnSmallStack() {
  const Fiber* f = fiber_internal::ThreadStateSlot()->current;
  return f != nullptr && f->stack().is_compact() &&
         f->stack().size() < 8 * 1024;
}

}  // namespace

Fiber::Fiber(Stack stack, const char* name)
    : id_(NextId()), name_(name), stack_(std::move(stack)) {
  stack_.SetOwnerId(id_);
  // No guard below the stack (compact, or an old kernel past the mprotect
  // guard budget): a canary, checked at every switch away.
  if (!stack_.guarded()) {
    stack_.ArmCanary();
    check_canary_ = true;
    if (stack_.is_compact() &&
        fiber_internal::g_on_small_stack.load(std::memory_order_relaxed) ==
            nullptr) {  // once: every P creates compact fibers
      fiber_internal::g_on_small_stack.store(&OnSmallStack,
                                             std::memory_order_relaxed);
    }
  }
#if defined(__SANITIZE_ADDRESS__)
  asan_stack_bottom_ = stack_.base();
  asan_stack_size_ = stack_.size();
#endif
#if defined(__SANITIZE_THREAD__)
  tsan_fiber_ = __tsan_create_fiber(0);
#endif
}

Fiber::Fiber(std::uint64_t id) : id_(id), state_(State::kRunning) {
#if defined(__SANITIZE_THREAD__)
  tsan_fiber_ = __tsan_get_current_fiber();
#endif
}

Fiber::~Fiber() = default;

void Fiber::CheckCanary(const Fiber* from) {
  if (__builtin_expect(from->stack_.CanaryIntact(), 1)) return;
  fiber_internal::RunOnReportStack(&ReportOverrun, const_cast<Fiber*>(from));
}

Fiber* Fiber::Place(Stack stack, const char* name) {
  if (!stack) fiber_internal::Fatal("Fiber::Create: empty stack");
  // Control block at the top of the stack, then the first switch frame.
  auto top = reinterpret_cast<std::uintptr_t>(stack.top());
  std::uintptr_t block = (top - sizeof(Fiber)) & ~std::uintptr_t{63};
  std::uintptr_t frame =
      (block - fiber_internal::kSwitchFrameSpan) & ~std::uintptr_t{15};
  Fiber* f = new (reinterpret_cast<void*>(block)) Fiber(std::move(stack), name);
  fiber_internal::InitFrame(
      reinterpret_cast<fiber_internal::SwitchFrame*>(frame), &Fiber::Entry, f);
  f->sp_ = reinterpret_cast<void*>(frame);
  return f;
}

void Fiber::EmptyFunction() {
  fiber_internal::Fatal("Fiber::Create: empty function");
}

void Fiber::Destroy(Fiber* fiber) {
  if (fiber->is_thread_fiber()) {
    fiber_internal::Fatal("Fiber::Destroy: fiber %llu is a thread fiber",
                          static_cast<unsigned long long>(fiber->id_));
  }
  if (fiber->state_ != State::kReady && fiber->state_ != State::kFinished) {
    fiber_internal::Fatal(
        "Fiber::Destroy: fiber %llu is still running or suspended",
        static_cast<unsigned long long>(fiber->id_));
  }
#if defined(__SANITIZE_THREAD__)
  __tsan_destroy_fiber(fiber->tsan_fiber_);
#endif
  Stack stack = std::move(fiber->stack_);
  fiber->~Fiber();
  // `stack` goes back to the pool here (poisoned for ASan while pooled).
}

void Fiber::ExitTo(Fiber* to, AfterSwitch after, void* arg) {
  fiber_internal::ThreadState* ts = fiber_internal::CurrentThreadState();
  SwitchImpl(ts, ts->current, to, after, arg, /*exiting=*/true);
  __builtin_unreachable();
}

void Fiber::SwapExceptionState(fiber_internal::EhGlobals* eh, Fiber* from,
                               Fiber* to) {
  from->eh_caught_ = eh->caught_exceptions;
  from->eh_uncaught_ = eh->uncaught_exceptions;
  eh->caught_exceptions = to->eh_caught_;
  eh->uncaught_exceptions = to->eh_uncaught_;
  to->eh_caught_ = nullptr;  // running: the thread's globals hold it
  to->eh_uncaught_ = 0;
}

void Fiber::BadSwitch(Fiber* from, Fiber* to, bool exiting) {
  if (exiting && from->is_thread_fiber()) {
    fiber_internal::Fatal("Fiber::ExitTo called on a thread fiber");
  }
  fiber_internal::Fatal("fiber switch: target fiber %llu is %s",
                        static_cast<unsigned long long>(to->id_),
                        to->state_ == State::kRunning ? "running"
                                                      : "finished");
}

void Fiber::BadResume(Fiber* f) {
  fiber_internal::Fatal("Fiber::Resume: fiber %llu is %s",
                        static_cast<unsigned long long>(f->id_),
                        f->state_ == State::kRunning ? "running" : "finished");
}

void Fiber::BadSuspend(Fiber* f) {
  fiber_internal::Fatal(
      "Fiber::Suspend: fiber %llu was not entered through Resume()",
      static_cast<unsigned long long>(f->id_));
}

// Not TSan-instrumented: its __tsan_func_exit would run after
// __tsan_switch_to_fiber and pop the *target* fiber's shadow stack (one slot
// below the start of a fresh fiber's).
__attribute__((no_sanitize("thread"))) void Fiber::SanitizerStartSwitch(
    Fiber* from, Fiber* to, bool exiting) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &from->asan_fake_stack_,
                                 to->asan_stack_bottom_, to->asan_stack_size_);
#endif
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(to->tsan_fiber_, 0);
#endif
}

void Fiber::SanitizerFinishSwitch(Fiber* from) {
#if defined(__SANITIZE_ADDRESS__)
  const void* old_bottom = nullptr;
  std::size_t old_size = 0;
  __sanitizer_finish_switch_fiber(Current()->asan_fake_stack_, &old_bottom,
                                  &old_size);
  if (from->is_thread_fiber()) {
    from->asan_stack_bottom_ = old_bottom;
    from->asan_stack_size_ = old_size;
  }
#endif
}

void Fiber::Entry(void* self_arg, void* transfer) {
  auto* self = static_cast<Fiber*>(self_arg);
  OnResumed(static_cast<Fiber*>(transfer));
  {
    Function fn = std::move(self->fn_);
    try {
      std::move(fn)();
    } catch (const std::exception& e) {
      fiber_internal::Fatal("uncaught exception in fiber %llu%s%s%s: %s: %s",
                            static_cast<unsigned long long>(self->id_),
                            self->name_ ? " (" : "",
                            self->name_ ? self->name_ : "",
                            self->name_ ? ")" : "", typeid(e).name(),
                            e.what());
    } catch (...) {
      fiber_internal::Fatal(
          "uncaught exception in fiber %llu%s%s%s (not a std::exception)",
          static_cast<unsigned long long>(self->id_), self->name_ ? " (" : "",
          self->name_ ? self->name_ : "", self->name_ ? ")" : "");
    }
  }  // the function object, and what it captured, is destroyed here
  if (self->exit_handler_ != nullptr) {
    self->exit_handler_(self);
    fiber_internal::Fatal("fiber %llu: exit handler returned",
                          static_cast<unsigned long long>(self->id_));
  }
  if (self->resumer_ == nullptr) {
    fiber_internal::Fatal(
        "fiber %llu finished with nowhere to return: it was never Resume()d "
        "and has no exit handler",
        static_cast<unsigned long long>(self->id_));
  }
  ExitTo(self->resumer_);
}

}  // namespace gort
