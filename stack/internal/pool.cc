// The stack pool: size classes, thread registry, shared pools and trimming.
//
// Invariants:
// - Every carved slot is in exactly one of these states, and its owner is:
//     live         the Stack object holding it (its user);
//     thread cache ThreadState::caches[cls].tops[0, count) of one thread;
//     resident     SharedPool::resident of its class (under mu);
//     trimming     the local `victims` vector of one TrimAndStore() call;
//     trimmed      SharedPool::trimmed of its class (under mu).
//   Nothing else refers to it, so a stack is handed to at most one user.
// - SharedPool::pooled == |resident| + |trimmed| + |trimming| and
//   SharedPool::carved == the number of slots ever carved (both under mu), so
//   live = carved - pooled - cached.
// - A slot of a guarded class carved without a guard (InstallGuard returned
//   kNone) has a nonzero guard-state byte in its slab header, written before
//   the slot is first handed out and never changed; g_unguarded_slots is
//   true from then on. Every other slot's byte is 0 (never written).
// - A pooled slot (cache, resident, trimming, trimmed) has owner id 0 and,
//   under ASan, a poisoned usable region. A never-carved slot has owner id 0,
//   untouched memory and clean shadow.
// - A trimmed slot has had its usable pages released with MADV_DONTNEED since
//   it was last handed out (a compact slot: its page, which its page-mate,
//   reused since, may have faulted back in); resident slots may still have
//   pages in memory. resident[0, orphans) are compact slots a trim kept
//   because a page-mate was not in its batch.
// - resident is in free order (front = least recently freed), so trimming the
//   front keeps the hottest stacks and taking the back reuses them LIFO.
// - orphans <= idle_mark <= |resident|. While an idle sweep is in
//   progress, resident[orphans, orphans + sweep_counted) are its victims
//   still to trim (every removal from the front or the back keeps this) and
//   sweep_orphans <= orphans.
// - A ThreadState is in the registry iff its phase is kActive; its caches are
//   empty in phases kNew and kExited. An active thread has an alternate
//   signal stack (its own or ours), so any thread that can be handed a stack
//   from its cache can also report an overflow on it.

#include "stack/internal/pool.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "stack/internal/overflow.h"
#include "stack/internal/slab.h"
#include "stack/internal/spinlock.h"

namespace gort::stack_internal {

constinit ClassInfo g_class_info[kMaxSizeClasses] = {};
constinit std::atomic<bool> g_unguarded_slots{false};
constinit thread_local ThreadState tls_thread_state;

namespace {

// The number of published classes. Store-release in CreateClassLocked();
// load-acquire in ClassCount() and ClassForSize(), so entries below it are
// fully written.
std::atomic<std::uint32_t> g_class_count{0};
// The page size, written before class 0 is published.
std::size_t g_page_size_for_classes = 4096;

struct SharedPool {
  SpinLock mu;
  std::vector<std::uintptr_t> resident;  // guarded by mu; back = newest
  std::vector<std::uintptr_t> trimmed;   // guarded by mu
  std::uintptr_t carve_slab = 0;         // guarded by mu
  std::size_t carve_next = 0;            // guarded by mu
  std::size_t carved = 0;                // guarded by mu
  std::size_t pooled = 0;                // guarded by mu
  // resident[0, idle_mark) were already pooled when the last idle sweep
  // began (TrimIdle) and have not been handed out since: idle for a whole
  // period.
  std::size_t idle_mark = 0;  // guarded by mu
  // resident[0, orphans): compact slots a trim kept for their page-mates.
  std::size_t orphans = 0;  // guarded by mu
  // The idle sweep in progress (Pool::TrimIdle): resident[orphans, orphans
  // + sweep_counted) are the idle stacks it has still to trim, and it will
  // retry sweep_orphans of the orphans (the front ones) once they are done.
  std::size_t sweep_counted = 0;  // guarded by mu
  std::size_t sweep_orphans = 0;  // guarded by mu
};

// SetStackTrimmingDeferred(): how many callers want trimming past the
// high-water mark left to them, and whether a pool is waiting for it.
std::atomic<int> g_trim_deferred{0};
std::atomic<bool> g_trim_pending{false};

// A class's share of a limit given in stacks: the compact class, whose
// stacks share pages, keeps as many pages' worth (saturating).
std::size_t ScaledLimit(std::uint32_t cls, std::size_t stacks) {
  const std::size_t stride = g_class_info[cls].stride;
  const std::size_t page = PageSize();
  if (stride >= page) return stacks;
  const std::size_t per_page = page / stride;
  return stacks > SIZE_MAX / per_page ? SIZE_MAX : stacks * per_page;
}

void OnThreadExit(void* arg);

// Records that the slot whose top is `top` was carved without a guard, before
// it is handed out (its user arms and checks a canary instead).
void MarkUnguarded(std::uintptr_t top, std::uint32_t cls) {
  GuardStateCell(top, cls)->store(1, std::memory_order_relaxed);
  g_unguarded_slots.store(true, std::memory_order_relaxed);
}

// Leaked singleton: stacks freed by static destructors or by threads that
// outlive main() still find a working pool.
class Pool {
 public:
  static Pool& Get() {
    static Pool* const pool = new Pool();
    return *pool;
  }

