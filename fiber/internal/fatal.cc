#include "fiber/internal/fatal.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

namespace gort {
namespace fiber_internal {

void Fatal(const char* format, ...) {
  char buf[1024];
  int n = std::snprintf(buf, sizeof(buf), "fatal: ");
  va_list ap;
  va_start(ap, format);
  int m = std::vsnprintf(buf + n, sizeof(buf) - n - 1, format, ap);
  va_end(ap);
  n += (m < 0) ? 0 : (m > static_cast<int>(sizeof(buf)) - n - 2
                          ? static_cast<int>(sizeof(buf)) - n - 2
                          : m);
  buf[n++] = '\n';
  // One write(2), so concurrent reports do not interleave mid-line.
  ssize_t ignored = ::write(STDERR_FILENO, buf, n);
  (void)ignored;
  std::abort();
}

}  // namespace fiber_internal
}  // namespace gort
