// WARNING: internal to //stack. Do not include it outside //stack; it may
// change without notice.
//
// The stack pool: size classes, per-thread caches, the shared pool of each
// class, trimming, and statistics. stack.cc holds the allocation fast paths
// (pop from / push to the calling thread's cache); everything else is here.
//
// Threading:
// - A ThreadState (and each of its ClassCaches) is owned by its thread: only
//   that thread reads or writes `limit`, `phase` and `tops`; other threads
//   (statistics) only load `count`, relaxed, under the registry lock.
// - The shared pool of a class may be used by any thread; it takes the
//   class's SpinLock (held for a few dozen word copies; across a syscall only
//   for the rare slab mmap; never across trimming's madvise calls).

#ifndef GORT_STACK_INTERNAL_POOL_H_
#define GORT_STACK_INTERNAL_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "stack/internal/size_class.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace gort::stack_internal {

// Per-thread cache geometry. A full cache moves its kThreadCacheBatch oldest
// stacks to the shared pool; an empty one takes up to kThreadCacheBatch.
inline constexpr std::uint32_t kThreadCacheCapacity = 32;
inline constexpr std::uint32_t kThreadCacheBatch = 16;
// How much of a stack's top the pool makes resident before handing out a
// fresh or trimmed stack: the page that holds a fiber's control block and
// first frames (see PrefaultTops in slab.h).
inline constexpr std::size_t kPrefaultBytes = 4096;
// Classes 0..kCachedClasses-1 (the default size and the first sizes used)
// have a thread cache; later classes go straight to their shared pool.
inline constexpr std::uint32_t kCachedClasses = 8;

// Default high-water mark: stacks each class's shared pool keeps resident.
// The shared pool's hard high-water mark per class: past it, freed stacks are
// trimmed at once. Below it, stacks idle for a whole period are trimmed by
// TrimIdleStacks() (the scheduler's monitor calls it every second) down to
// kDefaultIdleKeep.
inline constexpr std::size_t kDefaultPoolLimit = 65536;
inline constexpr std::size_t kDefaultIdleKeep = 1024;

// The shared pool trims when it holds more than limit + TrimSlack(limit)
// resident stacks, releasing the oldest down to `limit`; the slack makes
// trims rare and each one large (and coalescable). While trimming is
// deferred (SetStackTrimmingDeferred), the trimmer does it; past
// limit + 2 * TrimSlack(limit) (the trimmer is behind), the thread that
// frees trims too, but only kBackstopTrimStacks more than the excess over
// that bound: the trimmer does the rest.
constexpr std::size_t TrimSlack(std::size_t limit) {
  return limit / 2 > kThreadCacheBatch ? limit / 2 : kThreadCacheBatch;
}
inline constexpr std::size_t kBackstopTrimStacks = 1024;

struct ClassCache {
  // Written only by the owner thread (relaxed); read by statistics.
  std::atomic<std::uint32_t> count{0};
  std::uintptr_t tops[kThreadCacheCapacity] = {};  // [0, count): oldest first
};

// Who owns a thread's cache in each phase: always the thread itself.
enum class ThreadPhase : std::uint8_t {
  kNew,     // limit == 0; not registered; nothing cached
  kActive,  // registered (pthread key + registry); limit == capacity
  kExited,  // the key destructor flushed the caches; limit == 0 forever
};

struct ThreadState {
  // Free() caches a stack only while count < limit, so an unregistered or
  // exited thread takes the slow path.
  std::uint32_t limit = 0;
  ThreadPhase phase = ThreadPhase::kNew;
  bool altstack_ready = false;
  void* own_altstack = nullptr;  // ours to unmap at thread exit, or null
  std::size_t own_altstack_size = 0;
  ThreadState* prev = nullptr;  // registry links, guarded by its lock
  ThreadState* next = nullptr;
  ClassCache caches[kCachedClasses];
};

extern constinit thread_local ThreadState tls_thread_state;

// The class of stacks of `size` bytes (rounded up to the page), creating it
// if needed; initializes the pool on first use. Fatal for sizes above
// kMaxStackSize (stack.h) or when kMaxSizeClasses classes exist.
std::uint32_t ClassForSize(std::size_t size);

// Makes the top pages of n stacks of class `cls` resident (PrefaultTops),
// page-rounded for the compact class.
void PrefaultSlots(std::uint32_t cls, const std::uintptr_t* tops,
                   std::size_t n);

// Slow paths of Stack::Allocate / Stack::Free. AllocateSlow returns the top of
// an unpoisoned stack; FreeSlow takes a stack already poisoned and with its
// owner id cleared. `ts` is the calling thread's state.
std::uintptr_t AllocateSlow(ThreadState& ts, std::uint32_t cls);
void FreeSlow(ThreadState& ts, std::uintptr_t top, std::uint32_t cls);

// Registers the calling thread and gives it an alternate signal stack.
void PrepareThread(ThreadState& ts);

// Moves the calling thread's cached stacks to the shared pools and releases
// the pages of every stack in every shared pool.
void ReleaseAll(ThreadState& ts);
bool TrimIdle(std::size_t keep, std::size_t max_stacks);
void SetTrimDeferred(bool defer);
bool TrimPending();
bool TrimExcess(std::size_t max_stacks);

void SetPoolLimit(std::size_t stacks);
std::size_t GetPoolLimit();

struct PoolStats {
  std::size_t live = 0;
  std::size_t pooled = 0;
  std::size_t pooled_resident = 0;
  std::size_t thread_cached = 0;
  std::size_t carved = 0;
  std::size_t reserved_bytes = 0;
  std::size_t resident_bytes = 0;
  std::size_t slabs = 0;
  std::size_t size_classes = 0;
  std::size_t unguarded = 0;
  std::size_t mprotect_guarded = 0;
  std::size_t guard_budget = 0;
  std::size_t guard_bytes = 0;
  std::size_t trim_calls = 0;
  std::size_t trimmed_stacks = 0;
  std::size_t deferred_trimmed_stacks = 0;
  std::size_t pool_limit = 0;
  bool lightweight_guards = false;
};
PoolStats GetPoolStats(bool measure_resident);

// ASan: a stack's usable region is poisoned while it sits in any pool.
inline void PoisonStack(std::uintptr_t top, std::uint32_t cls) {
#if defined(__SANITIZE_ADDRESS__)
  const std::size_t usable = g_class_info[cls].usable;
  ASAN_POISON_MEMORY_REGION(reinterpret_cast<void*>(top - usable), usable);
#else
  (void)top;
  (void)cls;
#endif
}

inline void UnpoisonStack(std::uintptr_t top, std::uint32_t cls) {
#if defined(__SANITIZE_ADDRESS__)
  const std::size_t usable = g_class_info[cls].usable;
  ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(top - usable), usable);
#else
  (void)top;
  (void)cls;
#endif
}

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_POOL_H_
