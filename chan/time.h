// gort/chan/time.h: Go's time.After, time.NewTimer, time.AfterFunc and
// time.NewTicker, as channels for select.
//
//   switch (gort::Select(gort::Recv(results, &r),
//                        gort::Recv(gort::After(absl::Seconds(1))))) {
//     case 0: ...; break;
//     case 1: /* timed out */ break;
//   }
//
//   gort::Ticker ticker(absl::Milliseconds(100));   // stopped when destroyed
//   for (;;) {
//     switch (gort::Select(gort::Recv(ticker.C()), gort::Recv(done))) { ... }
//   }
//
// Timers are kept in one heap served by a timer thread that gort starts on
// first use; it sleeps until the earliest timer. A timer's channel has
// capacity 1 and the timer thread never blocks on it: a tick that finds the
// channel full is dropped (Go's ticker does the same for slow receivers).
// AfterFunc's function runs on that thread: it must be short, must not
// block (start a fiber with gort::Go from it to do more) and must not throw
// (an exception from it is a fatal error). Only //sched:park
// is needed: these work with or without the scheduler.
//
// The timer thread is not part of gort's runtime and outlives
// gort::Shutdown(): stop the AfterFunc timers whose functions call
// gort::Go before shutting the runtime down. One that fires during
// Shutdown races with it, as any thread calling Go() then does; one that
// fires after it starts the runtime again, with default options.

#ifndef GORT_CHAN_TIME_H_
#define GORT_CHAN_TIME_H_

#include <memory>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "chan/chan.h"

namespace gort {

namespace chan_internal {
struct TimerEntry;
}

// A single-shot timer (Go's *time.Timer). Copies refer to the same timer.
// Destroying the handle does not stop it.
class Timer {
 public:
  Timer() = default;  // no timer: Stop and Reset return false
  // The channel that receives the time when the timer fires (nil for timers
  // made by AfterFunc).
  const Chan<absl::Time>& C() const { return ch_; }
  // Prevents the timer from firing. Returns true if that stopped it, false
  // if it had already fired or been stopped. As in Go, a value that was
  // already sent to C() is not taken back.
  bool Stop();
  // Makes the timer fire after `d` from now. Returns whether it was still
  // pending (it is re-armed either way).
  bool Reset(absl::Duration d);

 private:
  friend Timer NewTimer(absl::Duration d);
  friend Timer AfterFunc(absl::Duration d, absl::AnyInvocable<void()> fn);
  std::shared_ptr<chan_internal::TimerEntry> entry_;
  Chan<absl::Time> ch_;
};

// time.NewTimer: C() receives the current time once, after `d`.
Timer NewTimer(absl::Duration d);

// time.AfterFunc: calls fn on gort's timer thread after `d` (see above).
Timer AfterFunc(absl::Duration d, absl::AnyInvocable<void()> fn);

// time.After: a channel that receives the time once, after `d`. The timer
// cannot be stopped: in loops, prefer NewTimer and Stop.
Chan<absl::Time> After(absl::Duration d);

// time.NewTicker: C() receives the time every `period`. A period <= 0
// (here or in Reset) is a fatal error ("fatal: gort::Ticker: non-positive
// period ..."), as Go panics. Stopped when destroyed. Movable, not
// copyable.
class Ticker {
 public:
  explicit Ticker(absl::Duration period);
  Ticker(Ticker&&) noexcept = default;
  Ticker& operator=(Ticker&&) noexcept;
  ~Ticker();

  const Chan<absl::Time>& C() const { return ch_; }
  // Stops the ticks. One tick may already be in C(), and one that the timer
  // thread had already taken may still arrive (as with Go's Stop).
  void Stop();
  // Stops and restarts with a new period; the next tick is `period` from
  // now.
  void Reset(absl::Duration period);

 private:
  std::shared_ptr<chan_internal::TimerEntry> entry_;
  Chan<absl::Time> ch_;
};

namespace chan_internal {
// Timers waiting in the heap: for tests.
std::size_t PendingTimersForTest();
}  // namespace chan_internal

}  // namespace gort

#endif  // GORT_CHAN_TIME_H_
