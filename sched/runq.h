// gort/sched/runq.h: the per-P run queue of gort's scheduler, usable alone.
//
// A fixed-capacity, lock-free ring of T* owned by one thread (Go's P run
// queue, runtime/proc.go runqput/runqget/runqsteal), plus a `runnext` slot.
// Ownership is in the types, as in tokio: `Local` is the owner's handle and
// `Stealer` the handle any other thread may use; misuse is a compile error.
//
//   RunQueue<Task> q;
//   RunQueue<Task>::Local local = q.local();   // given to the owner only
//   RunQueue<Task>::Stealer thief = q.stealer();
//   local.Push(t, overflow);                   // owner
//   Task* t = local.Pop();                     // owner
//   thief.StealInto(other_local);              // any thread
//
// Threading rules:
//  - Push, PushNext and Pop are executed only by the owner thread, never
//    concurrently with each other; each may run in parallel with any number
//    of StealInto() calls from other threads.
//  - Push, unless the ring is full, performs no atomic read-modify-write:
//    it reads `head_` (acquire) and publishes with a store-release of
//    `tail_` (a full ring moves half of itself out with one CAS; PushNext
//    is one exchange, since thieves may take runnext). Pop takes an
//    element with one CAS on `head_`, because thieves consume from the same
//    end (the queue is FIFO for fairness, as Go's is), unless the queue is
//    in exclusive mode (below).
//  - Exclusive mode: while no thread can steal (a scheduler with one P),
//    the owner may switch the queue to exclusive mode, where Pop takes
//    elements with plain loads and stores, no read-modify-write, and
//    StealInto refuses (returns null). A CAS is the dearest part of a pop
//    (without it a yield took a fifth less on an Intel Xeon, 2026-11-28:
//    docs/sched.md). Entering is a Dekker handshake with the thieves, who
//    must announce themselves in a counter the owner reads (a seq_cst
//    read-modify-write before their first StealInto, its undo after their
//    last): TryEnterExclusive stores the flag (seq_cst),
//    then asks `no_thieves()` (seq_cst loads of that counter) and backs out
//    if a thief is announced. Either the owner sees the thief's
//    announcement, or the thief sees the flag: never neither.
//    LeaveExclusive (a seq_cst store) lets thieves back in.
// Memory ordering: everything the pusher did before Push(t) is visible to
// whoever later takes t, by Pop or by StealInto.

#ifndef GORT_SCHED_RUNQ_H_
#define GORT_SCHED_RUNQ_H_

#include <atomic>
#include <cstdint>

namespace gort {

template <typename T, std::uint32_t kCapacity = 256>
class RunQueue {
  static_assert(kCapacity >= 2 && (kCapacity & (kCapacity - 1)) == 0,
                "capacity must be a power of two");

 public:
  static constexpr std::uint32_t capacity() { return kCapacity; }

  // A batch of elements taken off a full ring, for the caller to move to a
  // shared queue (Go's runqputslow), oldest first.
  struct Overflow {
    T* items[kCapacity / 2 + 1];
    std::uint32_t count = 0;
  };

  class Stealer;

  // The owner's handle.
  class Local {
   public:
    // Adds t at the tail. If the ring is full, moves half of it plus t into
    // `overflow` (oldest first) and returns false; the caller must put those
    // elements somewhere else (the global queue). Executed only by the owner.
    bool Push(T* t, Overflow& overflow) {
      for (;;) {
        if (TryPush(t)) return true;
        std::uint32_t head = q_->head_.load(std::memory_order_acquire);
        std::uint32_t tail = q_->tail_.load(std::memory_order_relaxed);
        if (tail - head >= kCapacity &&
            TakeHalfForOverflow(head, tail, t, overflow)) {
          return false;
        }
        // A thief took some: there is room now.
      }
    }

