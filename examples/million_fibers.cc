// The classic "a million goroutines" program, in gort: start N fibers that
// each sleep M ms and then signal a WaitGroup; wait for all of them; report
// the wall time and the memory they cost. Then the same work with OS threads
// (fewer of them) for contrast.
//
//   bazel run --config=opt //examples:million_fibers -- --fibers=1000000
//   tools/demo.sh --fibers=100000 --sleep_ms=1000 --threads=2000
//
// Flags: --fibers=N (default 1000000), --sleep_ms=M (default 100),
//        --threads=N (default 10000; 0 skips the threads part),
//        --compact=1 (run the fibers on compact 2 KiB stacks: gort::GoOptions).
//
// Memory is the peak resident set size (VmHWM) over the baseline measured
// just before spawning, divided by the number of tasks. Fibers that finish
// give their stacks back for reuse, so when spawning all N takes longer than
// M ms, fewer than N are alive at once; "alive at peak" says how many
// were; "each" is the peak delta divided by that. Use a longer --sleep_ms to
// have all N alive at the same time. RSS counts user-space memory only: a
// thread also has a kernel stack (16 KiB on x86-64) and kernel structures
// that RSS does not show; a parked fiber has none.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "sched/sched.h"
#include "stack/stack.h"
#include "sync/wait_group.h"

namespace {

struct Flags {
  std::int64_t fibers = 1'000'000;
  std::int64_t sleep_ms = 100;
  std::int64_t threads = 10'000;
  std::int64_t compact = 0;
};

void Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--fibers=N] [--sleep_ms=M] [--threads=N] "
               "[--compact=1]\n"
               "  --fibers=N    fibers to start (default 1000000)\n"
               "  --sleep_ms=M  each task sleeps M ms (default 100)\n"
               "  --threads=N   std::threads for the contrast (default "
               "10000; 0 skips it)\n"
               "  --compact=1   fibers on compact stacks (2 KiB, no guard "
               "page)\n",
               argv0);
}

bool ParseFlag(const char* arg, const char* name, std::int64_t* out) {
  const std::size_t len = std::strlen(name);
  if (std::strncmp(arg, name, len) != 0 || arg[len] != '=') return false;
  char* end = nullptr;
  const long long v = std::strtoll(arg + len + 1, &end, 10);
  if (end == arg + len + 1 || *end != '\0' || v < 0) return false;
  *out = v;
  return true;
}

// VmRSS or VmHWM from /proc/self/status, in bytes (0 if unreadable).
std::int64_t ProcStatusBytes(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  std::int64_t kb = 0;
  const std::size_t len = std::strlen(field);
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::strncmp(line, field, len) == 0 && line[len] == ':') {
      kb = std::strtoll(line + len + 1, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return kb * 1024;
}
std::int64_t CurrentRss() { return ProcStatusBytes("VmRSS"); }
std::int64_t PeakRss() { return ProcStatusBytes("VmHWM"); }

// Resets VmHWM to the current RSS (Linux >= 4.0). Returns false if it could
// not (then the thread phase's peak includes the fiber phase's).
bool ResetPeakRss() {
  const int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = write(fd, "5", 1) == 1;
  close(fd);
  return ok;
}

std::string Bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  // Three significant digits: "4.34 KB", "762 MB", "1.27 GB".
  const char* format = u == 0 || b >= 100 ? "%.0f %s"
                       : b >= 10          ? "%.1f %s"
                                          : "%.2f %s";
  char buf[32];
  std::snprintf(buf, sizeof(buf), format, b, units[u]);
  return buf;
}

// 1234567 -> "1,234,567".
std::string Count(std::int64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

struct Result {
  double wall_s = 0;
  double spawn_s = 0;
  std::int64_t peak_live = 0;
  std::int64_t delta_bytes = 0;  // peak RSS over the baseline
  std::int64_t peak_bytes = 0;
  bool rss_measured = false;  // false: the peak could not be reset
};

Result RunFibers(const Flags& flags) {
  const std::int64_t n = flags.fibers;
  const absl::Duration sleep = absl::Milliseconds(flags.sleep_ms);
  Result r;
  const std::int64_t baseline = CurrentRss();
  r.rss_measured = ResetPeakRss();
  gort::WaitGroup wg;
  wg.Add(n);
  const gort::GoOptions options{.compact_stack = flags.compact != 0};
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t i = 0; i < n; ++i) {
    gort::Go(options, [&wg, sleep] {
      gort::Sleep(sleep);
      wg.Done();
    });
    // Fibers alive now = started - finished = (i + 1) - (n - count).
    if ((i & 1023) == 0) {
      r.peak_live = std::max(r.peak_live, i + 1 - (n - wg.count()));
    }
  }
  r.spawn_s = Seconds(std::chrono::steady_clock::now() - start);
  r.peak_live = std::max(r.peak_live, wg.count());
  wg.Wait();
  r.wall_s = Seconds(std::chrono::steady_clock::now() - start);
  r.peak_bytes = PeakRss();
  r.delta_bytes = r.peak_bytes - baseline;
  return r;
}

