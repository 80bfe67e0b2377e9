#include "chan/select.h"

#include <algorithm>
#include <cstdint>
#include <memory>

// Invariants (compare Go's runtime/select.go):
//  - Every channel of the select is locked, in address order (each distinct
//    channel once), while the select polls the cases and while it queues its
//    waiters; so the select sees one consistent state of all its channels,
//    and two selects that share channels cannot deadlock.
//  - A blocked select has one Waiter per non-nil case, all with the same
//    ticket and SelectState. The first completer claims SelectState::done
//    under its channel's lock, completes that case, and unparks the ticket;
//    completers that lose the claim drop the waiter they dequeued. After it
//    wakes, the select takes all locks again and removes its waiters that
//    are still queued, so none outlives the call.

namespace gort {
namespace chan_internal {
namespace {

// Fixed storage for small selects, the heap for large ones.
template <typename T, int kInline>
class SmallArray {
 public:
  explicit SmallArray(int n)
      : heap_(n > kInline ? std::make_unique<T[]>(n) : nullptr),
        data_(heap_ != nullptr ? heap_.get() : inline_) {}
  T& operator[](int i) { return data_[i]; }
  T* data() { return data_; }

 private:
  T inline_[kInline];
  std::unique_ptr<T[]> heap_;
  T* data_;
};

// A per-thread xorshift generator (Go's cheaprand). Not inlined, so that a
// fiber that moved to another thread never uses a stale TLS address.
__attribute__((noinline)) std::uint32_t CheapRand() {
  thread_local std::uint64_t state = 0;
  if (state == 0) {
    state = reinterpret_cast<std::uintptr_t>(&state) * 0x9E3779B97F4A7C15ull |
            1;
  }
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return static_cast<std::uint32_t>(state >> 32);
}

// Uniform in [0, n) (Lemire's multiply-shift; bias < n / 2^32).
int RandN(int n) {
  return static_cast<int>((std::uint64_t{CheapRand()} * n) >> 32);
}

struct Locks {
  ChanCore** chans;  // distinct, in address order
  int n;
  void LockAll() {
    for (int i = 0; i < n; ++i) chans[i]->lock_.lock();
  }
  void UnlockAll() {
    for (int i = n - 1; i >= 0; --i) chans[i]->lock_.unlock();
  }
};

bool UnlockAllCommit(void* arg) {
  static_cast<Locks*>(arg)->UnlockAll();
  return true;
}

}  // namespace

int SelectImpl(SelectCase* cases, int n, bool block, bool* received) {
  // Poll order: a random permutation (Fisher-Yates), so that among ready
  // cases each is chosen with equal probability.
  SmallArray<int, 8> poll(n);
  for (int i = 0; i < n; ++i) {
    const int j = RandN(i + 1);
    poll[i] = poll[j];
    poll[j] = i;
  }
  // Lock order: distinct non-nil channels by address.
  SmallArray<ChanCore*, 8> chans(n);
  int nchans = 0;
  for (int i = 0; i < n; ++i) {
    if (cases[i].chan != nullptr) chans[nchans++] = cases[i].chan;
  }
  std::sort(chans.data(), chans.data() + nchans);
  nchans = static_cast<int>(std::unique(chans.data(), chans.data() + nchans) -
                            chans.data());
  Locks locks{chans.data(), nchans};

  // Pass 1: is a case ready?
  locks.LockAll();
  for (int k = 0; k < n; ++k) {
    const int i = poll[k];
    SelectCase& sc = cases[i];
    ChanCore* c = sc.chan;
    if (c == nullptr) continue;
    ParkTicket wake;
    if (sc.is_send) {
      if (c->closed()) {
        locks.UnlockAll();
        ThrowChanError(ChanErrorKind::kSendOnClosed);
      }
      if (!c->TrySendLocked(sc.elem, sc.put, &wake)) continue;
      *received = false;
    } else if (c->TryRecvLocked(sc.elem, &wake)) {
      *received = true;
    } else if (c->closed()) {
      *received = false;
    } else {
      continue;
    }
    locks.UnlockAll();
    if (wake) Unpark(wake);
    return i;
  }
  if (!block) {
    locks.UnlockAll();
    return -1;
  }
  const ParkTicket ticket = Parker::Current()->Prepare();
  if (nchans == 0) {
    // select {} or only nil channels: forever.
    while (Park(ticket, WaitReason::kSelectNoCases) != ParkResult::kTimedOut) {
    }
  }

  // Pass 2: queue a waiter on every channel, then park.
  SelectState state;
  SmallArray<Waiter, 8> waiters(n);
  for (int i = 0; i < n; ++i) {
    SelectCase& sc = cases[i];
    if (sc.chan == nullptr) continue;
    Waiter& w = waiters[i];
    w.ticket = ticket;
    w.elem = sc.elem;
    w.put = sc.put;
    w.select = &state;
    w.case_index = i;
    (sc.is_send ? sc.chan->sendq() : sc.chan->recvq()).PushBack(&w);
  }
  Park(ticket, WaitReason::kSelect, &UnlockAllCommit, &locks);

  // Pass 3: one case fired (its completer set state.fired and the waiter's
  // success before unparking us); withdraw the others.
  locks.LockAll();
  for (int i = 0; i < n; ++i) {
    SelectCase& sc = cases[i];
    if (sc.chan != nullptr && waiters[i].queued) {
      (sc.is_send ? sc.chan->sendq() : sc.chan->recvq()).Remove(&waiters[i]);
    }
  }
  locks.UnlockAll();
  const int fired = state.fired;
  const bool success = waiters[fired].success;
  if (cases[fired].is_send) {
    if (!success) ThrowChanError(ChanErrorKind::kSendOnClosed);
    *received = false;
  } else {
    *received = success;
  }
  return fired;
}

}  // namespace chan_internal
}  // namespace gort