    // Adds t at the tail if the ring has room; returns false (and leaves
    // the ring alone) if it is full. Executed only by the owner.
    bool TryPush(T* t) {
      // load-acquire: pairs with the CAS-release in Pop/StealInto, so the
      // slot we are about to overwrite has been read by its consumer.
      std::uint32_t head = q_->head_.load(std::memory_order_acquire);
      std::uint32_t tail = q_->tail_.load(std::memory_order_relaxed);
      if (tail - head >= kCapacity) return false;
      q_->buf_[tail % kCapacity].store(t, std::memory_order_relaxed);
      // store-release: pairs with the load-acquire of tail_ in Pop and
      // StealInto, publishing the slot and everything before the push.
      q_->tail_.store(tail + 1, std::memory_order_release);
      return true;
    }

    // Puts t in the runnext slot, so it runs before anything in the ring
    // (the task woken by the running task runs next: ping-pong stays hot).
    // Returns the task it displaced, if any, which the caller must Push.
    // Executed only by the owner.
    T* PushNext(T* t) {
      // Only the owner makes runnext non-null; thieves only take it (CAS to
      // null). So an empty runnext stays empty until our store, and a plain
      // store-release (no read-modify-write) publishes t, as the exchange
      // would. This is the hand-off of every channel ping-pong.
      if (q_->next_.load(std::memory_order_relaxed) == nullptr) {
        q_->next_.store(t, std::memory_order_release);
        return nullptr;
      }
      return q_->next_.exchange(t, std::memory_order_acq_rel);
    }

    // Takes the runnext task if `use_next` and there is one, else the
    // oldest task in the ring. Null if empty. Executed only by the owner.
    T* Pop(bool use_next = true) {
      if (exclusive()) return PopExclusive(use_next);
      if (use_next) {
        T* next = q_->next_.load(std::memory_order_relaxed);
        if (next != nullptr &&
            q_->next_.compare_exchange_strong(next, nullptr,
                                              std::memory_order_acquire)) {
          *from_next_ = true;
          return next;
        }
      }
      *from_next_ = false;
      for (;;) {
        std::uint32_t head = q_->head_.load(std::memory_order_acquire);
        std::uint32_t tail = q_->tail_.load(std::memory_order_relaxed);
        if (head == tail) return nullptr;
        T* t = q_->buf_[head % kCapacity].load(std::memory_order_relaxed);
        // CAS-release: tells Push (load-acquire of head_) the slot is free.
        if (q_->head_.compare_exchange_weak(head, head + 1,
                                            std::memory_order_release,
                                            std::memory_order_relaxed)) {
          return t;
        }
      }
    }

    // Exclusive mode (see the threading rules at the top). Owner only.
    bool exclusive() const {
      return q_->exclusive_.load(std::memory_order_relaxed);
    }
    // Enters exclusive mode unless `no_thieves()` (which must read the
    // thieves' announcement counter with seq_cst loads) says a thief may be
    // at work; returns whether it entered.
    template <typename NoThieves>
    bool TryEnterExclusive(NoThieves no_thieves) {
      q_->exclusive_.store(true, std::memory_order_seq_cst);
      if (no_thieves()) return true;
      q_->exclusive_.store(false, std::memory_order_seq_cst);  // as Leave
      return false;
    }
    // Leaves exclusive mode. A thief that sees the flag clear also sees
    // every plain pop made before. seq_cst, not just release: an owner
    // that leaves and then checks for spinning thieves (to wake one) and a
    // spinner that stops spinning and then checks the flag must not both
    // read the old values (store buffering).
    void LeaveExclusive() {
      q_->exclusive_.store(false, std::memory_order_seq_cst);
    }

    // The ring's oldest task, without taking it (null if empty): a hint
    // for prefetching, stale if a thief takes it meanwhile.
    T* PeekHead() const {
      std::uint32_t head = q_->head_.load(std::memory_order_relaxed);
      std::uint32_t tail = q_->tail_.load(std::memory_order_relaxed);
      if (head == tail) return nullptr;
      return q_->buf_[head % kCapacity].load(std::memory_order_relaxed);
    }

