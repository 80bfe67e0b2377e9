// The stack-overflow SIGSEGV handler and alternate signal stacks.
//
// Invariants:
// - g_previous is null until InstallOverflowHandler() has saved the previous
//   action, then points to that immutable copy for the life of the process.
// - The handler calls only async-signal-safe functions: write(2), sigaction(2),
//   abort(3), lock-free atomic loads and FindGuardFault().

#include "stack/internal/overflow.h"

#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "stack/internal/slab.h"

namespace gort::stack_internal {
namespace {

struct sigaction g_previous_storage;
// Store-release in InstallOverflowHandler(); load-acquire in the handler.
std::atomic<const struct sigaction*> g_previous{nullptr};

// A fixed buffer that formats numbers by hand (snprintf is not
// async-signal-safe).
class SignalSafeLine {
 public:
  void Append(const char* s) {
    while (*s != '\0' && len_ < sizeof(buf_)) buf_[len_++] = *s++;
  }
  void AppendDecimal(std::uint64_t v) {
    char digits[24];
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (n > 0 && len_ < sizeof(buf_)) buf_[len_++] = digits[--n];
  }
  void AppendHex(std::uint64_t v) {
    Append("0x");
    char digits[20];
    int n = 0;
    do {
      digits[n++] = "0123456789abcdef"[v & 0xf];
      v >>= 4;
    } while (v != 0);
    while (n > 0 && len_ < sizeof(buf_)) buf_[len_++] = digits[--n];
  }
  void WriteToStderr() const {
    std::size_t done = 0;
    while (done < len_) {
      const ssize_t n = write(STDERR_FILENO, buf_ + done, len_ - done);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        return;
      }
    }
  }

 private:
  char buf_[256];
  std::size_t len_ = 0;
};

[[noreturn]] void ReportOverflow(const GuardFault& fault,
                                 std::uintptr_t address) {
  SignalSafeLine line;
  line.Append("fatal: fiber stack overflow: fiber ");
  line.AppendDecimal(fault.owner_id);
  line.Append(", stack [");
  line.AppendHex(fault.stack_lo);
  line.Append(", ");
  line.AppendHex(fault.stack_hi);
  line.Append(") (");
  line.AppendDecimal(fault.stack_hi - fault.stack_lo);
  line.Append(" bytes), fault at ");
  line.AppendHex(address);
  line.Append("\n");
  line.WriteToStderr();
  std::abort();
}

void ChainToPrevious(int sig, siginfo_t* info, void* context) {
  // Load-acquire, pairs with the store-release in InstallOverflowHandler().
  const struct sigaction* previous = g_previous.load(std::memory_order_acquire);
  if (previous != nullptr && (previous->sa_flags & SA_SIGINFO) != 0) {
    if (previous->sa_sigaction != nullptr) {
      previous->sa_sigaction(sig, info, context);
      return;
    }
  } else if (previous != nullptr && previous->sa_handler != SIG_DFL &&
             previous->sa_handler != SIG_IGN) {
    previous->sa_handler(sig);
    return;
  }
  // SIG_DFL (or SIG_IGN, which cannot apply to a synchronous fault): restore
  // the default action and return; the faulting instruction runs again and
  // the kernel applies it.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
}

void OnSegv(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  // si_code > 0: raised by the kernel for a fault, not sent with kill().
  if (info != nullptr && info->si_code > 0) {
    const std::uintptr_t address =
        reinterpret_cast<std::uintptr_t>(info->si_addr);
    GuardFault fault;
    if (FindGuardFault(address, &fault)) ReportOverflow(fault, address);
  }
  errno = saved_errno;
  ChainToPrevious(sig, info, context);
}

std::size_t AltStackSize() {
  std::size_t size = kMinAltStackSize;
#ifdef _SC_SIGSTKSZ
  const long sigstksz = sysconf(_SC_SIGSTKSZ);
  if (sigstksz > 0)
    size = std::max(size, 4 * static_cast<std::size_t>(sigstksz));
#endif
  const std::size_t page = PageSize();
  return (size + page - 1) / page * page;
}

}  // namespace

void InstallOverflowHandler() {
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_sigaction = OnSegv;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  // Save and publish the previous handler before installing ours: a fault
  // on another thread right after the install must find it to chain to
  // (not take it for SIG_DFL and reset SIGSEGV for the whole process). The
  // second call's old action is the same one, barring a racing installer.
  if (sigaction(SIGSEGV, nullptr, &g_previous_storage) != 0) {
    StackFatal("sigaction(SIGSEGV): %s", std::strerror(errno));
  }
  // Store-release, pairs with the load-acquire in ChainToPrevious().
  g_previous.store(&g_previous_storage, std::memory_order_release);
  if (sigaction(SIGSEGV, &action, nullptr) != 0) {
    StackFatal("sigaction(SIGSEGV): %s", std::strerror(errno));
  }
}

void* InstallAltStackIfMissing(std::size_t* size) {
  stack_t current;
  if (sigaltstack(nullptr, &current) == 0 &&
      (current.ss_flags & SS_DISABLE) == 0) {
    return nullptr;  // keep the thread's own (ASan installs one, for example)
  }
  const std::size_t bytes = AltStackSize();
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    StackFatal("out of memory: cannot map a %zu-byte alternate signal stack",
               bytes);
  }
  stack_t ss;
  std::memset(&ss, 0, sizeof(ss));
  ss.ss_sp = p;
  ss.ss_size = bytes;
  ss.ss_flags = 0;
  if (sigaltstack(&ss, nullptr) != 0) {
    StackFatal("sigaltstack: %s", std::strerror(errno));
  }
  *size = bytes;
  return p;
}

void ReleaseAltStack(void* stack, std::size_t size) {
  stack_t current;
  if (sigaltstack(nullptr, &current) == 0 && current.ss_sp == stack &&
      (current.ss_flags & SS_DISABLE) == 0) {
    stack_t disable;
    std::memset(&disable, 0, sizeof(disable));
    disable.ss_flags = SS_DISABLE;
    if (sigaltstack(&disable, nullptr) != 0) return;  // in use: leak it
  }
  munmap(stack, size);
}

}  // namespace gort::stack_internal
