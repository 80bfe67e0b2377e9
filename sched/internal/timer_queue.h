// gort/sched/internal/timer_queue.h: a P's timers, ordered by deadline.
//
// Two structures side by side:
//  - a FIFO `run` of the timers added in deadline order: each added timer
//    whose `when` is not before the run's last goes there;
//  - a 4-ary min-heap on `when` for the others (as Go's: half the depth of
//    a binary heap; a node's four children are adjacent, within one or two
//    cache lines).
// Most deadlines reach a P in order (its sleeps, and timeouts of one
// duration): in the run, adding and taking the earliest are O(1) and touch
// no other timer, where taking the heap's earliest sifts through log4(n)
// levels and rewrites the `index` of a (cold) timer at each. With a million
// 100 ms sleepers, TimerHeap::Remove alone was 8.5% of the compact run's
// profile (2026-11-28).
//
// T is any struct with `std::int64_t when` and `int index`; `index` is -1
// while the timer is in no queue, and the queue's own while it is in one
// (>= 0: a heap position; <= -2: a run position). The queue never owns or
// frees a timer. Not thread-safe: the scheduler guards each with a lock.
//
// Removing a timer from the middle of the run leaves a removed entry
// behind (O(1)); once they outnumber the live ones (and exceed 64), the run
// is rebuilt without them, so removal stays O(1) amortized and removed
// entries never hold much more room than live ones. The run's first and
// last entries are never removed ones.
//
// The run is a ring of power-of-two capacity, grown by doubling, never
// shrunk: like the heap's vector, it allocates only when it grows. A fiber
// adds its own timer on its own stack before it parks, and a compact
// fiber's is 2 KiB: a std::deque, tried first, called malloc for every 32
// timers added (its fast path measured no deeper than the rest of a park,
// but its slow paths are not bounded).

#ifndef GORT_SCHED_INTERNAL_TIMER_QUEUE_H_
#define GORT_SCHED_INTERNAL_TIMER_QUEUE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace gort {
namespace sched_internal {

template <typename T>
class TimerQueue {
 public:
  static constexpr std::int64_t kNone =
      std::numeric_limits<std::int64_t>::max();

  TimerQueue() = default;
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  bool empty() const { return heap_.empty() && run_size_ == 0; }
  // Timers queued.
  std::size_t size() const { return heap_.size() + run_size_ - run_dead_; }

  // The earliest `when`, or kNone when empty.
  std::int64_t EarliestWhen() const {
    std::int64_t when = heap_.empty() ? kNone : heap_[0].when;
    if (run_size_ != 0 && RunAt(0).when < when) when = RunAt(0).when;
    return when;
  }
  // A timer with the earliest `when`. Not empty().
  T* Earliest() const {
    if (run_size_ == 0) return heap_[0].timer;
    if (heap_.empty() || RunAt(0).when <= heap_[0].when) {
      return RunAt(0).timer;
    }
    return heap_[0].timer;
  }

  // Queues t (t->index == -1), by t->when. A deadline before the run's
  // last first moves up to kMaxDisplaced of the run's last entries that
  // are later than it to the heap, so that one far deadline (a long
  // timeout) does not send every later sleep to the heap until it fires.
  // Each entry moves at most once: amortized, that costs what putting it in
  // the heap in the first place would have.
  void Add(T* t) {
    for (int moved = 0; run_size_ != 0 && moved < kMaxDisplaced &&
                        RunAt(run_size_ - 1).when > t->when;
         ++moved) {
      const Entry last = RunAt(run_size_ - 1);
      PushHeap(last);  // first: if it throws, nothing has changed
      DropRunBack();
    }
    if ((run_size_ == 0 || t->when >= RunAt(run_size_ - 1).when) &&
        run_size_ < kRunPosMask) {  // positions stay unambiguous
      if (run_size_ == ring_.size()) GrowRun();
      t->index = RunIndex(run_head_ + static_cast<std::uint32_t>(run_size_));
      RunAt(run_size_) = Entry{t->when, t};
      ++run_size_;
      return;
    }
    PushHeap(Entry{t->when, t});
  }

  // Takes t (queued here) out; t->index becomes -1.
  void Remove(T* t) {
    if (t->index >= 0) {
      RemoveFromHeap(t);
    } else {
      RemoveFromRun(t);
    }
    t->index = -1;
  }

  // For tests.
  std::size_t heap_size() const { return heap_.size(); }
  void StartRunAtForTesting(std::uint32_t pos) {  // while the run is empty
    if (run_size_ == 0) run_head_ = pos;
  }
  std::size_t run_size() const { return run_size_; }
  std::size_t run_dead() const { return run_dead_; }

 private:
  // `when` is kept in the arrays themselves: sifting and the run's checks
  // compare without touching the timers.
  struct Entry {
    std::int64_t when;
    T* timer;  // null: removed from the middle of the run
  };

