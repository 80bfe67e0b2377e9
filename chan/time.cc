#include "chan/time.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "fiber/internal/fatal.h"
#include "sched/internal/futex.h"

// Invariants:
//  - g_queue->lock protects the heap and every TimerEntry's `when`,
//    `period` and `index`. An entry is in the heap iff index >= 0; the heap
//    holds a reference, so a pending entry outlives its handles.
//  - The timer thread is the only caller of entries' functions, so a
//    function never runs twice at once. It runs without the lock held;
//    Stop() can therefore return while a tick that was already taken off the
//    heap is being delivered (as in Go).
//  - The thread sleeps on `wake` (a futex word) until the earliest `when`
//    it saw; Add bumps `wake` when it puts in an earlier timer.

namespace gort {
namespace chan_internal {

struct TimerEntry {
  std::int64_t when = 0;    // MonoNow() ns
  std::int64_t period = 0;  // > 0 for tickers
  std::ptrdiff_t index = -1;
  absl::AnyInvocable<void()> fn;
};

namespace {

using sched_internal::kNoDeadline;

std::int64_t WhenAfter(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  const std::int64_t deadline = DeadlineAfter(d);
  return deadline == 0 ? MonoNow() : deadline;
}

class TimerQueue {
 public:
  // Puts `e` (not in the heap) in at e->when.
  void AddLocked(std::shared_ptr<TimerEntry> e) {
    e->index = static_cast<std::ptrdiff_t>(heap_.size());
    heap_.push_back(std::move(e));
    SiftUp(heap_.size() - 1);
    if (heap_[0]->when < sleeping_until_) {
      wake_.fetch_add(1, std::memory_order_release);
      sched_internal::FutexWake(&wake_);
    }
  }
  // Takes `e` out of the heap if it is there; returns whether it was.
  bool RemoveLocked(TimerEntry* e) {
    if (e->index < 0) return false;
    const std::size_t i = static_cast<std::size_t>(e->index);
    const std::size_t last = heap_.size() - 1;
    if (i != last) {
      Swap(i, last);
    }
    heap_.back()->index = -1;
    heap_.pop_back();
    if (i < heap_.size()) {
      SiftDown(i);
      SiftUp(i);
    }
    return true;
  }
  std::size_t size() {
    std::lock_guard<sched_internal::Lock> l(lock);
    return heap_.size();
  }

  void EnsureThread() {
    std::call_once(started_, [this] { std::thread([this] { Run(); }).detach(); });
  }

  sched_internal::Lock lock;

 private:
  bool Less(std::size_t a, std::size_t b) const {
    return heap_[a]->when < heap_[b]->when;
  }
  void Swap(std::size_t a, std::size_t b) {
    std::swap(heap_[a], heap_[b]);
    heap_[a]->index = static_cast<std::ptrdiff_t>(a);
    heap_[b]->index = static_cast<std::ptrdiff_t>(b);
  }
  void SiftUp(std::size_t i) {
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!Less(i, parent)) break;
      Swap(i, parent);
      i = parent;
    }
  }
  void SiftDown(std::size_t i) {
    for (;;) {
      std::size_t m = i;
      const std::size_t l = 2 * i + 1, r = l + 1;
      if (l < heap_.size() && Less(l, m)) m = l;
      if (r < heap_.size() && Less(r, m)) m = r;
      if (m == i) return;
      Swap(i, m);
      i = m;
    }
  }

  [[noreturn]] void Run() {
    std::vector<std::shared_ptr<TimerEntry>> due;
    for (;;) {
      lock.lock();
      const std::int64_t now = MonoNow();
      while (!heap_.empty() && heap_[0]->when <= now) {
        std::shared_ptr<TimerEntry> e = heap_[0];
        RemoveLocked(e.get());
        if (e->period > 0) {
          // Next tick on the period grid after now (drops missed ticks),
          // saturating: a period of years must not overflow.
          const std::int64_t missed = (now - e->when) / e->period;
          if (missed >= (kNoDeadline - e->when) / e->period - 1) {
            e->when = kNoDeadline;
          } else {
            e->when += e->period * (1 + missed);
          }
          if (e->when != kNoDeadline) AddLocked(e);
        }
        due.push_back(std::move(e));
      }
      if (!due.empty()) {
        lock.unlock();
        for (auto& e : due) Invoke(*e);
        due.clear();
        continue;
      }
      sleeping_until_ = heap_.empty() ? kNoDeadline : heap_[0]->when;
      const std::uint32_t seq = wake_.load(std::memory_order_acquire);
      const std::int64_t until = sleeping_until_;
      lock.unlock();
      sched_internal::FutexWait(&wake_, seq, until);
      lock.lock();
      sleeping_until_ = std::numeric_limits<std::int64_t>::min();
      lock.unlock();
    }
  }

