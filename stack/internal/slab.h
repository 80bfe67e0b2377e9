// WARNING: internal to //stack. Do not include it outside //stack; it may
// change without notice.
//
// Slabs: large address-space reservations that the pool carves into stack
// slots, and the guards below each slot.
//
// Threading: ReserveSlab() and InstallGuard() may be called from any thread.
// FindGuardFault() is async-signal-safe and lock-free: it may run in a signal
// handler on any thread at any time, including while another thread is inside
// ReserveSlab().

#ifndef GORT_STACK_INTERNAL_SLAB_H_
#define GORT_STACK_INTERNAL_SLAB_H_

#include <cstddef>
#include <cstdint>

namespace gort::stack_internal {

// Linux >= 6.13: install/remove guard markers in page tables without
// splitting the VMA. Older libc headers lack the names.
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif

// Enough for 16 TiB of stacks (about 50 million default-size stacks).
inline constexpr std::size_t kMaxSlabs = 16384;

enum class GuardMode : std::uint8_t {
  // madvise(MADV_GUARD_INSTALL): no VMA split, no memory, any number of slots.
  kLightweight,
  // mprotect(PROT_NONE): splits the slab's VMA (about two mappings per slot),
  // so at most GuardBudget() slots get one; the rest are unguarded.
  kMprotect,
};

enum class GuardKind : std::uint8_t { kLightweight, kMprotect, kNone };

// Decides the guard mode (probing the kernel unless the test hook forced
// kMprotect) and reads the mapping budget. Called once, by the pool's
// constructor, before any slab exists.
void InitGuards();
GuardMode CurrentGuardMode();

// The page size and the guard size every class uses (a page multiple).
std::size_t PageSize();
std::size_t GuardBytes();

// Reserves one slab of class `cls` (mmap, aligned to kSlabBytes) and
// publishes its descriptor for FindGuardFault(). Fatal if the kernel refuses.
std::uintptr_t ReserveSlab(std::uint32_t cls);

// Makes [start, start + len) a guard. Called once per slot, when the slot is
// first carved. In kMprotect mode, beyond the budget, returns kNone, counts
// the slot as unguarded and prints one warning line (once per process); the
// caller marks the slot (GuardStateCell in size_class.h) so that its user
// checks a canary instead.
GuardKind InstallGuard(std::uintptr_t start, std::size_t len);

// Installs the guards [starts[i], starts[i] + len) of n freshly carved slots,
// in as few system calls as the kernel allows (process_madvise batches them
// in lightweight mode); otherwise one InstallGuard() each. kinds[i] is what
// slot i got.
void InstallGuards(const std::uintptr_t* starts, std::size_t n, std::size_t len,
                   GuardKind* kinds);

// Makes [tops[i] - bytes, tops[i]) resident for n stacks, with
// MADV_POPULATE_WRITE, batched through process_madvise where supported, so
// the pool hands out stacks whose top page is already resident (one system
// call per batch instead of one trap per stack). On this project's VM it
// barely helps: a populated page still costs ~7 us on first touch (shadow
// page tables), against 11-20 us for a plain fault. A no-op where the
// kernel lacks it.
void PrefaultTops(const std::uintptr_t* tops, std::size_t n, std::size_t bytes);

// A range of whole pages.
struct PageRange {
  std::uintptr_t start;
  std::size_t len;
};

// Gives the pages of n ranges back to the kernel with MADV_DONTNEED (the
// next touch of a page reads zeros; guard markers stay). Batched through
// process_madvise where the kernel allows it (Linux >= 6.13 for the calling
// process), else one madvise per range. Batching matters more than the
// call count suggests: each call that unmaps pages of a process whose other
// threads are running ends in a TLB shoot-down, an interrupt to every CPU
// that runs one of them, which a VM makes dear (2026-11-28, Intel VM: 24 us
// per madvise of one page with a second thread running, against 0.35-0.5
// us per page when 1,024 go in one process_madvise). Returns the number of
// system calls made.
std::size_t DiscardRanges(const PageRange* ranges, std::size_t n);

// What the overflow handler reports.
struct GuardFault {
  std::uintptr_t stack_lo;  // lowest usable byte of the overflowed stack
  std::uintptr_t stack_hi;  // its top
  std::uint64_t owner_id;
};

// True if `address` lies in the guard of a slot (lightweight or mprotect);
// fills *fault. Async-signal-safe, lock-free.
bool FindGuardFault(std::uintptr_t address, GuardFault* fault);

// Counters for statistics; each is a relaxed snapshot.
struct SlabCounters {
  std::size_t slabs;
  std::size_t mprotect_guarded;
  std::size_t unguarded;
  std::size_t guard_budget;  // slots allowed an mprotect guard
  bool lightweight;
};
SlabCounters GetSlabCounters();

// Adds the resident bytes of every slab (measured with mincore) to *bytes.
void MeasureResidentBytes(std::size_t* bytes);

// Writes "fatal: <message>\n" to stderr and aborts. Not for signal handlers.
[[noreturn]] void StackFatal(const char* format, ...)
    __attribute__((format(printf, 1, 2)));

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_SLAB_H_
