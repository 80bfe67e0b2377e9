#include "sync/err_group.h"

#include <exception>
#include <mutex>
#include <utility>

#include "fiber/internal/fatal.h"
#include "sched/sched.h"

// Invariants:
//  - wg_ counts the functions started and not yet finished. Its Add and Done
//    are made under mu_: a Go racing with the last Done can then never hit
//    WaitGroup's release window ("Add called concurrently with Wait"). A
//    fiber's last touch of *this is the mu_.Unlock() after its wg_.Done(),
//    after its function (and everything the function captured) has been
//    destroyed and its token returned. Wait and the destructor lock mu_
//    after wg_.Wait() returns, so they never return while a finishing fiber
//    still holds mu_ (and a Mutex may be destroyed while the Unlock that let
//    the destroyer in is returning): the group may go away as soon as Wait
//    (or the destructor) returns.
//  - waits_ counts the Wait calls in progress; a Wait's last touch of *this
//    is waits_.Done(), and the destructor waits for waits_: so the group may
//    be destroyed as soon as one Wait returns, even while another task's
//    Wait is still returning (cancelling, reading err_).
//  - With a limit, sem_ holds one token per active fiber: taken (sent) by
//    Go/TryGo before wg_.Add, returned (received) by the fiber before
//    wg_.Done. Each fiber keeps its own handle to the channel it took its
//    token from, so SetLimit never races with a finishing fiber.
//  - mu_ guards has_err_ and err_; err_ is set once, by the first failing
//    function, which then cancels the context (outside mu_).

namespace gort {

ErrGroup::ErrGroup(const Context& parent) {
  auto [ctx, cancel] = WithCancel(parent);
  ctx_ = std::move(ctx);
  cancel_ = std::move(cancel);
}

ErrGroup::~ErrGroup() {
  wg_.Wait();
  // The last fiber may still hold mu_ after its Done: wait for its Unlock.
  { std::lock_guard<Mutex> l(mu_); }
  cancel_();
  // Another task's Wait may still be returning (cancelling, reading err_)
  // after the one that let our caller destroy us: wait for it.
  waits_.Wait();
}

void ErrGroup::Finished() {
  std::lock_guard<Mutex> l(mu_);
  wg_.Done();
}

void ErrGroup::SetError(absl::Status status) {
  {
    std::lock_guard<Mutex> l(mu_);
    if (has_err_) return;
    has_err_ = true;
    err_ = std::move(status);
  }
  cancel_();
}

void ErrGroup::Start(Func fn, const DoneChan& token,
                     std::source_location site) {
  {
    std::lock_guard<Mutex> l(mu_);
    wg_.Add(1);
  }
  gort::Go(
      [this, token, fn = std::move(fn)]() mutable {
        // Runs last, even if the fiber ends by gort::Exit() (which unwinds
        // with an exception of a private type): returns the token, then
        // tells Wait.
        struct Finish {
          ErrGroup* g;
          const DoneChan& token;
          bool release = true;
          ~Finish() {
            if (!release) return;
            if (!token.nil()) token.TryRecv();  // never blocks: ours is there
            g->Finished();                      // the last touch of *g
          }
        } finish{this, token};
        Func f = std::move(fn);  // destroyed before `finish`
        absl::Status s;
        try {
          s = std::move(f)();
        } catch (const std::exception&) {
          // Fatal for the process (the fiber's handler reports it): don't
          // let Wait return meanwhile, as if the function had finished.
          finish.release = false;
          throw;
        }
        if (!s.ok()) SetError(std::move(s));
      },
      site);
}

void ErrGroup::Go(Func fn, std::source_location site) {
  DoneChan token = sem_;
  if (!token.nil()) token.Send(std::monostate{});  // waits at the limit
  Start(std::move(fn), token, site);
}

bool ErrGroup::TryGo(Func fn, std::source_location site) {
  DoneChan token = sem_;
  if (!token.nil() && !token.TrySend(std::monostate{})) return false;
  Start(std::move(fn), token, site);
  return true;
}

absl::Status ErrGroup::Wait() {
  waits_.Add(1);
  wg_.Wait();
  cancel_();
  absl::Status err;
  {
    // Also waits for the last fiber's Finished() to unlock mu_.
    std::lock_guard<Mutex> l(mu_);
    err = err_;
  }
  waits_.Done();  // our last access: the destructor waits for it
  return err;
}

void ErrGroup::SetLimit(int n) {
  if (n < 0) {
    sem_ = DoneChan();
    return;
  }
  if (const std::size_t active = sem_.Len(); active != 0) {
    fiber_internal::Fatal(
        "errgroup: modify limit while %zu fibers in the group are still "
        "active",
        active);
  }
  sem_ = MakeChan<std::monostate>(static_cast<std::size_t>(n));
}

}  // namespace gort