  std::uint32_t ClassCount() const {
    // Load-acquire, pairs with the store-release in CreateClassLocked().
    return g_class_count.load(std::memory_order_acquire);
  }

  // A guarded class of `usable` bytes (never the compact class).
  std::uint32_t FindOrCreateClass(std::size_t usable) {
    const std::uint32_t n = ClassCount();
    for (std::uint32_t i = 0; i < n; ++i) {
      if (i != kCompactClass && g_class_info[i].usable == usable) return i;
    }
    std::lock_guard<std::mutex> lock(class_mu_);
    const std::uint32_t m = g_class_count.load(std::memory_order_relaxed);
    for (std::uint32_t i = n; i < m; ++i) {
      if (g_class_info[i].usable == usable) return i;
    }
    return CreateClassLocked(usable, /*compact=*/false);
  }

  SharedPool& shared(std::uint32_t cls) { return shared_[cls]; }

  void Register(ThreadState& ts) {
    {
      std::lock_guard<std::mutex> lock(registry_mu_);
      ts.prev = nullptr;
      ts.next = registry_;
      if (registry_ != nullptr) registry_->prev = &ts;
      registry_ = &ts;
    }
    pthread_setspecific(key_, &ts);
    ts.limit = kThreadCacheCapacity;
    ts.phase = ThreadPhase::kActive;
  }

  void Unregister(ThreadState& ts) {
    std::lock_guard<std::mutex> lock(registry_mu_);
    if (ts.prev != nullptr) {
      ts.prev->next = ts.next;
    } else {
      registry_ = ts.next;
    }
    if (ts.next != nullptr) ts.next->prev = ts.prev;
    ts.prev = ts.next = nullptr;
  }

  std::size_t CountThreadCached() {
    std::lock_guard<std::mutex> lock(registry_mu_);
    std::size_t n = 0;
    for (ThreadState* ts = registry_; ts != nullptr; ts = ts->next) {
      for (const ClassCache& c : ts->caches) {
        n += c.count.load(std::memory_order_relaxed);
      }
    }
    return n;
  }

  // Moves `n` pooled stacks of class `cls` into its shared pool; trims the
  // oldest if the pool is now past its high-water mark.
  void PutBatch(std::uint32_t cls, const std::uintptr_t* tops, std::size_t n) {
    SharedPool& sp = shared_[cls];
    const std::size_t limit =
        ScaledLimit(cls, limit_.load(std::memory_order_relaxed));
    std::vector<std::uintptr_t> victims;
    bool pending = false;
    {
      std::lock_guard<SpinLock> lock(sp.mu);
      sp.resident.insert(sp.resident.end(), tops, tops + n);
      sp.pooled += n;
      // Slots kept for their page-mates do not count: a trim that had to
      // keep them all would otherwise be retried on every batch.
      const std::size_t counted = sp.resident.size() - sp.orphans;
      if (counted > limit && counted - limit > TrimSlack(limit)) {
        if (g_trim_deferred.load(std::memory_order_relaxed) > 0) {
          // Deferred: the trimmer's thread does it. If it is so late that
          // the pool grew by another slack meanwhile, we trim too, but a
          // bounded share: back under that bound by kBackstopTrimStacks.
          // (Trimming all the way down to the mark here, 65,536 stacks at
          // the default mark, stalled this thread's P for 30-70 ms.)
          pending = true;
          const std::size_t over = counted - limit;
          if (over > 2 * TrimSlack(limit)) {
            TakeOldestCountedLocked(
                sp,
                std::min(over, over - 2 * TrimSlack(limit) +
                                   kBackstopTrimStacks),
                &victims);
          }
        } else {
          TakeOldestLocked(sp, sp.resident.size() - limit, &victims);
        }
      }
    }
    if (pending && !g_trim_pending.load(std::memory_order_relaxed)) {
      g_trim_pending.store(true, std::memory_order_relaxed);
    }
    if (!victims.empty()) TrimAndStore(cls, &victims);
  }

