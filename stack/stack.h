// gort/stack: fiber stacks — reserved lazily, guarded, pooled and trimmed.
//
// A Stack owns one region of memory to run a fiber on. Physical memory is
// committed only as the fiber touches it (a fiber that uses 3 KiB of a
// 256 KiB stack costs one or two pages of RSS), and an overflow into the guard
// below the stack kills the process with a clear message instead of silently
// corrupting a neighbour:
//
//   fatal: fiber stack overflow: fiber 42, stack [0x7f1c40010000,
//   0x7f1c40050000) (262144 bytes), fault at 0x7f1c4000fff8
//
// Example:
//
//   gort::Stack stack = gort::Stack::Allocate();   // kDefaultStackSize
//   stack.SetOwnerId(fiber_id);                   // for overflow reports
//   SwitchTo(stack.top(), ...);                   // run something on it
//   ...
//   stack.Release();                              // or let it go out of scope
//
// Design (docs/stack.md has the whole story and the measurements):
// - Stacks are slots carved out of 1 GiB slabs: one mmap(MAP_NORESERVE) per
//   slab for thousands of stacks, so a million stacks use a few hundred
//   mappings, far below vm.max_map_count (65530 by default).
// - Each slot has a guard (kStackGuardSize, default 64 KiB) below its stack.
//   On Linux >= 6.13 the guard is madvise(MADV_GUARD_INSTALL): a page-table
//   marker that costs no memory and no mapping. On older kernels it is
//   mprotect(PROT_NONE), which splits the slab's mapping (about two mappings
//   per stack); those are limited to a quarter of vm.max_map_count stacks
//   (half of the mappings), and stacks beyond that are handed out WITHOUT a
//   guard: counted in StackStats::unguarded, with one warning line on stderr,
//   and marked (guarded() is false) so that their user checks a canary at
//   their bottom instead, as for compact stacks (//fiber does, at every
//   switch). That trade-off keeps a million-fiber program running on an old
//   kernel rather than failing at the 16,000th fiber. A frame larger than the
//   guard can still jump over it into the stack below; keep huge arrays off
//   fiber stacks.
// - Freed stacks go to a per-thread cache (32 per size class, no locks, no
//   syscalls), then to a shared pool per size class. Stacks are reused LIFO,
//   so the next fiber gets the stack whose top pages are still in memory. The
//   shared pool keeps up to SetStackPoolLimit() stacks (default 65536) per
//   size class resident; past that it gives the pages of the least recently
//   freed stacks back to the kernel with MADV_DONTNEED, one call per run of
//   adjacent stacks. Below it, TrimIdleStacks() (called every second by the
//   scheduler's monitor) releases stacks that stayed unused for a whole
//   period, down to 1024 per class, so RSS shrinks within ~2 s after a burst
//   while a burst in progress keeps reusing warm stacks (a page faulted back
//   in costs 10-20 us on this project's VM).
//
// Threading: Stack is a move-only value; a Stack object may be used by one
// thread at a time, and may be moved to (and freed on) any other thread.
// Allocate(), Release() and the free functions below may be called from any
// thread concurrently. Releasing a stack happens-before any later Allocate()
// that returns the same memory, on any thread: writes made on the stack by its
// previous user never race with its next user.
//
// Signals: the first Allocate() in the process installs a SIGSEGV handler
// (chained to the previous one for faults outside guards). Every thread that
// runs code on these stacks needs an alternate signal stack for the handler to
// run on; Allocate() and PrepareThreadForStacks() give the calling thread one.
//
// Compact stacks (AllocateCompact): an opt-in class of 2 KiB stacks, two to
// a page, with NO guard: a canary at the bottom, which the user (//fiber, at
// every switch) checks, finds an overrun only after it has written into the
// stack below. Same pool, same threading rules. Stack::guarded() tells the
// stacks that need the canary (compact or carved past the guard budget).
//
// Sanitizers: under ASan a stack's memory is poisoned while it is pooled.

#ifndef GORT_STACK_STACK_H_
#define GORT_STACK_STACK_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "stack/internal/size_class.h"

