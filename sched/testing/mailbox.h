// A one-slot token box for //sched's own tests and benchmarks, built on the
// parking API only: Put() sets the token and readies a parked Take()r (into
// the caller's runnext when the caller is a fiber), Take() parks until there
// is a token and takes it. Two of them make a park/unpark ping-pong.
// Threading: Put() from any fiber or thread; one Take() at a time (there is
// a single waiter slot), from a fiber or a thread.

#ifndef GORT_SCHED_TESTING_MAILBOX_H_
#define GORT_SCHED_TESTING_MAILBOX_H_

#include <mutex>

#include "sched/internal/futex.h"
#include "sched/park.h"

namespace gort {
namespace testing {

class Mailbox {
 public:
  void Put() {
    ParkTicket t;
    {
      std::lock_guard<sched_internal::Lock> l(mu_);
      full_ = true;
      t = waiter_;
      waiter_ = {};
    }
    if (t) Unpark(t);
  }

  void Take() {
    for (;;) {
      mu_.lock();
      if (full_) {
        full_ = false;
        mu_.unlock();
        return;
      }
      waiter_ = Parker::Current()->Prepare();
      Park(waiter_, WaitReason::kPark,
           [](void* mu) {
             static_cast<sched_internal::Lock*>(mu)->unlock();
             return true;
           },
           &mu_);
    }
  }

 private:
  sched_internal::Lock mu_;
  bool full_ = false;
  ParkTicket waiter_;
};

}  // namespace testing
}  // namespace gort

#endif  // GORT_SCHED_TESTING_MAILBOX_H_
