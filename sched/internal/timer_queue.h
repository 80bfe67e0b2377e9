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
// is rebuilt without them, so removal stays O(1) amortized and the run at
// most about twice the size of what it holds. The run's first and last
// entries are never removed ones.

#ifndef GORT_SCHED_INTERNAL_TIMER_QUEUE_H_
#define GORT_SCHED_INTERNAL_TIMER_QUEUE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
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

  bool empty() const { return heap_.empty() && run_.empty(); }
  // Timers queued.
  std::size_t size() const { return heap_.size() + run_.size() - run_dead_; }

  // The earliest `when`, or kNone when empty.
  std::int64_t EarliestWhen() const {
    std::int64_t when = heap_.empty() ? kNone : heap_[0].when;
    if (!run_.empty() && run_.front().when < when) when = run_.front().when;
    return when;
  }
  // A timer with the earliest `when`. Not empty().
  T* Earliest() const {
    if (run_.empty()) return heap_[0].timer;
    if (heap_.empty() || run_.front().when <= heap_[0].when) {
      return run_.front().timer;
    }
    return heap_[0].timer;
  }

  // Queues t (t->index == -1), by t->when.
  void Add(T* t) {
    if (run_.empty() || t->when >= run_.back().when) {
      t->index = RunIndex(run_head_ + static_cast<std::uint32_t>(run_.size()));
      run_.push_back(Entry{t->when, t});
      return;
    }
    t->index = static_cast<int>(heap_.size());
    heap_.push_back(Entry{t->when, t});
    Up(t->index);
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
    if (run_.empty()) run_head_ = pos;
  }
  std::size_t run_size() const { return run_.size(); }
  std::size_t run_dead() const { return run_dead_; }

 private:
  // `when` is kept in the arrays themselves: sifting and the run's checks
  // compare without touching the timers.
  struct Entry {
    std::int64_t when;
    T* timer;  // null: removed from the middle of the run
  };

  // Run positions are counted modulo 2^30 (run_head_ + i is entry i's):
  // unambiguous while the run holds fewer than 2^30 entries.
  static constexpr std::uint32_t kRunPosMask = (1u << 30) - 1;
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
    if (off == 0) {  // with the removed entries behind it
      run_.pop_front();
      ++run_head_;
      while (!run_.empty() && run_.front().timer == nullptr) {
        run_.pop_front();
        ++run_head_;
        --run_dead_;
      }
    } else if (off == run_.size() - 1) {  // with the removed ones before it
      run_.pop_back();
      while (!run_.empty() && run_.back().timer == nullptr) {
        run_.pop_back();
        --run_dead_;
      }
    } else {
      run_[off].timer = nullptr;
      if (++run_dead_ > 64 && run_dead_ > run_.size() / 2) CompactRun();
    }
  }

  // Rebuilds the run without its removed entries, renumbered from 0.
  void CompactRun() {
    std::deque<Entry> live;
    for (const Entry& e : run_) {
      if (e.timer == nullptr) continue;
      e.timer->index = RunIndex(static_cast<std::uint32_t>(live.size()));
      live.push_back(e);
    }
    run_.swap(live);
    run_head_ = 0;
    run_dead_ = 0;
  }

  std::vector<Entry> heap_;
  std::deque<Entry> run_;       // non-decreasing `when`
  std::uint32_t run_head_ = 0;  // run_.front()'s position
  std::size_t run_dead_ = 0;    // removed entries still in run_
};

}  // namespace sched_internal
}  // namespace gort

#endif  // GORT_SCHED_INTERNAL_TIMER_QUEUE_H_