namespace gort {

// The usable size of a stack when none is given.
inline constexpr std::size_t kDefaultStackSize = 256 * 1024;
// The largest size Stack::Allocate accepts.
inline constexpr std::size_t kMaxStackSize = 256 * 1024 * 1024;
// The guard below every stack (rounded up to the page size).
inline constexpr std::size_t kStackGuardSize = 64 * 1024;

// The usable size of a compact stack (Stack::AllocateCompact): 2 KiB, two
// stacks to a page (16 KiB in ASan and TSan builds).
inline constexpr std::size_t kCompactStackSize = stack_internal::kCompactSize;
// The canary at the bottom of every stack without a guard (part of its usable
// size): compact stacks, and stacks carved past the mprotect guard budget.
inline constexpr std::size_t kStackCanaryBytes = stack_internal::kCanaryBytes;

static_assert(kDefaultStackSize == stack_internal::kDefaultSize);
static_assert(kMaxStackSize == stack_internal::kMaxSize);
static_assert(kStackGuardSize == stack_internal::kMinGuardSize);

struct StackStats {
  std::size_t live = 0;    // stacks handed out and not yet released
  std::size_t pooled = 0;  // stacks in thread caches and shared pools
  // Pooled stacks whose pages have not been given back (they may hold RSS).
  std::size_t pooled_resident = 0;
  std::size_t thread_cached = 0;   // of `pooled`, in thread caches
  std::size_t reserved_bytes = 0;  // address space reserved by slabs
  // Bytes of slab memory in RAM (stacks and their owner-id tables), measured
  // with mincore(2); 0 if GetStackStats(false) skipped the measurement.
  std::size_t resident_bytes_estimate = 0;
  std::size_t slabs = 0;         // slab mappings (one mmap each)
  std::size_t size_classes = 0;  // distinct stack sizes in use
  // Stacks carved without a guard (fallback mode past the mapping budget).
  std::size_t unguarded = 0;
  std::size_t mprotect_guarded = 0;  // stacks guarded by mprotect (fallback)
  std::size_t guard_budget = 0;      // mprotect guards allowed (fallback)
  std::size_t guard_bytes = 0;       // guard size below each stack
  // System calls made to give pages back (madvise, or process_madvise with
  // a batch of ranges: see docs/stack.md) so far.
  std::size_t trim_calls = 0;
  std::size_t trimmed_stacks = 0;  // stacks whose pages were given back
  // Of trimmed_stacks, those TrimExcessStacks() trimmed: past the high-water
  // mark while SetStackTrimmingDeferred(true) was in effect.
  std::size_t deferred_trimmed_stacks = 0;
  std::size_t pool_limit = 0;  // high-water mark per size class
  // True: guards are MADV_GUARD_INSTALL markers (no mappings, no limit).
  // False: the mprotect fallback (older kernels).
  bool lightweight_guards = false;
};

// A move-only owner of one stack. Its destructor returns the stack to the pool.
//
// The object is one word (the top pointer with the size class in its low
// bits), so it may be stored inside the stack it owns: Release() and the
// destructor read it once and never touch it after returning the stack.
// Do not release a stack while running on it.
class Stack {
 public:
  // An empty Stack.
  Stack() = default;

  // A stack of at least `size` usable bytes (rounded up to the page size;
  // 0 means kDefaultStackSize). Fatal, with a message on stderr, if memory
  // or address space is exhausted or size > kMaxStackSize. The usable region
  // reads as zeros the first time a slot is used; a reused stack holds
  // whatever its previous user left (or zeros, if it was trimmed; a
  // trimmed compact stack may hold old data if its page-mate was in use).
  static Stack Allocate(std::size_t size = kDefaultStackSize);

  // A compact stack: kCompactStackSize usable bytes, packed two to a page in
  // their own size class, with NO guard below. Its lowest kStackCanaryBytes
  // are a canary (ArmCanary / CanaryIntact) that its user checks at every
  // opportunity: an overflow is found only after it has written below the
  // stack, i.e. into the top of the neighbouring compact stack, where another
  // fiber keeps its control block. For small code paths that are known to
  // stay well within the size (no exceptions, no printf-family formatting,
  // no recursion); //fiber checks the canary at every switch.
  static Stack AllocateCompact();

