// WARNING: internal to //stack. For //stack's own tests only.
//
// Hooks that let a test reach code paths the machine would not otherwise take.

#ifndef GORT_STACK_INTERNAL_TEST_HOOKS_H_
#define GORT_STACK_INTERNAL_TEST_HOOKS_H_

#include <cstddef>

namespace gort::stack_internal {

// Makes the pool use mprotect(PROT_NONE) guards (the fallback for kernels
// without MADV_GUARD_INSTALL) as if the kernel lacked lightweight guards,
// and advise one range per madvise call, as such a kernel (< 6.13) refuses
// process_madvise on our own memory for every advice the pool uses.
// Must be called before the first Stack::Allocate() or
// PrepareThreadForStacks() in the process (e.g. from a static initializer of
// the test binary); fatal otherwise.
void ForceFallbackGuardsForTesting();

// Sets the number of mprotect guards the fallback may install (normally
// vm.max_map_count / 4), so that a test reaches the slots carved past the
// budget, without a guard, after a few allocations. 0 restores the default.
// Same rule: before the first Stack::Allocate() or PrepareThreadForStacks()
// in the process; fatal otherwise.
void SetGuardBudgetForTesting(std::size_t stacks);

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_TEST_HOOKS_H_
