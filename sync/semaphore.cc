#include "sync/semaphore.h"

#include <mutex>

#include "chan/select.h"
#include "fiber/internal/fatal.h"

// Invariants:
//  - mu_ guards cur_, the waiter queue (head_..tail_) and every queued
//    Waiter's `granted`. 0 <= cur_ <= size_ whenever mu_ is free (a Release
//    that would break it is fatal).
//  - FIFO: no one takes units while the queue is non-empty except the head
//    of the queue, granted by NotifyWaitersAndUnlock(). After any operation
//    either the queue is empty or its head does not fit (size_ - cur_ <
//    head_->n); so every queued waiter is waiting for units, not for a
//    wake-up.
//  - A waiter is granted (units added to cur_, unlinked, `granted` set,
//    linked into the granter's list) or removed by its own task after ctx
//    is done, both under mu_, never both. The granter closes each `ready`
//    (through a copy of the handle, read with the next link before the
//    close) only after releasing mu_, and touches neither that record nor
//    the semaphore afterwards. A Waiter record lives on its task's stack
//    until its `ready` is closed (a granted waiter whose ctx is done waits
//    for that too); once it returns, its caller may destroy the semaphore.

namespace gort {

using fiber_internal::Fatal;

namespace {

void CheckWeight(std::int64_t n) {
  if (n < 0) {
    Fatal("semaphore: negative weight %lld", static_cast<long long>(n));
  }
}

}  // namespace

Semaphore::Semaphore(std::int64_t n) : size_(n) {
  if (n < 0) Fatal("semaphore: negative size %lld", static_cast<long long>(n));
}

void Semaphore::Unlink(Waiter* w) {
  (w->prev != nullptr ? w->prev->next : head_) = w->next;
  (w->next != nullptr ? w->next->prev : tail_) = w->prev;
  w->prev = w->next = nullptr;
}

void Semaphore::NotifyWaitersAndUnlock() {
  // Grantees' channels are closed only after mu_ is released: a woken
  // waiter may return at once and its caller destroy the semaphore, so the
  // last touch of *this comes before the first Close. The grantees are
  // linked through their records (nothing allocates under mu_); a record
  // lives until its `ready` is closed, even on Acquire's cancel path, so
  // each one's link and handle are read before it is closed, never after.
  Waiter* granted = nullptr;
  Waiter** link = &granted;
  while (Waiter* w = head_) {
    // Not enough for the head: stop, even if a later one would fit (FIFO;
    // otherwise a large waiter could be starved by small ones).
    if (size_ - cur_ < w->n) break;
    cur_ += w->n;
    Unlink(w);
    w->granted = true;
    *link = w;
    link = &w->granted_next;
  }
  mu_.unlock();
  while (granted != nullptr) {
    DoneChan ready = granted->ready;  // a copy: the record may go next
    granted = granted->granted_next;
    ready.Close();
  }
}

absl::Status Semaphore::Acquire(const Context& ctx, std::int64_t n) {
  CheckWeight(n);
  const DoneChan& done = ctx.Done();
  mu_.lock();
  // A context that is already done wins, even if units are free (x/sync).
  if (absl::Status err = ctx.Err(); !err.ok()) {
    mu_.unlock();
    return err;
  }
  if (size_ - cur_ >= n && head_ == nullptr) {
    cur_ += n;
    mu_.unlock();
    return absl::OkStatus();
  }
  if (n > size_) {
    // Can never succeed: don't queue (it would block everyone behind it).
    mu_.unlock();
    done.Recv();  // nil for Background: for ever, as in Go
    return ctx.Err();
  }
  Waiter w;
  w.n = n;
  w.ready = MakeChan<std::monostate>();
  w.prev = tail_;
  (tail_ != nullptr ? tail_->next : head_) = &w;
  tail_ = &w;
  mu_.unlock();

  if (Select(Recv(w.ready), Recv(done)) == 0) {
    // Granted. Still report a context that is done by now (x/sync does):
    // the caller sees one consistent answer.
    if (absl::Status err = ctx.Err(); !err.ok()) {
      Release(n);
      return err;
    }
    return absl::OkStatus();
  }
  // ctx is done. We may have been granted meanwhile: then wait until the
  // granter has closed `ready` (it reads our record until then) and give
  // the units back. Else leave the queue, and let whoever fits now proceed
  // (we may have been what held the others back).
  mu_.lock();
  if (w.granted) {
    mu_.unlock();
    w.ready.Recv();
    Release(n);
    return ctx.Err();
  }
  Unlink(&w);
  NotifyWaitersAndUnlock();
  return ctx.Err();
}

bool Semaphore::TryAcquire(std::int64_t n) {
  CheckWeight(n);
  std::lock_guard<sched_internal::Lock> l(mu_);
  if (size_ - cur_ >= n && head_ == nullptr) {
    cur_ += n;
    return true;
  }
  return false;
}

void Semaphore::Release(std::int64_t n) {
  CheckWeight(n);
  mu_.lock();
  cur_ -= n;
  if (cur_ < 0) {
    mu_.unlock();
    Fatal("semaphore: released more than held");
  }
  NotifyWaitersAndUnlock();
}

std::int64_t Semaphore::HeldForTest() {
  std::lock_guard<sched_internal::Lock> l(mu_);
  return cur_;
}

int Semaphore::WaitersForTest() {
  std::lock_guard<sched_internal::Lock> l(mu_);
  int k = 0;
  for (Waiter* w = head_; w != nullptr; w = w->next) ++k;
  return k;
}

}  // namespace gort