    // Whether the last Pop() returned the runnext task.
    bool last_pop_was_next() const { return *from_next_; }

    // Number of tasks in the ring plus runnext; exact for the owner.
    std::uint32_t Size() const { return q_->Size(); }
    // Size() != 0 in two or three loads, without Size()'s consistency loop
    // (only thieves move head_, and never past the owner's tail_).
    bool HasWork() const {
      return q_->next_.load(std::memory_order_relaxed) != nullptr ||
             q_->head_.load(std::memory_order_acquire) !=
                 q_->tail_.load(std::memory_order_relaxed);
    }
    bool Empty() const { return Size() == 0; }

   private:
    friend class RunQueue;
    explicit Local(RunQueue* q) : q_(q), from_next_(&q->last_from_next_) {}

    // Pop in exclusive mode: nobody else consumes, so plain loads and
    // stores. head_ is still stored with release: Push's load-acquire of it
    // is by this thread, but LeaveExclusive's thieves read it too.
    T* PopExclusive(bool use_next) {
      if (use_next) {
        T* next = q_->next_.load(std::memory_order_relaxed);
        if (next != nullptr) {
          q_->next_.store(nullptr, std::memory_order_relaxed);
          *from_next_ = true;
          return next;
        }
      }
      *from_next_ = false;
      std::uint32_t head = q_->head_.load(std::memory_order_relaxed);
      if (head == q_->tail_.load(std::memory_order_relaxed)) return nullptr;
      T* t = q_->buf_[head % kCapacity].load(std::memory_order_relaxed);
      q_->head_.store(head + 1, std::memory_order_release);
      return t;
    }

    bool TakeHalfForOverflow(std::uint32_t head, std::uint32_t tail, T* t,
                             Overflow& overflow) {
      std::uint32_t n = (tail - head) / 2;
      for (std::uint32_t i = 0; i < n; ++i) {
        overflow.items[i] =
            q_->buf_[(head + i) % kCapacity].load(std::memory_order_relaxed);
      }
      if (!q_->head_.compare_exchange_strong(head, head + n,
                                             std::memory_order_release,
                                             std::memory_order_relaxed)) {
        return false;
      }
      overflow.items[n] = t;
      overflow.count = n + 1;
      return true;
    }

    RunQueue* q_;
    bool* from_next_;
  };

  // Any thread's handle.
  class Stealer {
   public:
    // Moves about half of this queue's tasks to the tail of `dst` (which
    // must be empty: the thief's own, idle queue) and returns one of them
    // for the thief to run, or null if there was nothing to take. Takes the
    // victim's runnext only if `steal_next` and the ring is empty (Go does
    // so only as a last resort). May run in parallel with the owner and
    // with other thieves. Null while the victim is in exclusive mode; the
    // caller must be announced as a thief (see the rules at the top).
    T* StealInto(Local& dst, bool steal_next) {
      // seq_cst: the thief's half of the Dekker handshake (announce, then
      // read the flag) against TryEnterExclusive (flag, then read).
      if (q_->exclusive_.load(std::memory_order_seq_cst)) return nullptr;
      RunQueue* d = dst.q_;
      std::uint32_t dst_tail = d->tail_.load(std::memory_order_relaxed);
      std::uint32_t n = Grab(d, dst_tail, steal_next);
      if (n == 0) return nullptr;
      --n;
      T* t = d->buf_[(dst_tail + n) % kCapacity].load(
          std::memory_order_relaxed);
      if (n > 0) {
        // store-release: publishes the stolen tasks in dst.
        d->tail_.store(dst_tail + n, std::memory_order_release);
      }
      return t;
    }

    std::uint32_t Size() const { return q_->Size(); }