  // Trims every class whose shared pool holds more than its limit (not
  // counting the compact slots kept for their page-mates) down to it, at
  // most `budget` stacks in all, the oldest counted ones first. Returns
  // true, and raises g_trim_pending, if some class is still over.
  bool TrimExcess(std::size_t budget) {
    g_trim_pending.store(false, std::memory_order_relaxed);
    const std::size_t limit_all = limit_.load(std::memory_order_relaxed);
    const std::uint32_t n = ClassCount();
    bool more = false;
    for (std::uint32_t cls = 0; cls < n; ++cls) {
      SharedPool& sp = shared_[cls];
      const std::size_t limit = ScaledLimit(cls, limit_all);
      std::vector<std::uintptr_t> victims;
      {
        std::lock_guard<SpinLock> lock(sp.mu);
        const std::size_t counted = sp.resident.size() - sp.orphans;
        if (counted > limit) {
          const std::size_t k = std::min(counted - limit, budget);
          if (k < counted - limit) more = true;
          // Past the orphans: taking them would only put them back (their
          // page-mates are still out), and a budget they filled would
          // trim nothing, round after round.
          TakeOldestCountedLocked(sp, k, &victims);
        }
      }
      budget -= victims.size();
      if (!victims.empty()) {
        deferred_trimmed_stacks_.fetch_add(TrimAndStore(cls, &victims),
                                           std::memory_order_relaxed);
      }
    }
    if (more) g_trim_pending.store(true, std::memory_order_relaxed);
    return more;
  }

  // Takes up to `max` pooled stacks: out[0, got) with the most recently freed
  // resident stack last (so a cache pops it first), trimmed ones below.
  std::uint32_t TakeBatch(std::uint32_t cls, std::uintptr_t* out,
                          std::uint32_t max, std::uint32_t* trimmed = nullptr) {
    SharedPool& sp = shared_[cls];
    std::lock_guard<SpinLock> lock(sp.mu);
    const std::size_t from_resident =
        std::min<std::size_t>(max, sp.resident.size());
    const std::size_t from_trimmed =
        std::min<std::size_t>(max - from_resident, sp.trimmed.size());
    std::copy(sp.trimmed.end() - from_trimmed, sp.trimmed.end(), out);
    sp.trimmed.resize(sp.trimmed.size() - from_trimmed);
    std::copy(sp.resident.end() - from_resident, sp.resident.end(),
              out + from_trimmed);
    sp.resident.resize(sp.resident.size() - from_resident);
    sp.orphans = std::min(sp.orphans, sp.resident.size());
    if (sp.idle_mark > sp.resident.size()) sp.idle_mark = sp.resident.size();
    sp.sweep_counted =
        std::min(sp.sweep_counted, sp.resident.size() - sp.orphans);
    sp.sweep_orphans = std::min(sp.sweep_orphans, sp.orphans);
    const std::size_t got = from_resident + from_trimmed;
    sp.pooled -= got;
    if (trimmed != nullptr) *trimmed = static_cast<std::uint32_t>(from_trimmed);
    return static_cast<std::uint32_t>(got);
  }

  // n never-used slots (tops in out[0, n)), their guards installed and
  // their top pages made resident, in a few batched system calls.
  void CarveBatch(std::uint32_t cls, std::uintptr_t* out, std::uint32_t n) {
    const ClassInfo& ci = g_class_info[cls];
    SharedPool& sp = shared_[cls];
    std::uintptr_t slots[kThreadCacheCapacity];
    {
      std::lock_guard<SpinLock> lock(sp.mu);
      for (std::uint32_t i = 0; i < n; ++i) {
        if (sp.carve_slab == 0 || sp.carve_next == ci.slots) {
          sp.carve_slab = ReserveSlab(cls);
          sp.carve_next = 0;
        }
        slots[i] = sp.carve_slab + ci.header + sp.carve_next * ci.stride;
        ++sp.carve_next;
        ++sp.carved;
      }
    }
    // Outside the lock: system calls.
    GuardKind kinds[kThreadCacheCapacity];
    if (ci.guard != 0) InstallGuards(slots, n, ci.guard, kinds);
    for (std::uint32_t i = 0; i < n; ++i) {
      out[i] = slots[i] + ci.stride;
      if (ci.guard != 0 && kinds[i] == GuardKind::kNone) {
        MarkUnguarded(out[i], cls);
      }
    }
    PrefaultSlots(cls, out, n);
  }

