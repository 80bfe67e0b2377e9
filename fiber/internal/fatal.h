// WARNING: internal to gort; not part of its API.
//
// Fatal(): report a programming error and abort, as Go's runtime.throw does.

#ifndef GORT_FIBER_INTERNAL_FATAL_H_
#define GORT_FIBER_INTERNAL_FATAL_H_

namespace gort {
namespace fiber_internal {

// Prints "fatal: <message>" to stderr and aborts the process.
[[noreturn]] void Fatal(const char* format, ...)
    __attribute__((format(printf, 1, 2)));

}  // namespace fiber_internal
}  // namespace gort

#endif  // GORT_FIBER_INTERNAL_FATAL_H_
