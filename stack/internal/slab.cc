// Slab reservation, guard installation and the lock-free fault lookup.
//
// Invariants:
// - g_slabs[i] for i < g_slab_count is immutable: it is filled under
//   g_slab_mu before the release store that makes g_slab_count exceed i, and
//   the slab it names stays mapped for the life of the process.
// - Every slab is exactly kSlabBytes long and kSlabBytes aligned.
// - A slot's guard is installed once, when the slot is first carved, before
//   the slot is handed out; it is never removed (MADV_DONTNEED keeps guard
//   markers, and trimming never changes protections).
// - In kMprotect mode g_mprotect_guarded <= g_guard_budget.
// - g_guard_mode and g_guard_budget are written once, by InitGuards(), before
//   the first slab exists, and read only after it.

#include "stack/internal/slab.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "stack/internal/size_class.h"
#include "stack/internal/test_hooks.h"

namespace gort::stack_internal {
namespace {

struct SlabDescriptor {
  std::uintptr_t base;
  std::uint32_t cls;
};

std::mutex g_slab_mu;
SlabDescriptor g_slabs[kMaxSlabs];  // guarded by g_slab_mu until published
// Store-release in ReserveSlab(); load-acquire in FindGuardFault() and the
// statistics, so a reader sees every descriptor below the count it loaded.
std::atomic<std::size_t> g_slab_count{0};

std::atomic<bool> g_force_mprotect{false};

// Whether process_madvise takes each advice for our own process (Linux
// >= 6.13 takes any; older kernels refuse all of ours with EINVAL). Cleared
// at the first refusal, per advice, so that one refused advice does not
// stop the others being batched.
std::atomic<bool> g_batch_guard_ok{true};
std::atomic<bool> g_batch_populate_ok{true};
std::atomic<bool> g_batch_discard_ok{true};
// Whether the kernel knows MADV_POPULATE_WRITE (Linux >= 5.14).
std::atomic<bool> g_populate_ok{true};

std::atomic<std::size_t> g_forced_budget{0};  // 0: from vm.max_map_count
std::atomic<bool> g_guards_initialized{false};
GuardMode g_guard_mode = GuardMode::kLightweight;
std::size_t g_guard_budget = 0;
std::size_t g_page_size = 4096;
std::size_t g_guard_bytes = 64 * 1024;

std::atomic<std::size_t> g_mprotect_guarded{0};
std::atomic<std::size_t> g_unguarded{0};
std::atomic<bool> g_warned{false};

// Roughly two mappings per mprotect-guarded slot; keep them within half of
// vm.max_map_count so the rest of the process keeps room for its own.
std::size_t ComputeGuardBudget() {
  std::size_t max_map_count = 65530;
  const int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[32] = {};
    const ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n > 0) {
      const unsigned long long v = std::strtoull(buf, nullptr, 10);
      if (v > 0) max_map_count = static_cast<std::size_t>(v);
    }
  }
  return max_map_count / 4;
}

bool ProbeLightweightGuards() {
  const std::size_t page = g_page_size;
  void* p = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  const bool ok = madvise(p, page, MADV_GUARD_INSTALL) == 0;
  munmap(p, 2 * page);
  return ok;
}

void WarnUnguardedOnce() {
  if (g_warned.exchange(true, std::memory_order_relaxed)) return;
  std::fprintf(stderr,
               "gort: warning: stack guard budget exhausted (%zu mprotect "
               "guards, half of vm.max_map_count); further fiber stacks have "
               "NO guard page, only a canary checked at every fiber switch, "
               "which finds an overflow after it has written below the stack "
               "(use Linux >= 6.13 for MADV_GUARD_INSTALL, or raise "
               "vm.max_map_count)\n",
               g_guard_budget);
}

}  // namespace

void StackFatal(const char* format, ...) {
  char buf[512];
  int n = std::snprintf(buf, sizeof(buf), "fatal: ");
  va_list args;
  va_start(args, format);
  const int m = std::vsnprintf(buf + n, sizeof(buf) - n - 1, format, args);
  va_end(args);
  n = std::min<int>(n + std::max(m, 0), static_cast<int>(sizeof(buf)) - 2);
  buf[n++] = '\n';
  const ssize_t unused = write(STDERR_FILENO, buf, n);
  (void)unused;
  std::abort();
}

