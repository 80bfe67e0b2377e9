// WARNING: internal to //stack. Test-only helpers for //stack's tests and
// benchmarks.

#ifndef GORT_STACK_INTERNAL_TEST_UTIL_H_
#define GORT_STACK_INTERNAL_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "stack/stack.h"

namespace gort::stack_internal {

// Pages of [addr, addr + len) that are resident (mincore). Page-aligned addr.
std::size_t ResidentPages(const void* addr, std::size_t len);

// Lines in /proc/self/maps: the process's mapping (VMA) count.
std::size_t MappingCount();

// The process's resident set size in bytes (/proc/self/statm).
std::size_t ProcessRssBytes();

// vm.max_map_count (65530 if unreadable).
std::size_t MaxMapCount();

// Whether this kernel supports madvise(MADV_GUARD_INSTALL).
bool KernelHasGuardMarkers();

// Runs fn(arg) on `stack` (with ucontext) and returns when fn returns.
void RunOnStack(const Stack& stack, void (*fn)(void*), void* arg);

// Recurses without end, with frames that live on the real stack (not ASan's
// fake stack), until it hits a guard.
void RecurseForever(void* unused);

// The exact overflow line the handler prints for `stack`, as a POSIX
// extended regex (the fault address is left as a pattern).
std::string OverflowMessageRegex(const Stack& stack, std::uint64_t owner_id);

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_TEST_UTIL_H_
