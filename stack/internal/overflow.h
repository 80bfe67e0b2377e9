// WARNING: internal to //stack. Do not include it outside //stack; it may
// change without notice.
//
// The SIGSEGV handler that turns a guard hit into a clear fatal report, and
// the per-thread alternate signal stack it runs on.
//
// Threading: InstallOverflowHandler() is called once per process by the pool's
// constructor. The alternate-stack functions act on the calling thread only.

#ifndef GORT_STACK_INTERNAL_OVERFLOW_H_
#define GORT_STACK_INTERNAL_OVERFLOW_H_

#include <cstddef>

namespace gort::stack_internal {

// Installs the process-wide SIGSEGV handler (SA_SIGINFO | SA_ONSTACK). Faults
// in a stack guard print
//   fatal: fiber stack overflow: fiber <id>, stack [0x<lo>, 0x<hi>)
//   (<n> bytes), fault at 0x<addr>
// and abort(); other faults go to the handler that was installed before (if
// that was SIG_DFL or SIG_IGN, the default action is restored and the faulting
// instruction re-executes, so the process dies as it would have without us).
void InstallOverflowHandler();

// The minimum size of an alternate signal stack we allocate.
inline constexpr std::size_t kMinAltStackSize = 64 * 1024;

// If the calling thread has no alternate signal stack, maps one and installs
// it, returning it (and its mapping size in *size); returns nullptr when the
// thread already has one (for example ASan's), which is then kept.
void* InstallAltStackIfMissing(std::size_t* size);

// Uninstalls `stack` if it is still the calling thread's alternate signal
// stack, then unmaps it. Called at thread exit.
void ReleaseAltStack(void* stack, std::size_t size);

}  // namespace gort::stack_internal

#endif  // GORT_STACK_INTERNAL_OVERFLOW_H_
