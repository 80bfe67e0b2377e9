#include "chan/select.h"

#include <algorithm>
#include <cstdint>
#include <memory>

// Invariants (compare Go's runtime/select.go):
//  - A select first tries its cases one by one, each under its own lock
//    (pass 0). Only if none is ready does it lock every channel, in address
//    order (each distinct channel once), poll again and queue its waiters
//    under those locks, so no case can become ready unnoticed between the
//    poll and the queueing; locking in one global order means two selects
//    that share channels cannot deadlock. A non-blocking select with two or
//    more non-nil cases also polls again under all locks before it reports
//    that none was ready, so "none" held at one instant (as in Go).
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

// 64 random bits from a per-thread xorshift64* generator (Marsaglia's
// xorshift with a multiplied output; only the high bits are used, its
// strong half). Not inlined, so that a fiber that moved to another thread
// never uses a stale TLS address.
__attribute__((noinline)) std::uint64_t CheapRand64() {
  thread_local std::uint64_t state = 0;
  if (state == 0) {
    state = reinterpret_cast<std::uintptr_t>(&state) * 0x9E3779B97F4A7C15ull |
            1;
  }
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state * 0x2545F4914F6CDD1Dull;
}

// Writes a uniformly random permutation of 0..n-1 to poll (inside-out
// Fisher-Yates). Each index j in [0, i] is the high word of u * (i + 1),
// and the low word is the randomness left for the next draw (Lemire's
// multiply-shift, batched as in Brackett-Rozinsky and Lemire, "Batched
// Ranged Random Integer Generation", 2024): one generator call serves
// every draw while the product of the bounds stays below 2^32, so the
// bias stays below 2^-32, and a two-case select costs one call.
void RandomOrder(int* poll, int n) {
  std::uint64_t u = CheapRand64();
  std::uint64_t used = 1;  // product of the bounds drawn from u so far
  poll[0] = 0;
  for (int i = 1; i < n; ++i) {
    const std::uint64_t bound = static_cast<std::uint64_t>(i) + 1;
    if (used > (std::uint64_t{1} << 32) / bound) {
      u = CheapRand64();
      used = 1;
    }
    used *= bound;
    const unsigned __int128 m = static_cast<unsigned __int128>(u) * bound;
    const int j = static_cast<int>(m >> 64);
    u = static_cast<std::uint64_t>(m);
    poll[i] = i;
    std::swap(poll[i], poll[j]);
  }
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

// The queue a waiter for case `sc` goes in.
WaitQueue& QueueOf(const SelectCase& sc) {
  return sc.is_send ? sc.chan->sendq() : sc.chan->recvq();
}

// Completes case `sc` if it is ready, with its channel locked by the
// caller: 1 if it fired (*wake: whom to unpark after unlocking), 0 if it is
// not ready, -1 for a send on a closed channel.
__attribute__((always_inline)) inline int TryLocked(SelectCase& sc,
                                                bool* received,
                                                ParkTicket* wake) {
  ChanCore* c = sc.chan;
  if (sc.is_send) {
    if (c->closed()) return -1;
    if (!c->TrySendLocked(sc.elem, sc.put, wake)) return 0;
    *received = false;
  } else if (c->TryRecvLocked(sc.elem, wake)) {
    *received = true;
  } else if (c->closed()) {
    *received = false;
  } else {
    return 0;
  }
  return 1;
}

// Fires the first ready case in poll order with every channel of `locks`
// locked by the caller. If one fired, unlocks them all, unparks whom the
// case woke and returns its index; else returns -1 with the locks held.
int PollAllLocked(SelectCase* cases, int n, const int* poll, Locks& locks,
                  bool* received) {
  for (int k = 0; k < n; ++k) {
    const int i = poll[k];
    if (cases[i].chan == nullptr) continue;
    ParkTicket wake;
    const int r = TryLocked(cases[i], received, &wake);
    if (r == 0) continue;
    locks.UnlockAll();
    if (r < 0) ThrowChanError(ChanErrorKind::kSendOnClosed);
    if (wake) Unpark(wake);
    return i;
  }
  return -1;
}

// A non-blocking poll of every case at one instant: all locks held.
int PollLocked(SelectCase* cases, int n, const int* poll, Locks& locks,
               bool* received) {
  locks.LockAll();
  const int i = PollAllLocked(cases, n, poll, locks, received);
  if (i < 0) locks.UnlockAll();
  return i;
}

}  // namespace

