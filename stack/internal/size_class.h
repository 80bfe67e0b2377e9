// WARNING: internal to //stack. Do not include it outside //stack; it may
// change without notice.
//
// The geometry of each stack size class, read on the hot path by the inline
// accessors of gort::Stack (stack.h) and by the overflow signal handler.
//
// Threading: entry i of g_class_info is written once, by the thread that
// creates class i while holding the class-registry lock, before the release
// store that publishes the new class count (pool.cc). It is never written
// again. A thread may read entry i once it holds a Stack of class i (the
// allocation that produced the Stack happens after the publication) or after
// an acquire load of the class count (ClassForSize()). The signal handler
// reads it only for slabs published after the class (slab.cc).

#ifndef GORT_STACK_INTERNAL_SIZE_CLASS_H_
#define GORT_STACK_INTERNAL_SIZE_CLASS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace gort::stack_internal {

// Every slab is one mmap reservation of exactly kSlabBytes, aligned to
// kSlabBytes, so the slab holding an address is `address & ~(kSlabBytes-1)`.
inline constexpr std::size_t kSlabBytes = std::size_t{1} << 30;

// At most this many distinct stack sizes. The class index is stored in the
// low bits of a Stack's top pointer (a multiple of the page, or of
// kCompactSize for compact stacks), so it must stay below both.
inline constexpr std::uint32_t kMaxSizeClasses = 64;
inline constexpr std::uintptr_t kClassMask = kMaxSizeClasses - 1;
static_assert((kMaxSizeClasses & (kMaxSizeClasses - 1)) == 0);

// Class 0 is always the default size, class 1 the compact class; stack.h's
// kDefaultStackSize, kMaxStackSize and kStackGuardSize restate these values
// for users.
inline constexpr std::uint32_t kDefaultClass = 0;
inline constexpr std::uint32_t kCompactClass = 1;
inline constexpr std::size_t kDefaultSize = 256 * 1024;
inline constexpr std::size_t kMaxSize = 256 * 1024 * 1024;
inline constexpr std::size_t kMinGuardSize = 64 * 1024;

// The compact class's usable bytes (stack.h: kCompactStackSize). Sanitizer
// builds instrument every frame (redzones, shadow calls) and need several
// times the stack, so there it is 16 KiB: still packed, still unguarded.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr std::size_t kCompactSize = 16 * 1024;
#else
inline constexpr std::size_t kCompactSize = 2 * 1024;
#endif
static_assert(kMaxSizeClasses <= kCompactSize);
// The canary at the bottom of a stack without a guard (a compact one, or one
// carved past the mprotect guard budget), and the value of its words.
inline constexpr std::size_t kCanaryBytes = 64;
inline constexpr std::uint64_t kCanaryWord = 0x9e3779b97f4a7c15;

// Layout of one slab of class c (all offsets page aligned):
//
//   base                                        base + kSlabBytes
//   | header | guard | stack 0 | guard | stack 1 | ... | unused |
//   |<------>|<---------------->|<---------------->|
//    header       stride             stride
//
// header: the owner-id array, one std::atomic<uint64_t> per slot, then (for
// every class but the compact one) the guard-state array, one byte per slot.
// Slot i spans [base + header + i*stride, base + header + (i+1)*stride);
// its guard is the lowest `guard` bytes, its usable stack the rest, and its
// top (one past the highest usable byte) is the slot's end.
struct ClassInfo {
  std::size_t usable;        // usable bytes per stack: a multiple of the page,
                             // or a power-of-two fraction of it (compact)
  std::size_t guard;         // guard bytes below each stack (0: compact)
  std::size_t stride;        // guard + usable
  std::size_t header;        // bytes of owner ids (and guard states) at the
                             // slab start
  std::size_t guard_states;  // offset of the guard-state bytes in the slab
                             // (0: none, the compact class)
  std::size_t slots;         // stacks per slab
  unsigned stride_shift;     // stride == stride_odd << stride_shift
  std::uint64_t stride_odd_inverse;  // stride_odd * inverse == 1 (mod 2^64)
};