  // Runs a timer's function. It must not throw: there is nobody to catch
  // it on the timer thread, so an exception is a fatal error that says so.
  static void Invoke(TimerEntry& e) {
    try {
      e.fn();
    } catch (const std::exception& ex) {
      fiber_internal::Fatal("gort::AfterFunc: the timer function threw: %s",
                            ex.what());
    } catch (...) {
      fiber_internal::Fatal("gort::AfterFunc: the timer function threw");
    }
  }

  std::vector<std::shared_ptr<TimerEntry>> heap_;
  // When the thread will wake by itself; min() while it is awake.
  std::int64_t sleeping_until_ = std::numeric_limits<std::int64_t>::min();
  std::atomic<std::uint32_t> wake_{0};
  std::once_flag started_;
};

TimerQueue& Queue() {
  static TimerQueue* q = new TimerQueue;  // never destroyed: its thread runs on
  return *q;
}

std::shared_ptr<TimerEntry> StartTimer(std::int64_t when, std::int64_t period,
                                       absl::AnyInvocable<void()> fn) {
  auto e = std::make_shared<TimerEntry>();
  e->when = when;
  e->period = period;
  e->fn = std::move(fn);
  TimerQueue& q = Queue();
  q.EnsureThread();
  std::lock_guard<sched_internal::Lock> l(q.lock);
  q.AddLocked(e);
  return e;
}

// The function of a channel timer: a non-blocking send of the time.
absl::AnyInvocable<void()> SendTime(Chan<absl::Time> ch) {
  return [ch = std::move(ch)] {
    try {
      ch.TrySend(absl::Now());
    } catch (const ChanError&) {
      // Somebody closed the timer's channel: nothing to deliver to.
    }
  };
}

std::int64_t PeriodNs(absl::Duration period) {
  if (period <= absl::ZeroDuration()) {
    fiber_internal::Fatal("gort::Ticker: non-positive period %s",
                          absl::FormatDuration(period).c_str());
  }
  return std::max<std::int64_t>(1, absl::ToInt64Nanoseconds(period));
}

}  // namespace

std::size_t PendingTimersForTest() { return Queue().size(); }

}  // namespace chan_internal

using chan_internal::Queue;
using chan_internal::StartTimer;

bool Timer::Stop() {
  if (entry_ == nullptr) return false;
  std::lock_guard<sched_internal::Lock> l(Queue().lock);
  return Queue().RemoveLocked(entry_.get());
}

bool Timer::Reset(absl::Duration d) {
  if (entry_ == nullptr) return false;
  std::lock_guard<sched_internal::Lock> l(Queue().lock);
  const bool was = Queue().RemoveLocked(entry_.get());
  entry_->when = chan_internal::WhenAfter(d);
  Queue().AddLocked(entry_);
  return was;
}

Timer NewTimer(absl::Duration d) {
  Timer t;
  t.ch_ = MakeChan<absl::Time>(1);
  t.entry_ = StartTimer(chan_internal::WhenAfter(d), 0,
                        chan_internal::SendTime(t.ch_));
  return t;
}

Timer AfterFunc(absl::Duration d, absl::AnyInvocable<void()> fn) {
  Timer t;
  t.entry_ = StartTimer(chan_internal::WhenAfter(d), 0, std::move(fn));
  return t;
}

Chan<absl::Time> After(absl::Duration d) { return NewTimer(d).C(); }

Ticker::Ticker(absl::Duration period) : ch_(MakeChan<absl::Time>(1)) {
  const std::int64_t p = chan_internal::PeriodNs(period);
  entry_ = StartTimer(chan_internal::WhenAfter(period), p,
                      chan_internal::SendTime(ch_));
}

Ticker& Ticker::operator=(Ticker&& other) noexcept {
  if (this != &other) {
    Stop();
    entry_ = std::move(other.entry_);
    ch_ = std::move(other.ch_);
  }
  return *this;
}

Ticker::~Ticker() { Stop(); }

void Ticker::Stop() {
  if (entry_ == nullptr) return;
  std::lock_guard<sched_internal::Lock> l(Queue().lock);
  Queue().RemoveLocked(entry_.get());
}

void Ticker::Reset(absl::Duration period) {
  if (entry_ == nullptr) return;
  const std::int64_t p = chan_internal::PeriodNs(period);
  std::lock_guard<sched_internal::Lock> l(Queue().lock);
  Queue().RemoveLocked(entry_.get());
  entry_->period = p;
  entry_->when = chan_internal::WhenAfter(period);
  Queue().AddLocked(entry_);
}

}  // namespace gort
