// For //sync's starvation tests (fibers and threads alike): watches one
// victim's Lock through sync_internal::mutex_starving_waiter_hook, telling
// whether that task (not any other) queued in starvation mode, and how many
// times the hammering tasks had locked the mutex when it last did; and,
// through mutex_starvation_exit_hook, whether another task then switched
// the mutex back to normal mode. The test sets `victim` (the victim's
// Parker::Current()) and counts the hammers' locks in `hammer_locks`. One
// at a time: the hooks and their state are global.
//
// Why the exits matter: between the victim's switch to starvation mode and
// its queueing at the front of the semaphore, an Unlock may hand the mutex
// to a waiter queued earlier; if that one had waited less than the
// threshold, it switches the mutex back to normal mode (as in Go), and the
// hammers may then barge in for as long as the victim takes to wake up.
// The bound on the victim's wait holds only for a mark with no such exit
// after it. The test resets `exits_by_others` before the victim's Lock and
// checks the bound only if it is still 0 afterwards: conservative (an exit
// before the victim starved also counts), so that an exit racing with the
// victim's own mark is never missed.

#ifndef GORT_SYNC_TESTING_STARVATION_WATCH_H_
#define GORT_SYNC_TESTING_STARVATION_WATCH_H_

#include <atomic>
#include <cstdint>

#include "sched/park.h"
#include "sync/mutex.h"

namespace gort {
namespace testing {

struct StarvationWatch {
  static inline std::atomic<const Mutex*> mu{nullptr};
  static inline std::atomic<Parker*> victim{nullptr};
  static inline std::atomic<std::int64_t> hammer_locks{0};
  static inline std::atomic<int> marks{0};
  static inline std::atomic<std::int64_t> hammer_locks_at_mark{0};
  // Switches back to normal mode by other tasks since the test reset it.
  static inline std::atomic<int> exits_by_others{0};

  static void Hook(const Mutex* m) {
    if (m != mu.load() || Parker::Current() != victim.load()) return;
    hammer_locks_at_mark.store(hammer_locks.load());
    marks.fetch_add(1);
  }
  static void ExitHook(const Mutex* m) {
    if (m != mu.load() || Parker::Current() == victim.load()) return;
    exits_by_others.fetch_add(1);
  }
  explicit StarvationWatch(const Mutex* m) {
    mu = m;
    sync_internal::mutex_starving_waiter_hook.store(&Hook);
    sync_internal::mutex_starvation_exit_hook.store(&ExitHook);
  }
  ~StarvationWatch() {
    sync_internal::mutex_starving_waiter_hook.store(nullptr);
    sync_internal::mutex_starvation_exit_hook.store(nullptr);
    mu = nullptr;
    victim = nullptr;
  }
};

}  // namespace testing
}  // namespace gort

#endif  // GORT_SYNC_TESTING_STARVATION_WATCH_H_
