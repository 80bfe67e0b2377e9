// Stack's allocation fast paths and the public free functions.
//
// Invariants (see also stack/internal/pool.cc):
// - A cached stack (ThreadState::caches[cls].tops[0, count)) belongs to the
//   calling thread alone, is poisoned under ASan, and has owner id 0.
// - count <= limit <= kThreadCacheCapacity; limit is 0 unless the thread is
//   registered, so Free() on an unregistered thread takes the slow path,
//   which registers it (and thereby arranges the flush at thread exit).
// - The fast paths make no syscalls and take no locks.

#include "stack/stack.h"

#include "absl/base/optimization.h"
#include "stack/internal/pool.h"

namespace gort {

using stack_internal::ClassCache;
using stack_internal::ThreadState;

// Inline (declared so in stack.h, used only here): the allocation fast path
// stays one function, as it was before there were two entry points.
Stack Stack::AllocateInClass(std::uint32_t cls) {
  ThreadState& ts = stack_internal::tls_thread_state;
  if (ABSL_PREDICT_TRUE(cls < stack_internal::kCachedClasses)) {
    ClassCache& cache = ts.caches[cls];
    const std::uint32_t n = cache.count.load(std::memory_order_relaxed);
    if (ABSL_PREDICT_TRUE(n != 0)) {
      const std::uintptr_t top = cache.tops[n - 1];
      cache.count.store(n - 1, std::memory_order_relaxed);
      stack_internal::UnpoisonStack(top, cls);
      return Stack(top | cls);
    }
  }
  return Stack(stack_internal::AllocateSlow(ts, cls) | cls);
}

Stack Stack::Allocate(std::size_t size) {
  return AllocateInClass(ABSL_PREDICT_TRUE(size == kDefaultStackSize)
                             ? stack_internal::kDefaultClass
                             : stack_internal::ClassForSize(size));
}

Stack Stack::AllocateCompact() {
  return AllocateInClass(stack_internal::kCompactClass);
}

void Stack::Free(std::uintptr_t bits) {
  const std::uint32_t cls =
      static_cast<std::uint32_t>(bits & stack_internal::kClassMask);
  const std::uintptr_t top = bits & ~stack_internal::kClassMask;
  stack_internal::OwnerCell(top, cls)->store(0, std::memory_order_relaxed);
  stack_internal::PoisonStack(top, cls);
  ThreadState& ts = stack_internal::tls_thread_state;
  if (ABSL_PREDICT_TRUE(cls < stack_internal::kCachedClasses)) {
    ClassCache& cache = ts.caches[cls];
    const std::uint32_t n = cache.count.load(std::memory_order_relaxed);
    if (ABSL_PREDICT_TRUE(n < ts.limit)) {
      cache.tops[n] = top;
      cache.count.store(n + 1, std::memory_order_relaxed);
      return;
    }
  }
  stack_internal::FreeSlow(ts, top, cls);
}

StackStats GetStackStats(bool measure_resident) {
  const stack_internal::PoolStats p =
      stack_internal::GetPoolStats(measure_resident);
  StackStats s;
  s.live = p.live;
  s.pooled = p.pooled;
  s.pooled_resident = p.pooled_resident;
  s.thread_cached = p.thread_cached;
  s.reserved_bytes = p.reserved_bytes;
  s.resident_bytes_estimate = p.resident_bytes;
  s.slabs = p.slabs;
  s.size_classes = p.size_classes;
  s.unguarded = p.unguarded;
  s.mprotect_guarded = p.mprotect_guarded;
  s.guard_budget = p.guard_budget;
  s.guard_bytes = p.guard_bytes;
  s.trim_calls = p.trim_calls;
  s.trimmed_stacks = p.trimmed_stacks;
  s.deferred_trimmed_stacks = p.deferred_trimmed_stacks;
  s.pool_limit = p.pool_limit;
  s.lightweight_guards = p.lightweight_guards;
  return s;
}

void ReleaseStackCache() {
  stack_internal::ReleaseAll(stack_internal::tls_thread_state);
}

void SetStackPoolLimit(std::size_t stacks) {
  stack_internal::SetPoolLimit(stacks);
}

std::size_t GetStackPoolLimit() { return stack_internal::GetPoolLimit(); }

bool TrimIdleStacks(std::size_t keep, std::size_t max_stacks) {
  return stack_internal::TrimIdle(keep, max_stacks);
}

void SetStackTrimmingDeferred(bool defer) {
  stack_internal::SetTrimDeferred(defer);
}

bool StackTrimmingPending() { return stack_internal::TrimPending(); }

bool TrimExcessStacks(std::size_t max_stacks) {
  return stack_internal::TrimExcess(max_stacks);
}

void PrepareThreadForStacks() {
  ThreadState& ts = stack_internal::tls_thread_state;
  if (ABSL_PREDICT_TRUE(ts.altstack_ready)) return;
  stack_internal::PrepareThread(ts);
}

}  // namespace gort