// Threads are detached, as fibers are: a joinable thread that has exited
// keeps its stack mapped (and its touched pages resident) until joined.
Result RunThreads(const Flags& flags) {
  const std::int64_t n = flags.threads;
  const auto sleep = std::chrono::milliseconds(flags.sleep_ms);
  Result r;
  // The fiber phase's freed stacks are still pooled (resident); the
  // monitor would give them back during this phase, shrinking RSS while
  // threads grow it, and the difference would understate the threads.
  // Give them back now, before the baseline.
  gort::ReleaseStackCache();
  const std::int64_t baseline = CurrentRss();
  r.rss_measured = ResetPeakRss();
  gort::WaitGroup wg;
  wg.Add(n);
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t i = 0; i < n; ++i) {
    std::thread([&wg, sleep] {
      std::this_thread::sleep_for(sleep);
      wg.Done();  // the thread's last access to anything of ours
    }).detach();
    r.peak_live = std::max(r.peak_live, i + 1 - (n - wg.count()));
  }
  r.spawn_s = Seconds(std::chrono::steady_clock::now() - start);
  wg.Wait();  // parks the main fiber; the threads signal it
  r.wall_s = Seconds(std::chrono::steady_clock::now() - start);
  r.peak_bytes = PeakRss();
  r.delta_bytes = r.peak_bytes - baseline;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      Usage(argv[0]);
      return 0;
    }
    if (!ParseFlag(argv[i], "--fibers", &flags.fibers) &&
        !ParseFlag(argv[i], "--sleep_ms", &flags.sleep_ms) &&
        !ParseFlag(argv[i], "--threads", &flags.threads) &&
        !ParseFlag(argv[i], "--compact", &flags.compact)) {
      std::fprintf(stderr, "unknown or bad flag: %s\n", argv[i]);
      Usage(argv[0]);
      return 2;
    }
  }
  if (flags.fibers < 1 || flags.fibers > INT32_MAX ||
      flags.threads > INT32_MAX) {
    std::fprintf(stderr, "--fibers must be in [1, 2^31), --threads < 2^31\n");
    return 2;
  }

  return gort::RunMain([&flags] {
    const Result f = RunFibers(flags);
    if (!f.rss_measured) {
      std::printf(
          "note: /proc/self/clear_refs is not writable, so peak RSS is the "
          "process's peak so far, not this phase's; RSS figures are n/a\n");
    }
    const gort::StackStats st = gort::GetStackStats();
    const double fiber_live =
        double(f.delta_bytes) / double(std::max<std::int64_t>(f.peak_live, 1));
    std::printf(
        "gort: %s fibers%s, each Sleep(%lldms) -> wall %.2f s, peak RSS %s "
        "(+%s: %s per fiber started; %s alive at peak, %s each)\n",
        Count(flags.fibers).c_str(),
        flags.compact != 0 ? " (compact stacks)" : "",
        static_cast<long long>(flags.sleep_ms), f.wall_s,
        Bytes(double(f.peak_bytes)).c_str(),
        Bytes(double(f.delta_bytes)).c_str(),
        Bytes(double(f.delta_bytes) / double(flags.fibers)).c_str(),
        Count(f.peak_live).c_str(), Bytes(fiber_live).c_str());
    std::printf(
        "  %d Ps; spawning took %.2f s; stacks after: %s reserved in %zu "
        "slabs, %zu pooled (%zu resident), %zu trimmed, guards %s\n",
        gort::MaxProcs(), f.spawn_s, Bytes(double(st.reserved_bytes)).c_str(),
        st.slabs, st.pooled, st.pooled_resident, st.trimmed_stacks,
        st.lightweight_guards ? "MADV_GUARD_INSTALL" : "mprotect");
    if (flags.threads == 0) return 0;

    const Result t = RunThreads(flags);
    const double thread_live =
        double(t.delta_bytes) / double(std::max<std::int64_t>(t.peak_live, 1));
    std::printf(
        "threads: %s std::threads, each sleep_for(%lldms) -> wall %.2f s, "
        "peak RSS +%s (%s per thread started; %s alive at peak, %s each)\n",
        Count(flags.threads).c_str(), static_cast<long long>(flags.sleep_ms),
        t.wall_s, Bytes(double(t.delta_bytes)).c_str(),
        Bytes(double(t.delta_bytes) / double(flags.threads)).c_str(),
        Count(t.peak_live).c_str(), Bytes(thread_live).c_str());
    const double fiber_rate = double(flags.fibers) / f.spawn_s;
    const double thread_rate = double(flags.threads) / t.spawn_s;
    std::printf("fibers vs threads: %.1fx the start rate (%s/s vs %s/s)",
                fiber_rate / thread_rate,
                Count(std::int64_t(fiber_rate)).c_str(),
                Count(std::int64_t(thread_rate)).c_str());
    if (f.rss_measured && t.rss_measured && fiber_live > 0 &&
        thread_live > 0) {
      std::printf(", %.1fx less RSS per live task (%s vs %s)\n",
                  thread_live / fiber_live, Bytes(fiber_live).c_str(),
                  Bytes(thread_live).c_str());
    } else {
      std::printf("; RSS per live task n/a\n");
    }
    return 0;
  });
}