  Stack(Stack&& other) noexcept : bits_(std::exchange(other.bits_, 0)) {}
  Stack& operator=(Stack&& other) noexcept {
    if (this != &other) {
      const std::uintptr_t old = bits_;
      bits_ = std::exchange(other.bits_, 0);
      if (old != 0) Free(old);
    }
    return *this;
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  ~Stack() {
    if (bits_ != 0) Free(bits_);
  }

  // Returns the stack to the pool now; *this becomes empty.
  void Release() {
    const std::uintptr_t bits = std::exchange(bits_, 0);
    if (bits != 0) Free(bits);
  }

  // The lowest usable byte (just above the guard). Page aligned; a compact
  // stack's is kCompactStackSize aligned.
  void* base() const {
    return bits_ == 0 ? nullptr
                      : reinterpret_cast<void*>(top_address() - size());
  }
  // One past the highest usable byte. Page aligned (kCompactStackSize
  // aligned for a compact stack): 16-byte aligned in any case.
  void* top() const { return reinterpret_cast<void*>(top_address()); }
  // Usable bytes: the requested size rounded up to the page size, or
  // kCompactStackSize.
  std::size_t size() const {
    return bits_ == 0 ? 0 : stack_internal::g_class_info[cls()].usable;
  }
  explicit operator bool() const { return bits_ != 0; }

  // True for a stack from AllocateCompact(): no guard, a canary instead.
  bool is_compact() const {
    return bits_ != 0 && cls() == stack_internal::kCompactClass;
  }

  // False for a stack with no guard below it: a compact stack, or one carved
  // past the mprotect guard budget on a kernel without MADV_GUARD_INSTALL
  // (StackStats::unguarded; the slot keeps that state for good, across
  // pooling, trimming and reuse). Its user arms a canary at its bottom
  // (ArmCanary) and checks it (CanaryIntact), which finds an overflow only
  // after it has written below the stack. False for an empty Stack. Cheap:
  // one relaxed load of a global flag while every slot has a guard.
  bool guarded() const {
    return bits_ != 0 && stack_internal::SlotGuarded(top_address(), cls());
  }

  // Stacks without a guard (!guarded()): writes the canary at the bottom of
  // the stack, its lowest kStackCanaryBytes.
  void ArmCanary() { stack_internal::ArmCanary(base()); }
  // Stacks without a guard: whether the canary is still intact. A stack is
  // handed out with whatever its previous user left there: arm it first.
  bool CanaryIntact() const { return stack_internal::CanaryIntact(base()); }

  // Records who runs on this stack (the fiber id); the overflow report prints
  // it. Kept in the slab's metadata, not in the stack. Reset to 0 when the
  // stack is released. Requires a non-empty Stack.
  void SetOwnerId(std::uint64_t id) {
    stack_internal::OwnerCell(top_address(), cls())
        ->store(id, std::memory_order_relaxed);
  }
  std::uint64_t owner_id() const {
    return stack_internal::OwnerCell(top_address(), cls())
        ->load(std::memory_order_relaxed);
  }

 private:
  explicit Stack(std::uintptr_t bits) : bits_(bits) {}
  std::uintptr_t top_address() const {
    return bits_ & ~stack_internal::kClassMask;
  }
  std::uint32_t cls() const {
    return static_cast<std::uint32_t>(bits_ & stack_internal::kClassMask);
  }
  // Defined in stack.cc, the only place it is used.
  static inline Stack AllocateInClass(std::uint32_t cls);
  static void Free(std::uintptr_t bits);

  std::uintptr_t bits_ = 0;  // top | size class; 0 when empty
};

// Pool and memory statistics. Exact when no thread is allocating or freeing
// concurrently; a snapshot otherwise. With measure_resident (the default) it
// runs mincore(2) over every slab: about 0.2 ms per GiB reserved (~60 ms with
// a million default stacks); pass false for the counters only.
StackStats GetStackStats(bool measure_resident = true);

// Gives the pages of every stack in the shared pools back to the kernel,
// after moving the calling thread's cached stacks there. Other threads'
// caches (at most 32 stacks per size class each) are left alone.
void ReleaseStackCache();

// Sets the hard high-water mark: each size class's shared pool keeps at most
// `stacks` freed stacks resident (plus a slack of max(stacks/2, 16) before it
// trims); the compact class, whose stacks share pages, keeps as many pages'
// worth (twice as many stacks). Takes effect immediately. Default 65536:
// below it, idle stacks are released by TrimIdleStacks().
void SetStackPoolLimit(std::size_t stacks);
std::size_t GetStackPoolLimit();

// Gives back the pages of pooled stacks that have not been reused since the
// previous sweep began, keeping `keep` per size class (default 1024)
// resident. Meant to be called periodically (the scheduler's monitor does,
// every second), so that a burst of fibers reuses warm stacks while it lasts
// and RSS shrinks within about two periods after it: Go's scavenger, with a
// period. A call that finds no sweep in progress begins one (and with it
// the next period, for every size class at once).
//
// At most `max_stacks` are trimmed per call (0.5-0.8 us each on this
// project's VM, 2026-11-28), so that a caller with other work to do, like
// the monitor, can trim a long-idle burst in slices: it returns true while
// the sweep has work left, and the next call goes on with it (with the
// sweep's `keep`). Compact stacks kept for a page-mate still in use are
// retried once per sweep, outside that count (all of them at once: for
// the compact class that can be as many as the sweep's victims). Any
// thread; calls are serialized by one mutex, which an unbudgeted call (the
// default) holds through its madvise calls and waits for, and a budgeted
// call does not wait for (it returns false at once).
bool TrimIdleStacks(std::size_t keep = 1024, std::size_t max_stacks = SIZE_MAX);

// Trimming past the high-water mark runs, by default, on the thread whose
// Release() takes a shared pool past it, in the middle of whatever that
// thread was doing: for a scheduler's thread, the fibers queued behind the
// one that exited, and its timers, wait (32,768 stacks took 17-19 ms on
// this project's VM, 2026-11-28). A runtime with a thread of its own that
// looks in regularly (//sched's monitor does, every 20 us to 10 ms) can take
// that work: while SetStackTrimmingDeferred(true) is in effect, such a
// Release() only raises StackTrimmingPending(), and the runtime's thread
// calls TrimExcessStacks(). A pool that grows past twice its slack before
// then trims on the spot anyway, so memory stays bounded, but only 1,024
// stacks past that bound at a time (about 0.6 ms at the rate above), and
// leaves the rest to the trimmer. Calls nest: each
// true needs its false, and the last false trims every pool over its limit,
// on the calling thread. A false without a true is a fatal error. A child
// forked while trimming is deferred stays deferred, with no trimmer: its
// pools trim only past twice their slack.
void SetStackTrimmingDeferred(bool defer);

// True if a shared pool went past its high-water mark while trimming was
// deferred and TrimExcessStacks() has not run since. A relaxed load; it may
// be up with nothing to do (a Release() that saw the deferral just before
// the last SetStackTrimmingDeferred(false) can raise it after).
bool StackTrimmingPending();

// Trims every shared pool holding more than its limit down to it, at most
// `max_stacks` stacks in all (the least recently freed first; compact stacks
// kept for a page-mate still in use do not count and stay), and clears
// StackTrimmingPending(). Returns true, and raises StackTrimmingPending()
// again, if a pool is still over its limit: call it again soon. With
// max_stacks 0 it only tells. Any thread.
bool TrimExcessStacks(std::size_t max_stacks = SIZE_MAX);

// Makes the calling thread ready to run code on these stacks: installs the
// overflow handler (once per process) and an alternate signal stack for this
// thread if it has none (kept if it has one, e.g. ASan's; ours is unmapped at
// thread exit). Idempotent and cheap after the first call on a thread. The
// fiber layer calls it before its first switch on each thread.
void PrepareThreadForStacks();

}  // namespace gort

#endif  // GORT_STACK_STACK_H_
