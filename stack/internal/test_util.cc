#include "stack/internal/test_util.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "stack/internal/slab.h"

namespace gort::stack_internal {

std::size_t ResidentPages(const void* addr, std::size_t len) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((len + page - 1) / page);
  if (mincore(const_cast<void*>(addr), len, vec.data()) != 0) {
    std::perror("mincore");
    std::abort();
  }
  std::size_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

std::size_t MappingCount() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::size_t n = 0;
  while (std::getline(maps, line)) ++n;
  return n;
}

std::size_t ProcessRssBytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

std::size_t MaxMapCount() {
  std::ifstream in("/proc/sys/vm/max_map_count");
  std::size_t n = 0;
  if (in >> n && n > 0) return n;
  return 65530;
}

bool KernelHasGuardMarkers() {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  const bool ok = madvise(p, page, MADV_GUARD_INSTALL) == 0;
  munmap(p, 2 * page);
  return ok;
}

namespace {

struct Trampoline {
  void (*fn)(void*);
  void* arg;
};

// makecontext passes int arguments only: split the pointer in two halves.
void Enter(int hi, int lo) {
  const std::uintptr_t bits =
      (static_cast<std::uintptr_t>(static_cast<unsigned>(hi)) << 32) |
      static_cast<unsigned>(lo);
  const Trampoline* t = reinterpret_cast<const Trampoline*>(bits);
  t->fn(t->arg);
}

}  // namespace

void RunOnStack(const Stack& stack, void (*fn)(void*), void* arg) {
  Trampoline t{fn, arg};
  ucontext_t caller;
  ucontext_t callee;
  getcontext(&callee);
  callee.uc_stack.ss_sp = stack.base();
  callee.uc_stack.ss_size = stack.size();
  callee.uc_link = &caller;
  const std::uintptr_t bits = reinterpret_cast<std::uintptr_t>(&t);
  makecontext(&callee, reinterpret_cast<void (*)()>(Enter), 2,
              static_cast<int>(bits >> 32),
              static_cast<int>(bits & 0xffffffffu));
  swapcontext(&caller, &callee);
}

__attribute__((noinline, no_sanitize_address)) static int Recurse(int depth) {
  volatile char frame[256];
  frame[0] = static_cast<char>(depth);
  int r = depth < INT_MAX ? Recurse(depth + 1) : 0;
  return r + frame[0];  // not a tail call
}

void RecurseForever(void*) { (void)Recurse(0); }

std::string OverflowMessageRegex(const Stack& stack, std::uint64_t owner_id) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "fatal: fiber stack overflow: fiber %llu, stack \\[0x%llx, "
                "0x%llx\\) \\(%zu bytes\\), fault at 0x[0-9a-f]+",
                static_cast<unsigned long long>(owner_id),
                static_cast<unsigned long long>(
                    reinterpret_cast<std::uintptr_t>(stack.base())),
                static_cast<unsigned long long>(
                    reinterpret_cast<std::uintptr_t>(stack.top())),
                stack.size());
  return buf;
}

}  // namespace gort::stack_internal