  // A never-used slot: reserves a slab if needed, installs the slot's guard.
  std::uintptr_t Carve(std::uint32_t cls) {
    const ClassInfo& ci = g_class_info[cls];
    SharedPool& sp = shared_[cls];
    std::uintptr_t slot;
    {
      std::lock_guard<SpinLock> lock(sp.mu);
      if (sp.carve_slab == 0 || sp.carve_next == ci.slots) {
        sp.carve_slab = ReserveSlab(cls);
        sp.carve_next = 0;
      }
      slot = sp.carve_slab + ci.header + sp.carve_next * ci.stride;
      ++sp.carve_next;
      ++sp.carved;
    }
    const std::uintptr_t top = slot + ci.stride;
    // Outside the lock: a system call.
    if (ci.guard != 0 && InstallGuard(slot, ci.guard) == GuardKind::kNone) {
      MarkUnguarded(top, cls);
    }
    PrefaultSlots(cls, &top, 1);
    return top;
  }

  // Releases the pages of the oldest resident stacks of every class until at
  // most `keep` remain.
  void TrimAllTo(std::size_t keep) {
    const std::uint32_t n = ClassCount();
    for (std::uint32_t cls = 0; cls < n; ++cls) {
      SharedPool& sp = shared_[cls];
      std::vector<std::uintptr_t> victims;
      {
        std::lock_guard<SpinLock> lock(sp.mu);
        const std::size_t k = ScaledLimit(cls, keep);
        if (sp.resident.size() > k) {
          TakeOldestLocked(sp, sp.resident.size() - k, &victims);
        }
      }
      if (!victims.empty()) TrimAndStore(cls, &victims);
    }
  }

  // Releases the pages of resident stacks that stayed pooled since the
  // previous sweep began (the oldest first), keeping at least `keep` per
  // class, at most `budget` of them per call. Go's scavenger, done with a
  // period instead of a heap goal: a burst keeps its stacks warm while it
  // lasts, and RSS falls back within two periods after it ends.
  //
  // A sweep begins with a call that finds none in progress: it picks each
  // class's victims, the stacks idle since the previous sweep began, and
  // begins the next period for every class at once (a call that goes on
  // with a sweep keeps the sweep's `keep`). Calls trim the victims, `budget`
  // at a time. The compact slots kept for a page-mate, those idle when the
  // sweep began and those its own slices leave behind, are retried once,
  // after the class's last slice, outside the budget: a retry advises only
  // the pages now wholly free, but all of them, so for the compact class it
  // can be as large as the class's victims (one burst's worth, once per
  // sweep). Returns true while the sweep has work left. A budgeted call
  // does not wait for another one in progress (it returns false at once):
  // the monitor never waits for a user's unbudgeted call.
  bool TrimIdle(std::size_t keep, std::size_t budget) {
    std::unique_lock<std::mutex> sweep_lock(sweep_mu_, std::defer_lock);
    if (budget == SIZE_MAX) {
      sweep_lock.lock();
    } else if (!sweep_lock.try_lock()) {
      // Busy: an unbudgeted call finishes its sweep, a budgeted one leaves
      // it for the next call. Not "unfinished": a monitor would come back
      // at once and begin a sweep whose period had hardly begun.
      return false;
    }
    budget = std::max<std::size_t>(budget, 1);
    const std::uint32_t n = ClassCount();
    if (!sweeping_) {
      sweep_keep_ = keep;
      for (std::uint32_t cls = 0; cls < n; ++cls) {
        SharedPool& sp = shared_[cls];
        std::lock_guard<SpinLock> lock(sp.mu);
        const std::size_t size = sp.resident.size();
        const std::size_t idle = std::min(sp.idle_mark, size);
        const std::size_t k_keep = ScaledLimit(cls, keep);
        const std::size_t k = std::min(idle, size > k_keep ? size - k_keep : 0);
        sp.sweep_orphans = std::min(sp.orphans, k);
        sp.sweep_counted = k - sp.sweep_orphans;
        sp.idle_mark = size;
      }
      sweeping_ = true;
    }
    bool more = false;
    for (std::uint32_t cls = 0; cls < n; ++cls) {
      SharedPool& sp = shared_[cls];
      // A slice of the counted victims, then (once they are all done, with
      // budget left) the retry of the orphans.
      for (bool retried = false; !retried;) {
        std::vector<std::uintptr_t> victims;
        bool slice = false;
        {
          std::lock_guard<SpinLock> lock(sp.mu);
          const std::size_t size = sp.resident.size();
          const std::size_t k_keep = ScaledLimit(cls, sweep_keep_);
          const std::size_t retry = std::min(sp.sweep_orphans, sp.orphans);
          // Reuse since the sweep began may have shrunk the pool to `keep`.
          const std::size_t room =
              size - retry > k_keep ? size - retry - k_keep : 0;
          if (sp.sweep_counted > room) sp.sweep_counted = room;
          if (budget == 0) {
            more = more || sp.sweep_counted > 0 || retry > 0;
            break;
          }
          if (sp.sweep_counted > 0) {
            const std::size_t k = std::min(sp.sweep_counted, budget);
            TakeOldestCountedLocked(sp, k, &victims);
            budget -= k;
            slice = true;
          } else {
            if (retry > 0) TakeOldestLocked(sp, retry, &victims);
            sp.sweep_orphans = 0;
            retried = true;
          }
        }
        if (victims.empty()) continue;
        const std::size_t taken = victims.size();
        const std::size_t trimmed = TrimAndStore(cls, &victims);
        if (slice && trimmed < taken) {  // they join this sweep's retry
          std::lock_guard<SpinLock> lock(sp.mu);
          sp.sweep_orphans =
              std::min(sp.orphans, sp.sweep_orphans + (taken - trimmed));
        }
      }
    }
    sweeping_ = more;
    return more;
  }

