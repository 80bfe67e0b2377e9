// WARNING: internal to //stack. For //stack's own tests only.
//
// Hooks that let a test reach code paths the machine would not otherwise take.

#ifndef GORT_STACK_INTERNAL_TEST_HOOKS_H_
#define GORT_STACK_INTERNAL_TEST_HOOKS_H_

namespace gort::stack_internal {

// Makes the pool use mprotect(PROT_NONE) guards (the fallback for kernels
// without MADV_GUARD_INSTALL) as if the kernel lacked lightweight guards.
// Must be called before the first Stack::Allocate() or
// PrepareThreadForStacks() in the process (e.g. from a static initializer of
// the test binary); fatal otherwise.
void ForceFallbackGuardsForTesting();

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_TEST_HOOKS_H_