void ForceFallbackGuardsForTesting() {
  if (g_guards_initialized.load(std::memory_order_acquire)) {
    StackFatal(
        "ForceFallbackGuardsForTesting() called after the stack pool was "
        "initialized");
  }
  g_force_mprotect.store(true, std::memory_order_release);
  // Such a kernel (< 6.13) also refuses process_madvise for our advice.
  g_batch_guard_ok.store(false, std::memory_order_relaxed);
  g_batch_populate_ok.store(false, std::memory_order_relaxed);
  g_batch_discard_ok.store(false, std::memory_order_relaxed);
}

void SetGuardBudgetForTesting(std::size_t stacks) {
  if (g_guards_initialized.load(std::memory_order_acquire)) {
    StackFatal(
        "SetGuardBudgetForTesting() called after the stack pool was "
        "initialized");
  }
  g_forced_budget.store(stacks, std::memory_order_release);
}

void InitGuards() {
  const long page = sysconf(_SC_PAGESIZE);
  if (page > 0) g_page_size = static_cast<std::size_t>(page);
  g_guard_bytes = std::max<std::size_t>(64 * 1024, g_page_size);
  const std::size_t forced = g_forced_budget.load(std::memory_order_acquire);
  g_guard_budget = forced != 0 ? forced : ComputeGuardBudget();
  if (g_force_mprotect.load(std::memory_order_acquire) ||
      !ProbeLightweightGuards()) {
    g_guard_mode = GuardMode::kMprotect;
  } else {
    g_guard_mode = GuardMode::kLightweight;
  }
  g_guards_initialized.store(true, std::memory_order_release);
}

GuardMode CurrentGuardMode() { return g_guard_mode; }
std::size_t PageSize() { return g_page_size; }
std::size_t GuardBytes() { return g_guard_bytes; }

std::uintptr_t ReserveSlab(std::uint32_t cls) {
  // Over-reserve by one slab and cut the excess so the slab is aligned; the
  // cut costs two munmaps once per slab and no lasting mapping.
  const std::size_t span = 2 * kSlabBytes;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    StackFatal(
        "out of memory: cannot reserve a %zu MiB slab for fiber stacks "
        "(mmap: %s); %zu slabs exist",
        kSlabBytes >> 20, std::strerror(errno),
        g_slab_count.load(std::memory_order_relaxed));
  }
  const std::uintptr_t raw = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t base = (raw + kSlabBytes - 1) & ~(kSlabBytes - 1);
  if (base > raw) munmap(p, base - raw);
  const std::uintptr_t end = base + kSlabBytes;
  if (raw + span > end) {
    munmap(reinterpret_cast<void*>(end), raw + span - end);
  }
  // With transparent huge pages set to "always", the first touch of a stack
  // could commit 2 MiB; stacks want 4 KiB granularity. (Best effort: the
  // flag covers the whole slab, so it splits no mapping.)
  madvise(reinterpret_cast<void*>(base), kSlabBytes, MADV_NOHUGEPAGE);

  std::lock_guard<std::mutex> lock(g_slab_mu);
  const std::size_t n = g_slab_count.load(std::memory_order_relaxed);
  if (n == kMaxSlabs) {
    StackFatal("out of memory: %zu stack slabs (%zu GiB) already reserved",
               kMaxSlabs, kMaxSlabs * (kSlabBytes >> 30));
  }
  g_slabs[n] = SlabDescriptor{base, cls};
  // Store-release, pairs with the load-acquire in FindGuardFault().
  g_slab_count.store(n + 1, std::memory_order_release);
  return base;
}

GuardKind InstallGuard(std::uintptr_t start, std::size_t len) {
  void* addr = reinterpret_cast<void*>(start);
  if (g_guard_mode == GuardMode::kLightweight) {
    // The kernel may ask to retry (EAGAIN/EINTR) while it races with a page
    // fault in the range; nothing else touches a slot being carved.
    for (int attempt = 0; attempt < 100; ++attempt) {
      if (madvise(addr, len, MADV_GUARD_INSTALL) == 0) {
        return GuardKind::kLightweight;
      }
      if (errno != EAGAIN && errno != EINTR) break;
    }
    // Unexpected after a successful probe: fall through to mprotect.
  }
  std::size_t n = g_mprotect_guarded.load(std::memory_order_relaxed);
  while (n < g_guard_budget) {
    if (g_mprotect_guarded.compare_exchange_weak(n, n + 1,
                                                 std::memory_order_relaxed)) {
      if (mprotect(addr, len, PROT_NONE) == 0) return GuardKind::kMprotect;
      // ENOMEM: the process reached vm.max_map_count on its own.
      g_mprotect_guarded.fetch_sub(1, std::memory_order_relaxed);
      break;
    }
  }
  g_unguarded.fetch_add(1, std::memory_order_relaxed);
  WarnUnguardedOnce();
  return GuardKind::kNone;
}

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