extern ClassInfo g_class_info[kMaxSizeClasses];

// True once any slot of a guarded class was carved without a guard (the
// mprotect fallback past its budget); never cleared. Set by the carving
// thread before the slot is handed out, so whoever holds an unguarded stack
// sees it, relaxed (the hand-off of the stack orders it).
extern std::atomic<bool> g_unguarded_slots;

// The slab holding the slot whose top is `top`, and the slot's index in it.
// The index is an exact division of (top - first slot start) by the stride;
// dividing an exact multiple by an odd number is a multiplication by its
// inverse mod 2^64, so this costs a shift and a multiply instead of a 20-40
// cycle divide.
inline std::uintptr_t SlabOf(std::uintptr_t top) {
  return (top - 1) & ~(std::uintptr_t{kSlabBytes} - 1);
}
inline std::uint64_t SlotIndex(std::uintptr_t slab, std::uintptr_t top,
                               const ClassInfo& ci) {
  const std::uint64_t multiple =
      (top - slab - ci.header) >> ci.stride_shift;  // (index + 1) * odd
  return multiple * ci.stride_odd_inverse - 1;
}

// The owner-id cell of the slot whose top is `top`.
inline std::atomic<std::uint64_t>* OwnerCell(std::uintptr_t top,
                                             std::uint32_t cls) {
  const ClassInfo& ci = g_class_info[cls];
  const std::uintptr_t slab = SlabOf(top);
  return reinterpret_cast<std::atomic<std::uint64_t>*>(slab) +
         SlotIndex(slab, top, ci);
}

// The guard-state byte of the slot whose top is `top`, in a class with a
// guard (not the compact class): nonzero if the slot was carved without a
// guard. Written once, when the slot is carved, before it is handed out;
// pooling, trimming (which never reaches the header) and reuse keep it.
inline std::atomic<std::uint8_t>* GuardStateCell(std::uintptr_t top,
                                                 std::uint32_t cls) {
  const ClassInfo& ci = g_class_info[cls];
  const std::uintptr_t slab = SlabOf(top);
  return reinterpret_cast<std::atomic<std::uint8_t>*>(slab + ci.guard_states) +
         SlotIndex(slab, top, ci);
}

// Whether the stack of class `cls` whose top is `top` has a guard below it.
// One relaxed load of g_unguarded_slots unless some slot has none.
inline bool SlotGuarded(std::uintptr_t top, std::uint32_t cls) {
  if (cls == kCompactClass) return false;
  if (__builtin_expect(!g_unguarded_slots.load(std::memory_order_relaxed), 1)) {
    return true;
  }
  return GuardStateCell(top, cls)->load(std::memory_order_relaxed) == 0;
}

// The canary of the unguarded stack (compact, or carved past the mprotect
// guard budget) whose lowest usable byte is `base`: its
// words hold kCanaryWord mixed with their own address, so that a copy of a
// canary moved elsewhere on the stack does not pass for an intact one.
// Not instrumented by ASan: frames that overran the stack may have left
// their redzones' poison there, and the overrun is ours to report.
__attribute__((no_sanitize("address"))) inline void ArmCanary(void* base) {
  auto* w = static_cast<std::uint64_t*>(base);
  const auto b = reinterpret_cast<std::uint64_t>(base);
  for (std::size_t i = 0; i < kCanaryBytes / 8; ++i) {
    w[i] = kCanaryWord ^ (b + 8 * i);
  }
}

__attribute__((no_sanitize("address"))) inline bool CanaryIntact(
    const void* base) {
  const auto* w = static_cast<const std::uint64_t*>(base);
  const auto b = reinterpret_cast<std::uint64_t>(base);
  std::uint64_t diff = 0;
  for (std::size_t i = 0; i < kCanaryBytes / 8; ++i) {
    diff |= w[i] ^ (kCanaryWord ^ (b + 8 * i));
  }
  return diff == 0;
}

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_SIZE_CLASS_H_