  void SetLimit(std::size_t stacks) {
    limit_.store(stacks, std::memory_order_relaxed);
  }
  std::size_t limit() const { return limit_.load(std::memory_order_relaxed); }

  std::size_t trim_calls() const {
    return trim_calls_.load(std::memory_order_relaxed);
  }
  std::size_t trimmed_stacks() const {
    return trimmed_stacks_.load(std::memory_order_relaxed);
  }
  std::size_t deferred_trimmed_stacks() const {
    return deferred_trimmed_stacks_.load(std::memory_order_relaxed);
  }

 private:
  Pool() {
    InitGuards();
    g_page_size_for_classes = PageSize();
    // Classes 0 and 1 (a class costs no memory before its first slab); no
    // other thread can see us.
    CreateClassLocked(kDefaultSize, /*compact=*/false);
    CreateClassLocked(kCompactSize, /*compact=*/true);
    if (pthread_key_create(&key_, OnThreadExit) != 0) {
      StackFatal("pthread_key_create failed");
    }
    InstallOverflowHandler();
  }

  std::uint32_t CreateClassLocked(std::size_t usable, bool compact) {
    const std::uint32_t n = g_class_count.load(std::memory_order_relaxed);
    if (n == kMaxSizeClasses) {
      StackFatal("too many distinct fiber stack sizes (%u): cannot add %zu",
                 kMaxSizeClasses, usable);
    }
    const std::size_t page = PageSize();
    ClassInfo& ci = g_class_info[n];
    ci.usable = usable;
    ci.guard = compact ? 0 : GuardBytes();
    ci.stride = ci.guard + usable;
    const std::size_t upper = kSlabBytes / ci.stride;
    // Owner ids, then (guarded classes) one guard-state byte per slot.
    ci.guard_states = compact ? 0 : upper * sizeof(std::uint64_t);
    const std::size_t header_bytes =
        upper * sizeof(std::uint64_t) + (compact ? 0 : upper);
    ci.header = (header_bytes + page - 1) / page * page;
    ci.slots = (kSlabBytes - ci.header) / ci.stride;
    ci.stride_shift = static_cast<unsigned>(__builtin_ctzll(ci.stride));
    const std::uint64_t odd = ci.stride >> ci.stride_shift;
    std::uint64_t inverse = odd;  // correct to 3 bits; Newton doubles it
    for (int i = 0; i < 5; ++i) inverse *= 2 - odd * inverse;
    ci.stride_odd_inverse = inverse;
    shared_[n].resident.reserve(64);
    // Store-release, pairs with the load-acquire in ClassCount() and
    // ClassForSize().
    g_class_count.store(n + 1, std::memory_order_release);
    return n;
  }

