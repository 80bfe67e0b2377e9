// For //sync's starvation tests (fibers and threads alike): watches one
// victim's Lock through sync_internal::mutex_starving_waiter_hook, telling
// whether that task (not any other) queued in starvation mode, and how many
// times the hammering tasks had locked the mutex when it last did. The test
// sets `victim` (the victim's Parker::Current()) and counts the hammers'
// locks in `hammer_locks`. One at a time: the hook and its state are global.

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

  static void Hook(const Mutex* m) {
    if (m != mu.load() || Parker::Current() != victim.load()) return;
    hammer_locks_at_mark.store(hammer_locks.load());
    marks.fetch_add(1);
  }
  explicit StarvationWatch(const Mutex* m) {
    mu = m;
    sync_internal::mutex_starving_waiter_hook.store(&Hook);
  }
  ~StarvationWatch() {
    sync_internal::mutex_starving_waiter_hook.store(nullptr);
    mu = nullptr;
    victim = nullptr;
  }
};

}  // namespace testing
}  // namespace gort

#endif  // GORT_SYNC_TESTING_STARVATION_WATCH_H_