// process_madvise(2) on our own process: an fd for ourselves, reopened after
// fork() (a child must never advise its parent's memory).
std::mutex g_self_pidfd_mu;
int g_self_pidfd = -1;
pid_t g_self_pidfd_pid = 0;

int SelfPidfd() {
  const pid_t pid = getpid();
  std::lock_guard<std::mutex> lock(g_self_pidfd_mu);
  if (g_self_pidfd_pid != pid) {
    // After fork the inherited fd names the parent: drop it, do not close
    // (the child may have closed or reused the number).
    g_self_pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    g_self_pidfd_pid = pid;
  }
  return g_self_pidfd;
}

// Applies `advice` to n ranges in batches of up to 512. Returns how many
// leading ranges are known to be done: n, or fewer if the kernel refused
// process_madvise (EINVAL before Linux 6.13, EPERM or ENOSYS under a
// seccomp filter: then *ok is cleared and it is not tried again for this
// advice) or failed otherwise (ENOMEM under memory pressure, say). The
// caller handles the rest one range at a time. A short count (the kernel
// takes at most about 2 GiB of ranges per call) just goes on from there.
// Adds the system calls it made to *calls if that is not null.
std::size_t BatchAdvise(const iovec* iov, std::size_t n, int advice,
                        std::atomic<bool>* ok, std::size_t* calls = nullptr) {
  if (!ok->load(std::memory_order_relaxed)) return 0;
  const int fd = SelfPidfd();
  if (fd < 0) {
    ok->store(false, std::memory_order_relaxed);
    return 0;
  }
  int retries = 0;
  for (std::size_t i = 0; i < n;) {
    const std::size_t k = n - i < 512 ? n - i : 512;
    const long r = syscall(SYS_process_madvise, fd, iov + i, k, advice, 0);
    if (calls != nullptr) ++*calls;
    if (r < 0) {
      if ((errno == EAGAIN || errno == EINTR) && ++retries < 100) continue;
      // A refusal of the first call is the kernel's (or a filter's); a
      // later EINVAL may be one range's (an mlock'ed one, say).
      if (i == 0 && (errno == EINVAL || errno == EPERM || errno == ENOSYS)) {
        ok->store(false, std::memory_order_relaxed);
      }
      return i;
    }
    // Count the ranges the returned byte count covers in full.
    std::size_t bytes = static_cast<std::size_t>(r);
    std::size_t full = 0;
    while (full < k && bytes >= iov[i + full].iov_len) {
      bytes -= iov[i + full].iov_len;
      ++full;
    }
    if (full == 0) return i;  // not even one: leave the rest to madvise
    i += full;
  }
  return n;
}

// The iovec arrays handed to process_madvise. Not on the caller's stack:
// that is a different fiber's stack nearly every time, and under shadow
// paging (this project's VM) the kernel's first read of each such page
// costs a fault of its own, tens of microseconds. One buffer per thread
// stays mapped for the kernel after its first use. Safe as a thread_local:
// nothing between filling it and the system call switches fibers.
constexpr std::size_t kIovBatch = 256;  // iovecs per process_madvise call
iovec* IovBuffer() {
  thread_local iovec buffer[kIovBatch];
  return buffer;
}

}  // namespace

void InstallGuards(const std::uintptr_t* starts, std::size_t n, std::size_t len,
                   GuardKind* kinds) {
  std::size_t done = 0;
  if (g_guard_mode == GuardMode::kLightweight && n > 1) {
    iovec* const iov = IovBuffer();
    while (done < n) {
      const std::size_t k = std::min(n - done, kIovBatch);
      for (std::size_t i = 0; i < k; ++i) {
        iov[i].iov_base = reinterpret_cast<void*>(starts[done + i]);
        iov[i].iov_len = len;
      }
      const std::size_t got =
          BatchAdvise(iov, k, MADV_GUARD_INSTALL, &g_batch_guard_ok);
      for (std::size_t i = 0; i < got; ++i) {
        kinds[done + i] = GuardKind::kLightweight;
      }
      done += got;
      if (got < k) break;  // the rest one by one: every slot gets its guard
    }
  }
  for (std::size_t i = done; i < n; ++i) {
    kinds[i] = InstallGuard(starts[i], len);
  }
}