  // Appends resident[orphans, orphans + k) to *victims: the k least
  // recently freed slots that are not kept for a page-mate.
  static void TakeOldestCountedLocked(SharedPool& sp, std::size_t k,
                                      std::vector<std::uintptr_t>* victims) {
    const auto first = sp.resident.begin() + sp.orphans;
    victims->insert(victims->end(), first, first + k);
    sp.resident.erase(first, first + k);
    if (sp.idle_mark > sp.orphans) {
      sp.idle_mark -= std::min(k, sp.idle_mark - sp.orphans);
    }
    sp.sweep_counted -= std::min(k, sp.sweep_counted);
  }

  // Appends resident[0, k) to *victims: the k least recently freed slots,
  // the orphans first.
  static void TakeOldestLocked(SharedPool& sp, std::size_t k,
                               std::vector<std::uintptr_t>* victims) {
    victims->insert(victims->end(), sp.resident.begin(),
                    sp.resident.begin() + k);
    sp.resident.erase(sp.resident.begin(), sp.resident.begin() + k);
    const std::size_t counted = k > sp.orphans ? k - sp.orphans : 0;
    sp.orphans = sp.orphans > k ? sp.orphans - k : 0;
    sp.idle_mark = sp.idle_mark > k ? sp.idle_mark - k : 0;
    sp.sweep_counted -= std::min(counted, sp.sweep_counted);
    sp.sweep_orphans = std::min(sp.sweep_orphans, sp.orphans);
  }

  // Releases the usable pages of `victims` (one range per run of adjacent
  // slots, a run's inner guards included, which MADV_DONTNEED leaves
  // intact; the ranges go to the kernel in batches: DiscardRanges), then
  // files them as trimmed. Runs without the class lock.
  // Compact slots share pages: a victim whose page-mates are not all in the
  // batch (one is live, or pooled but not taken) keeps its page and goes
  // back to the oldest end of `resident`, counted as idle, so that it is
  // retried with the next batch; a slot filed as trimmed has no page left.
  std::size_t TrimAndStore(std::uint32_t cls,
                           std::vector<std::uintptr_t>* victims) {
    const ClassInfo& ci = g_class_info[cls];
    std::vector<std::uintptr_t>& v = *victims;
    std::sort(v.begin(), v.end());
    const std::uintptr_t page = PageSize();
    std::vector<std::uintptr_t> orphans;
    if (ci.stride < page) {  // the compact class: page / stride per page
      const std::size_t per_page = page / ci.stride;
      std::size_t kept = 0;
      for (std::size_t i = 0; i < v.size();) {
        const std::uintptr_t pg = (v[i] - 1) & ~(page - 1);
        std::size_t j = i + 1;
        while (j < v.size() && ((v[j] - 1) & ~(page - 1)) == pg) ++j;
        if (j - i == per_page) {
          for (std::size_t k = i; k < j; ++k) v[kept++] = v[k];
        } else {
          orphans.insert(orphans.end(), v.begin() + i, v.begin() + j);
        }
        i = j;
      }
      v.resize(kept);
    }
    std::vector<PageRange> runs;
    for (std::size_t i = 0; i < v.size();) {
      const std::uintptr_t lo = v[i] - ci.usable;
      std::uintptr_t hi = v[i];
      std::size_t j = i + 1;
      // Slots never straddle slabs: a slab's header breaks every run.
      while (j < v.size() && v[j] == hi + ci.stride) hi = v[j++];
      runs.push_back(PageRange{lo, hi - lo});
      i = j;
    }
    const std::size_t calls = DiscardRanges(runs.data(), runs.size());
    trim_calls_.fetch_add(calls, std::memory_order_relaxed);
    trimmed_stacks_.fetch_add(v.size(), std::memory_order_relaxed);
    SharedPool& sp = shared_[cls];
    std::lock_guard<SpinLock> lock(sp.mu);
    // Highest address last: refills hand out low addresses last, which
    // keeps no particular order but costs nothing.
    sp.trimmed.insert(sp.trimmed.end(), v.begin(), v.end());
    if (!orphans.empty()) {
      sp.resident.insert(sp.resident.begin(), orphans.begin(), orphans.end());
      sp.orphans += orphans.size();
      sp.idle_mark += orphans.size();
    }
    return v.size();
  }