  // Run positions are counted modulo 2^30 (run_head_ + i is entry i's):
  // unambiguous while the run holds fewer than 2^30 entries, which Add
  // keeps it to (past that, timers go to the heap). Entry i sits
  // in ring_[(run_head_ + i) & (ring_.size() - 1)]: a power of two below
  // 2^30 divides it, so an entry's slot follows from its position, and
  // growing the ring moves entries without renumbering them.
  static constexpr std::uint32_t kRunPosMask = (1u << 30) - 1;
  Entry& RunAt(std::size_t i) {
    return ring_[(run_head_ + i) & (ring_.size() - 1)];
  }
  const Entry& RunAt(std::size_t i) const {
    return ring_[(run_head_ + i) & (ring_.size() - 1)];
  }
  void GrowRun() {
    std::vector<Entry> bigger(ring_.empty() ? 64 : 2 * ring_.size());
    for (std::size_t i = 0; i < run_size_; ++i) {
      bigger[(run_head_ + i) & (bigger.size() - 1)] = RunAt(i);
    }
    ring_.swap(bigger);
  }
  static int RunIndex(std::uint32_t pos) {
    return -2 - static_cast<int>(pos & kRunPosMask);
  }
  std::size_t RunOffset(int index) const {
    return (static_cast<std::uint32_t>(-2 - index) - run_head_) & kRunPosMask;
  }

  // Sift with a hole: each level moves one entry and rewrites its timer's
  // index; the sifted entry is written once, at the end.
  void Up(int i) {
    const Entry e = heap_[i];
    while (i > 0) {
      const int parent = (i - 1) / 4;
      if (heap_[parent].when <= e.when) break;
      Place(i, heap_[parent]);
      i = parent;
    }
    Place(i, e);
  }
  void Down(int i) {
    const int n = static_cast<int>(heap_.size());
    const Entry e = heap_[i];
    for (;;) {
      const int first = 4 * i + 1;
      if (first >= n) break;
      int m = first;
      const int end = std::min(first + 4, n);
      for (int c = first + 1; c < end; ++c) {
        if (heap_[c].when < heap_[m].when) m = c;
      }
      if (heap_[m].when >= e.when) break;
      Place(i, heap_[m]);
      i = m;
    }
    Place(i, e);
  }
  void Place(int i, const Entry& e) {
    heap_[i] = e;
    e.timer->index = i;
  }

  static constexpr int kMaxDisplaced = 4;

  void PushHeap(const Entry& e) {
    heap_.push_back(e);
    Up(static_cast<int>(heap_.size()) - 1);  // sets e.timer->index
  }

  // Drops the run's first entry (and the removed ones behind it).
  void DropRunFront() {
    ++run_head_;
    --run_size_;
    while (run_size_ != 0 && RunAt(0).timer == nullptr) {
      ++run_head_;
      --run_size_;
      --run_dead_;
    }
  }

  // Drops the run's last entry (and the removed ones before it).
  void DropRunBack() {
    --run_size_;
    while (run_size_ != 0 && RunAt(run_size_ - 1).timer == nullptr) {
      --run_size_;
      --run_dead_;
    }
  }

  void RemoveFromHeap(T* t) {
    const int i = t->index;
    const int last = static_cast<int>(heap_.size()) - 1;
    if (i != last) Place(i, heap_[last]);
    heap_.pop_back();
    if (i < last) {
      Down(i);
      Up(i);
    }
  }

  void RemoveFromRun(T* t) {
    const std::size_t off = RunOffset(t->index);
    if (off == 0) {
      DropRunFront();
    } else if (off == run_size_ - 1) {
      DropRunBack();
    } else {
      RunAt(off).timer = nullptr;
      if (++run_dead_ > 64 && run_dead_ > run_size_ / 2) CompactRun();
    }
  }

  // Rebuilds the run without its removed entries, in place (nothing to
  // allocate): each live entry moves forward to the next free offset, and
  // its timer takes the new position.
  void CompactRun() {
    std::size_t live = 0;
    for (std::size_t i = 0; i < run_size_; ++i) {
      const Entry e = RunAt(i);
      if (e.timer == nullptr) continue;
      RunAt(live) = e;
      e.timer->index = RunIndex(run_head_ + static_cast<std::uint32_t>(live));
      ++live;
    }
    run_size_ = live;
    run_dead_ = 0;
  }

  std::vector<Entry> heap_;
  std::vector<Entry> ring_;     // the run: non-decreasing `when`
  std::uint32_t run_head_ = 0;  // the run's first entry's position
  std::size_t run_size_ = 0;    // entries in the run, removed ones included
  std::size_t run_dead_ = 0;    // removed entries still in the run
};

}  // namespace sched_internal
}  // namespace gort

#endif  // GORT_SCHED_INTERNAL_TIMER_QUEUE_H_