    // Whether the victim's ring is empty, whatever its runnext holds: when
    // StealInto(dst, true) could take only runnext, or nothing. A snapshot.
    bool RingEmpty() const {
      return q_->head_.load(std::memory_order_acquire) ==
             q_->tail_.load(std::memory_order_acquire);
    }
    // Whether the victim's runnext holds a task. A snapshot.
    bool HasNext() const {
      return q_->next_.load(std::memory_order_relaxed) != nullptr;
    }
    // Whether the victim is in exclusive mode (StealInto would refuse). A
    // snapshot; seq_cst, for the re-check described at LeaveExclusive.
    bool Exclusive() const {
      return q_->exclusive_.load(std::memory_order_seq_cst);
    }

   private:
    friend class RunQueue;
    explicit Stealer(RunQueue* q) : q_(q) {}

    // Copies up to half of the victim's ring into d's ring starting at
    // d_tail, and commits by CAS on the victim's head. Returns how many.
    std::uint32_t Grab(RunQueue* d, std::uint32_t d_tail, bool steal_next) {
      for (;;) {
        std::uint32_t head = q_->head_.load(std::memory_order_acquire);
        // load-acquire: pairs with Push's store-release of tail_.
        std::uint32_t tail = q_->tail_.load(std::memory_order_acquire);
        std::uint32_t n = tail - head;
        n = n - n / 2;
        if (n == 0) {
          if (!steal_next) return 0;
          T* next = q_->next_.load(std::memory_order_acquire);
          if (next == nullptr) return 0;
          if (!q_->next_.compare_exchange_strong(next, nullptr,
                                                 std::memory_order_acq_rel)) {
            continue;
          }
          d->buf_[d_tail % kCapacity].store(next, std::memory_order_relaxed);
          return 1;
        }
        if (n > kCapacity / 2) continue;  // inconsistent head/tail: retry
        for (std::uint32_t i = 0; i < n; ++i) {
          T* t = q_->buf_[(head + i) % kCapacity].load(
              std::memory_order_relaxed);
          d->buf_[(d_tail + i) % kCapacity].store(t,
                                                  std::memory_order_relaxed);
        }
        // CAS-release: commits the steal; pairs with Push's load-acquire.
        if (q_->head_.compare_exchange_weak(head, head + n,
                                            std::memory_order_release,
                                            std::memory_order_relaxed)) {
          return n;
        }
      }
    }

    RunQueue* q_;
  };

  RunQueue() {
    for (auto& slot : buf_) slot.store(nullptr, std::memory_order_relaxed);
  }
  RunQueue(const RunQueue&) = delete;
  RunQueue& operator=(const RunQueue&) = delete;

  // The owner's handle. Give it to exactly one thread at a time.
  Local local() { return Local(this); }
  Stealer stealer() { return Stealer(this); }

  // Approximate when read by a non-owner.
  std::uint32_t Size() const {
    for (;;) {
      std::uint32_t head = head_.load(std::memory_order_acquire);
      std::uint32_t tail = tail_.load(std::memory_order_acquire);
      if (head_.load(std::memory_order_relaxed) != head) continue;
      return (tail - head) +
             (next_.load(std::memory_order_relaxed) != nullptr ? 1 : 0);
    }
  }

 private:
  // Consumers (owner's Pop and thieves) advance head_; only the owner
  // writes tail_. Separate cache lines: thieves hammer head_.
  alignas(64) std::atomic<std::uint32_t> head_{0};
  // Written only by the owner, rarely; read by the owner on every Pop and
  // by thieves before stealing, as they read head_.
  std::atomic<bool> exclusive_{false};
  alignas(64) std::atomic<std::uint32_t> tail_{0};
  std::atomic<T*> next_{nullptr};
  bool last_from_next_ = false;  // owner-only
  // Slots are atomics only so that TSan sees the relaxed races a thief's
  // speculative read has with the owner's overwrite (the CAS discards it).
  alignas(64) std::atomic<T*> buf_[kCapacity];
};

}  // namespace gort

#endif  // GORT_SCHED_RUNQ_H_