int SelectImpl(SelectCase* cases, int n, bool block, bool* received) {
  // Poll order: a random permutation (Fisher-Yates), so that among ready
  // cases each is chosen with equal probability.
  SmallArray<int, 8> poll(n);
  if (n > 1) {
    RandomOrder(poll.data(), n);
  } else if (n == 1) {
    poll[0] = 0;  // one case: nothing to draw
  }
  // Pass 0: try the cases one at a time, in poll order, each under its own
  // lock only. A ready case fires here with one lock taken instead of all
  // of them: the select behaves as if it had polled that case first, at the
  // instant it looked, which Go's semantics allow; when several are ready
  // throughout, the random order picks each equally often. "None ready" is
  // answered only after a poll under all locks (pass 1, or PollLocked).
  for (int k = 0; k < n; ++k) {
    const int i = poll[k];
    ChanCore* c = cases[i].chan;
    if (c == nullptr || c->ObviouslyNotReady(cases[i].is_send)) continue;
    ParkTicket wake;
    c->lock_.lock();
    const int r = TryLocked(cases[i], received, &wake);
    c->lock_.unlock();
    if (r < 0) ThrowChanError(ChanErrorKind::kSendOnClosed);
    if (r > 0) {
      if (wake) Unpark(wake);
      return i;
    }
  }

  // Lock order: distinct non-nil channels by address.
  SmallArray<ChanCore*, 8> chans(n);
  int nchans = 0;
  for (int i = 0; i < n; ++i) {
    if (cases[i].chan != nullptr) chans[nchans++] = cases[i].chan;
  }
  // One non-nil case: pass 0 looked at it once, atomically. Two cases on
  // one channel (a send and a receive) were looked at twice: poll again.
  if (!block && nchans <= 1) return -1;
  std::sort(chans.data(), chans.data() + nchans);
  nchans = static_cast<int>(std::unique(chans.data(), chans.data() + nchans) -
                            chans.data());
  Locks locks{chans.data(), nchans};
  if (!block) {
    // Pass 0 looked at the channels one at a time, so "none was ready" may
    // not have held at any single instant (A filled after we looked at it,
    // B drained before). Go's selectgo polls under all locks; so do we
    // before answering "none" for several channels.
    return PollLocked(cases, n, poll.data(), locks, received);
  }
  // The waiter records are made before the locks are taken: for more than
  // 8 cases they come from the heap, and nothing may throw under the locks.
  Parker* const self = Parker::Current();
  SelectState state;
  SmallArray<Waiter, 8> waiters(n);

  // Pass 1: with every lock held, is a case ready now? (Then none can
  // become ready before our waiters are queued.)
  locks.LockAll();
  if (const int i = PollAllLocked(cases, n, poll.data(), locks, received);
      i >= 0) {
    return i;
  }
  if (nchans == 0) {
    // select {} or only nil channels: forever.
    while (Park(self->Prepare(), WaitReason::kSelectNoCases) !=
           ParkResult::kTimedOut) {
    }
  }

  // Pass 2: queue a waiter on every channel, then park.
  const ParkTicket ticket = self->Prepare();
  for (int i = 0; i < n; ++i) {
    SelectCase& sc = cases[i];
    if (sc.chan == nullptr) continue;
    Waiter& w = waiters[i];
    w.ticket = ticket;
    w.elem = sc.elem;
    w.put = sc.put;
    w.select = &state;
    w.case_index = i;
    QueueOf(sc).PushBack(&w);
  }
  Park(ticket, WaitReason::kSelect, &UnlockAllCommit, &locks);

  // Pass 3: one case fired (its completer set state.fired and the waiter's
  // success before unparking us); withdraw the others.
  locks.LockAll();
  for (int i = 0; i < n; ++i) {
    if (cases[i].chan == nullptr) continue;
    QueueOf(cases[i]).RemoveIfQueued(&waiters[i]);
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

int SelectSet::Run(bool block) {
  descs_.clear();
  for (auto& c : cases_) descs_.push_back(c->Describe());
  bool received = false;
  const int fired =
      chan_internal::SelectImpl(descs_.data(), size(), block, &received);
  if (fired >= 0) cases_[fired]->Finish(received);
  return fired;
}

}  // namespace gort