  SharedPool shared_[kMaxSizeClasses];
  std::mutex class_mu_;  // serializes class creation
  pthread_key_t key_;
  std::mutex registry_mu_;
  ThreadState* registry_ = nullptr;  // guarded by registry_mu_
  std::atomic<std::size_t> limit_{kDefaultPoolLimit};
  std::atomic<std::size_t> trim_calls_{0};
  std::atomic<std::size_t> trimmed_stacks_{0};
  std::atomic<std::size_t> deferred_trimmed_stacks_{0};
  std::mutex sweep_mu_;         // serializes TrimIdle() calls
  bool sweeping_ = false;       // guarded by sweep_mu_
  std::size_t sweep_keep_ = 0;  // guarded by sweep_mu_
};

void FlushCaches(Pool& pool, ThreadState& ts) {
  for (std::uint32_t cls = 0; cls < kCachedClasses; ++cls) {
    ClassCache& cache = ts.caches[cls];
    const std::uint32_t n = cache.count.load(std::memory_order_relaxed);
    if (n == 0) continue;
    pool.PutBatch(cls, cache.tops, n);
    cache.count.store(0, std::memory_order_relaxed);
  }
}

// pthread key destructor: runs on the exiting thread after its C++
// thread_local destructors, so stacks they freed are flushed too. A stack
// freed later still works: phase kExited sends it to the shared pool.
void OnThreadExit(void* arg) {
  ThreadState& ts = *static_cast<ThreadState*>(arg);
  Pool& pool = Pool::Get();
  FlushCaches(pool, ts);
  ts.limit = 0;
  ts.phase = ThreadPhase::kExited;
  pool.Unregister(ts);
  if (ts.own_altstack != nullptr) {
    ReleaseAltStack(ts.own_altstack, ts.own_altstack_size);
    ts.own_altstack = nullptr;
    ts.altstack_ready = false;  // it is gone: nothing may rely on it
  }
}

}  // namespace

std::uint32_t ClassForSize(std::size_t size) {
  // Fast path: an existing class, without touching the pool's guard.
  // Load-acquire, pairs with the store-release in CreateClassLocked().
  const std::uint32_t n = g_class_count.load(std::memory_order_acquire);
  if (n != 0 && size <= kMaxSize) {
    const std::size_t page = g_page_size_for_classes;
    const std::size_t rounded = (size + page - 1) & ~(page - 1);
    for (std::uint32_t i = 0; i < n; ++i) {
      // Never for 0; never the compact class.
      if (i != kCompactClass && g_class_info[i].usable == rounded) return i;
    }
  }
  Pool& pool = Pool::Get();
  if (size == 0) size = kDefaultSize;
  if (size > kMaxSize) {
    StackFatal("fiber stack size %zu exceeds the maximum %zu", size, kMaxSize);
  }
  const std::size_t page = PageSize();
  return pool.FindOrCreateClass((size + page - 1) & ~(page - 1));
}

void PrefaultSlots(std::uint32_t cls, const std::uintptr_t* tops,
                   std::size_t n) {
  if (cls != kCompactClass) {
    PrefaultTops(tops, n, kPrefaultBytes);
    return;
  }
  // madvise needs whole pages: the pages holding the stacks' tops, each once.
  const std::uintptr_t page = PageSize();
  std::uintptr_t pages[kThreadCacheCapacity];
  for (std::size_t done = 0; done < n;) {
    std::size_t k = 0;
    for (; done < n && k < kThreadCacheCapacity; ++done) {
      const std::uintptr_t end = (tops[done] + page - 1) & ~(page - 1);
      if (k == 0 || pages[k - 1] != end) pages[k++] = end;
    }
    PrefaultTops(pages, k, page);
  }
}

void PrepareThread(ThreadState& ts) {
  Pool& pool = Pool::Get();
  if (ts.phase == ThreadPhase::kNew) pool.Register(ts);
  if (!ts.altstack_ready && ts.phase == ThreadPhase::kActive) {
    ts.own_altstack = InstallAltStackIfMissing(&ts.own_altstack_size);
    ts.altstack_ready = true;
  }
}

std::uintptr_t AllocateSlow(ThreadState& ts, std::uint32_t cls) {
  Pool& pool = Pool::Get();
  if (!ts.altstack_ready) PrepareThread(ts);
  std::uintptr_t top;
  if (cls < kCachedClasses && ts.phase == ThreadPhase::kActive) {
    // The fast path found this cache empty.
    ClassCache& cache = ts.caches[cls];
    std::uint32_t trimmed = 0;
    std::uint32_t got =
        pool.TakeBatch(cls, cache.tops, kThreadCacheBatch, &trimmed);
    if (got != 0) {
      // Trimmed stacks come first in tops[]: fault their top pages in.
      PrefaultSlots(cls, cache.tops, trimmed);
    } else {
      pool.CarveBatch(cls, cache.tops, kThreadCacheBatch);
      got = kThreadCacheBatch;
    }
    top = cache.tops[got - 1];
    cache.count.store(got - 1, std::memory_order_relaxed);
    UnpoisonStack(top, cls);
    return top;
  }
  std::uint32_t trimmed = 0;
  if (pool.TakeBatch(cls, &top, 1, &trimmed) == 1) {
    PrefaultSlots(cls, &top, trimmed);
    UnpoisonStack(top, cls);
    return top;
  }
  return pool.Carve(cls);
}

void FreeSlow(ThreadState& ts, std::uintptr_t top, std::uint32_t cls) {
  Pool& pool = Pool::Get();
  if (cls < kCachedClasses) {
    // A thread with a cache gets an alternate signal stack too: a later
    // Allocate() may be served from the cache without reaching the slow path.
    if (ts.phase == ThreadPhase::kNew) PrepareThread(ts);
    if (ts.phase == ThreadPhase::kActive) {
      // The fast path found this cache full.
      ClassCache& cache = ts.caches[cls];
      std::uint32_t n = cache.count.load(std::memory_order_relaxed);
      if (n >= kThreadCacheCapacity) {
        pool.PutBatch(cls, cache.tops, kThreadCacheBatch);
        std::memmove(cache.tops, cache.tops + kThreadCacheBatch,
                     (n - kThreadCacheBatch) * sizeof(cache.tops[0]));
        n -= kThreadCacheBatch;
      }
      cache.tops[n] = top;
      cache.count.store(n + 1, std::memory_order_relaxed);
      return;
    }
  }
  pool.PutBatch(cls, &top, 1);
}

bool TrimIdle(std::size_t keep, std::size_t max_stacks) {
  return Pool::Get().TrimIdle(keep, max_stacks);
}

void SetTrimDeferred(bool defer) {
  if (defer) {
    g_trim_deferred.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const int before = g_trim_deferred.fetch_sub(1, std::memory_order_relaxed);
  if (before < 1) {
    StackFatal(
        "SetStackTrimmingDeferred(false) without a matching "
        "SetStackTrimmingDeferred(true)");
  }
  // The last one out does what was left for it, flag or no flag: a Release()
  // that saw the deferral may raise the flag just after we look at it.
  if (before == 1) Pool::Get().TrimExcess(SIZE_MAX);
}

bool TrimPending() { return g_trim_pending.load(std::memory_order_relaxed); }

bool TrimExcess(std::size_t max_stacks) {
  return Pool::Get().TrimExcess(max_stacks);
}

void ReleaseAll(ThreadState& ts) {
  Pool& pool = Pool::Get();
  FlushCaches(pool, ts);
  pool.TrimAllTo(0);
}

void SetPoolLimit(std::size_t stacks) {
  Pool& pool = Pool::Get();
  pool.SetLimit(stacks);
  pool.TrimAllTo(stacks);
}

std::size_t GetPoolLimit() { return Pool::Get().limit(); }

PoolStats GetPoolStats(bool measure_resident) {
  Pool& pool = Pool::Get();
  PoolStats s;
  const std::uint32_t classes = pool.ClassCount();
  std::size_t shared_pooled = 0;
  for (std::uint32_t cls = 0; cls < classes; ++cls) {
    SharedPool& sp = pool.shared(cls);
    std::lock_guard<SpinLock> lock(sp.mu);
    shared_pooled += sp.pooled;
    s.pooled_resident += sp.resident.size();
    s.carved += sp.carved;
  }
  s.thread_cached = pool.CountThreadCached();
  s.pooled = shared_pooled + s.thread_cached;
  s.pooled_resident += s.thread_cached;
  s.live = s.carved > s.pooled ? s.carved - s.pooled : 0;
  const SlabCounters slabs = GetSlabCounters();
  s.slabs = slabs.slabs;
  s.reserved_bytes = slabs.slabs * kSlabBytes;
  s.size_classes = classes;
  s.unguarded = slabs.unguarded;
  s.mprotect_guarded = slabs.mprotect_guarded;
  s.guard_budget = slabs.guard_budget;
  s.guard_bytes = GuardBytes();
  s.lightweight_guards = slabs.lightweight;
  s.trim_calls = pool.trim_calls();
  s.trimmed_stacks = pool.trimmed_stacks();
  s.deferred_trimmed_stacks = pool.deferred_trimmed_stacks();
  s.pool_limit = pool.limit();
  if (measure_resident) MeasureResidentBytes(&s.resident_bytes);
  return s;
}

}  // namespace gort::stack_internal