void PrefaultTops(const std::uintptr_t* tops, std::size_t n,
                  std::size_t bytes) {
  if (n == 0 || !g_populate_ok.load(std::memory_order_relaxed)) return;
  iovec* const iov = IovBuffer();
  for (std::size_t done = 0; done < n;) {
    const std::size_t k = std::min(n - done, kIovBatch);
    for (std::size_t i = 0; i < k; ++i) {
      iov[i].iov_base = reinterpret_cast<void*>(tops[done + i] - bytes);
      iov[i].iov_len = bytes;
    }
    for (std::size_t i =
             BatchAdvise(iov, k, MADV_POPULATE_WRITE, &g_batch_populate_ok);
         i < k; ++i) {
      if (madvise(iov[i].iov_base, bytes, MADV_POPULATE_WRITE) != 0 &&
          errno == EINVAL) {
        g_populate_ok.store(false, std::memory_order_relaxed);  // < 5.14
        return;
      }
    }
    done += k;
  }
}

std::size_t DiscardRanges(const PageRange* ranges, std::size_t n) {
  std::size_t calls = 0;
  iovec* const iov = IovBuffer();
  for (std::size_t done = 0; done < n;) {
    const std::size_t k = std::min(n - done, kIovBatch);
    for (std::size_t i = 0; i < k; ++i) {
      iov[i].iov_base = reinterpret_cast<void*>(ranges[done + i].start);
      iov[i].iov_len = ranges[done + i].len;
    }
    for (std::size_t i =
             BatchAdvise(iov, k, MADV_DONTNEED, &g_batch_discard_ok, &calls);
         i < k; ++i) {
      madvise(iov[i].iov_base, iov[i].iov_len, MADV_DONTNEED);
      ++calls;
    }
    done += k;
  }
  return calls;
}

bool FindGuardFault(std::uintptr_t address, GuardFault* fault) {
  // Load-acquire, pairs with the store-release in ReserveSlab().
  const std::size_t n = g_slab_count.load(std::memory_order_acquire);
  const std::uintptr_t slab = address & ~(kSlabBytes - 1);
  for (std::size_t i = 0; i < n; ++i) {
    if (g_slabs[i].base != slab) continue;
    const ClassInfo& ci = g_class_info[g_slabs[i].cls];
    const std::uintptr_t first = slab + ci.header;
    if (address < first || address >= first + ci.slots * ci.stride) {
      return false;
    }
    const std::size_t index = (address - first) / ci.stride;
    const std::uintptr_t slot = first + index * ci.stride;
    if (address - slot >= ci.guard) return false;  // in the usable part
    fault->stack_lo = slot + ci.guard;
    fault->stack_hi = slot + ci.stride;
    fault->owner_id =
        reinterpret_cast<std::atomic<std::uint64_t>*>(slab)[index].load(
            std::memory_order_relaxed);
    return true;
  }
  return false;
}

SlabCounters GetSlabCounters() {
  SlabCounters c;
  c.slabs = g_slab_count.load(std::memory_order_acquire);
  c.mprotect_guarded = g_mprotect_guarded.load(std::memory_order_relaxed);
  c.unguarded = g_unguarded.load(std::memory_order_relaxed);
  c.guard_budget = g_guard_budget;
  c.lightweight = g_guard_mode == GuardMode::kLightweight;
  return c;
}

void MeasureResidentBytes(std::size_t* bytes) {
  const std::size_t n = g_slab_count.load(std::memory_order_acquire);
  if (n == 0) return;
  const std::size_t page = g_page_size;
  std::vector<unsigned char> vec(kSlabBytes / page);
  for (std::size_t i = 0; i < n; ++i) {
    if (mincore(reinterpret_cast<void*>(g_slabs[i].base), kSlabBytes,
                vec.data()) != 0) {
      continue;
    }
    std::size_t pages = 0;
    for (unsigned char v : vec) pages += v & 1;
    *bytes += pages * page;
  }
}

}  // namespace gort::stack_internal
