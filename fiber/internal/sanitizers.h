// WARNING: internal to gort; not part of its API.
//
// The sanitizer hooks gort's fiber switch calls. GCC defines
// __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__ (Clang does too, since 14 for
// TSan via -fsanitize=thread).

#ifndef GORT_FIBER_INTERNAL_SANITIZERS_H_
#define GORT_FIBER_INTERNAL_SANITIZERS_H_

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__SANITIZE_THREAD__)
// GCC 12's <sanitizer/tsan_interface.h> lacks the fiber API; libtsan has it.
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
}
#endif

#endif  // GORT_FIBER_INTERNAL_SANITIZERS_H_
