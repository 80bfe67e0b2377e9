// WARNING: internal to gort; not part of its API.
//
// Fatal(): report a programming error and abort, as Go's runtime.throw does.

#ifndef GORT_FIBER_INTERNAL_FATAL_H_
#define GORT_FIBER_INTERNAL_FATAL_H_

#include <atomic>

namespace gort {
namespace fiber_internal {

// Prints "fatal: <message>" to stderr and aborts the process. Formatting
// takes a few KiB of stack: on a compact fiber stack (see below) the message
// is formatted on the report stack instead.
[[noreturn]] void Fatal(const char* format, ...)
    __attribute__((format(printf, 1, 2)));

// Set by //fiber once it creates a compact fiber: whether the calling thread
// runs on a stack too small for Fatal's formatting. Null: never.
extern std::atomic<bool (*)()> g_on_small_stack;

// Runs fn(arg) on a 64 KiB stack of its own (one per process, taken by one
// caller at a time; later callers wait), never to return: for reports of
// fatal errors raised where the stack is small or already overrun.
[[noreturn]] void RunOnReportStack(void (*fn)(void*), void* arg);

}  // namespace fiber_internal
}  // namespace gort

#endif  // GORT_FIBER_INTERNAL_FATAL_H_
