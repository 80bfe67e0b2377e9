// WARNING: internal to //sched. For //sched's own tests only.
//
// Hooks that let a test widen a window the scheduler normally passes in
// nanoseconds, so that a test can show what happens inside it.

#ifndef GORT_SCHED_INTERNAL_TEST_HOOKS_H_
#define GORT_SCHED_INTERNAL_TEST_HOOKS_H_

namespace gort::sched_internal {

// Called by a thread that readies a fiber from outside the runtime (no P:
// a plain thread, a timer thread) after it has queued the fiber and before
// it looks for an idle P to wake. Null (the default) calls nothing.
void SetOutsideReadyHookForTesting(void (*hook)());

}  // namespace gort::sched_internal

#endif  // GORT_SCHED_INTERNAL_TEST_HOOKS_H_
