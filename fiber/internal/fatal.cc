#include "fiber/internal/fatal.h"

#include <sched.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

namespace gort {
namespace fiber_internal {

std::atomic<bool (*)()> g_on_small_stack{nullptr};

namespace {

[[noreturn]] void VFatal(const char* format, va_list ap) {
  char buf[1024];
  int n = std::snprintf(buf, sizeof(buf), "fatal: ");
  int m = std::vsnprintf(buf + n, sizeof(buf) - n - 1, format, ap);
  n += (m < 0) ? 0 : (m > static_cast<int>(sizeof(buf)) - n - 2
                          ? static_cast<int>(sizeof(buf)) - n - 2
                          : m);
  buf[n++] = '\n';
  // One write(2), so concurrent reports do not interleave mid-line.
  ssize_t ignored = ::write(STDERR_FILENO, buf, n);
  (void)ignored;
  std::abort();
}

struct Report {
  void (*fn)(void*);
  void* arg;
};
Report g_report;
thread_local bool t_on_report_stack = false;

void RunReport() { g_report.fn(g_report.arg); }

struct DeferredFatal {
  const char* format;
  va_list ap;
};

void FatalOnReportStack(void* arg) {
  auto* d = static_cast<DeferredFatal*>(arg);
  VFatal(d->format, d->ap);
}

}  // namespace

void RunOnReportStack(void (*fn)(void*), void* arg) {
  static std::atomic<bool> busy{false};
  while (busy.exchange(true, std::memory_order_acquire)) sched_yield();
  alignas(16) static char stack[64 * 1024];
  static ucontext_t context;
  g_report = {fn, arg};
  t_on_report_stack = true;
  getcontext(&context);
  context.uc_stack.ss_sp = stack;
  context.uc_stack.ss_size = sizeof(stack);
  context.uc_link = nullptr;
  makecontext(&context, &RunReport, 0);
  setcontext(&context);
  std::abort();  // setcontext returns only on failure
}

void Fatal(const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  bool (*on_small_stack)() = g_on_small_stack.load(std::memory_order_relaxed);
  if (on_small_stack != nullptr && !t_on_report_stack && on_small_stack()) {
    // The va_list refers to this frame, which stays alive: we never return
    // (so neither va_list is ever va_end()ed).
    static thread_local DeferredFatal deferred;
    deferred.format = format;
    va_copy(deferred.ap, ap);
    RunOnReportStack(&FatalOnReportStack, &deferred);
  }
  VFatal(format, ap);
}

}  // namespace fiber_internal
}  // namespace gort
