// gort/chan/chan.h: Go's channels, for fibers and threads alike.
//
//   gort::Chan<int> ch = gort::MakeChan<int>();      // ch := make(chan int)
//   gort::Chan<int> jobs = gort::MakeChan<int>(128); // make(chan int, 128)
//   gort::Chan<int> nil;                             // var nil chan int
//
//   ch.Send(42);                                     // ch <- 42
//   std::optional<int> v = ch.Recv();                // v, ok := <-ch
//   if (!v) { /* closed and drained */ }
//   for (int& job : jobs) { ... }                    // for job := range jobs
//   jobs.Close();                                    // close(jobs)
//
// Select, timers and tickers are in chan/select.h and chan/time.h.
//
// A Chan<T> is a handle with reference semantics, like Go's: copies refer to
// the same channel, and it lives as long as any handle does. A
// default-constructed Chan is nil: sending or receiving on it blocks
// forever, and it is never ready in a select. T may be any move
// constructible type, move-only types (std::unique_ptr) included.
//
// Exceptions from T's constructors: a copy or conversion that may throw
// (sending an lvalue std::string, say) is made before anything is committed,
// so its exception reaches the caller and the channel is unchanged. A move
// is what the channel itself does once an operation is committed: into the
// buffer or a waiting receiver's storage (under the channel's lock, or for
// a parked sender by the receiver that takes its value), out of the buffer,
// and out to the receiver's caller. A value the channel has taken cannot be
// given back, so a move that throws there would lose or duplicate it: it is
// a fatal error ("fatal: gort::Chan: an element's move threw while ...").
// Types whose move constructor is not noexcept (std::deque, say) work; only
// an actual throw is fatal.
//
// Semantics are Go's, exactly:
//  - An unbuffered send blocks until a receiver takes the value; the value
//    goes from the sender's object straight into the receiver's (no
//    intermediate buffer). A buffered send blocks only while the buffer is
//    full. Blocked senders and receivers are served first come, first
//    served.
//  - Close(): values already buffered are still received; after that every
//    receive returns "closed" at once. Sending on a closed channel, closing
//    a closed channel and closing a nil channel throw gort::ChanError, and
//    change nothing: the channel, its buffered values, and the value that
//    was to be sent are intact (Send takes its argument by reference and
//    moves from it only when the value is delivered). A sender blocked when
//    the channel is closed gets the same error, as in Go.
//  - Send/Recv park a fiber (leaving its OS thread to other fibers) or
//    block a plain thread; the same channel may be used from both at once.
//
// Memory ordering (Go's memory model): a send happens-before the completion
// of the matching receive; the k-th receive on a channel of capacity C
// happens-before the (k+C)-th send completes; Close happens-before a
// receive that returns "closed".
//
// Cost: each operation takes the channel's lock once; see docs/chan.md.

#ifndef GORT_CHAN_CHAN_H_
#define GORT_CHAN_CHAN_H_

#include <cstddef>
#include <iterator>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "chan/internal/core.h"

namespace gort {

// A programming error on a channel (Go panics with the same words).
class ChanError : public std::logic_error {
 public:
  enum class Kind {
    kSendOnClosed,   // "send on closed channel"
    kCloseOfClosed,  // "close of closed channel"
    kCloseOfNil,     // "close of nil channel"
  };
  explicit ChanError(Kind kind);
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// What TryRecv, RecvFor and RecvUntil return: a value, or why there is none.
template <typename T>
struct RecvResult {
  RecvStatus status = RecvStatus::kWouldBlock;
  std::optional<T> value;  // set iff status == kOk

  bool ok() const { return status == RecvStatus::kOk; }
  bool closed() const { return status == RecvStatus::kClosed; }
  explicit operator bool() const { return ok(); }
  T& operator*() { return *value; }
  const T& operator*() const { return *value; }
  T* operator->() { return &*value; }
};

template <typename T>
class Chan;

// make(chan T, capacity).
template <typename T>
Chan<T> MakeChan(std::size_t capacity = 0);

namespace chan_internal {

// Deadlines in the core's clock (MonoNow() ns). A timeout <= 0 gives a
// deadline in the past: try once, never block.
std::int64_t DeadlineAfter(absl::Duration timeout);
std::int64_t DeadlineAt(absl::Time deadline);

// Moves the T at src to dst (a buffered element out of the buffer).
template <typename T>
void Relocate(void* dst, void* src) noexcept {
  T* s = std::launder(static_cast<T*>(src));
  if constexpr (std::is_nothrow_move_constructible_v<T>) {
    ::new (dst) T(std::move(*s));
  } else {
    try {
      ::new (dst) T(std::move(*s));
    } catch (...) {
      FatalElementMoveThrew(ElemMove::kOutOfBuffer);
    }
  }
  s->~T();
}

template <typename T>
inline constexpr ElemOps kElemOps = {
    sizeof(T),
    alignof(T),
    &Relocate<T>,
    [](void* p) noexcept { std::launder(static_cast<T*>(p))->~T(); },
};

// Constructs a T at dst from the sender's U (moving if U is an rvalue).
// Runs once the send is committed (see Chan::SendImpl): a construction
// that may throw here is a move of T, and fatal if it does.
template <typename T, typename U>
void PutFrom(void* src, void* dst) noexcept {
  auto& v = *static_cast<std::remove_reference_t<U>*>(src);
  if constexpr (std::is_nothrow_constructible_v<T, U>) {
    ::new (dst) T(std::forward<U>(v));
  } else {
    try {
      ::new (dst) T(std::forward<U>(v));
    } catch (...) {
      FatalElementMoveThrew(ElemMove::kDeliver);
    }
  }
}

// Whether a send of a U&& constructs the element straight from the
// sender's object, once the send is committed: when that cannot throw, and
// for a move of T (a throwing move then is fatal, see the header comment;
// moving into a temporary first would leave the sender's object moved from
// even when the send fails). Other constructions (copies and conversions
// that may throw) are made into a temporary first, so that their exceptions
// reach the caller before anything is committed.
template <typename T, typename U>
inline constexpr bool kPutDirect =
    std::is_nothrow_constructible_v<T, U&&> || std::is_same_v<U&&, T&&>;

template <typename U>
void* AddressOf(U& v) {
  return const_cast<void*>(static_cast<const void*>(std::addressof(v)));
}

// Raw storage for one T, filled by a receive. Once filled, exactly one of
// the members below moves the value out (a throwing move is fatal: the
// value has left the channel) and destroys it.
template <typename T>
struct Slot {
  alignas(T) unsigned char bytes[sizeof(T)];
  void* raw() { return bytes; }
  T* get() { return std::launder(reinterpret_cast<T*>(bytes)); }

  // Returns the received T as an R (T or std::optional<T>), made by one
  // move straight into the caller's object (a prvalue all the way).
  template <typename R = T>
  R Take() {
    struct Destroyer {
      T* p;
      ~Destroyer() { p->~T(); }
    } destroy{get()};
    if constexpr (std::is_nothrow_move_constructible_v<T>) {
      return Make<R>(destroy.p);
    } else {
      try {
        return Make<R>(destroy.p);
      } catch (...) {
        FatalElementMoveThrew(ElemMove::kToReceiver);
      }
    }
  }
  // *out = the received T (a select's Recv(ch, &v)).
  void AssignTo(T* out) {
    T* p = get();
    if constexpr (std::is_nothrow_move_assignable_v<T>) {
      *out = std::move(*p);
    } else {
      try {
        *out = std::move(*p);
      } catch (...) {
        FatalElementMoveThrew(ElemMove::kToReceiver);
      }
    }
    p->~T();
  }
  // out->emplace(the received T).
  void EmplaceTo(std::optional<T>* out) {
    T* p = get();
    if constexpr (std::is_nothrow_move_constructible_v<T>) {
      out->emplace(std::move(*p));
    } else {
      try {
        out->emplace(std::move(*p));
      } catch (...) {
        FatalElementMoveThrew(ElemMove::kToReceiver);
      }
    }
    p->~T();
  }
  // Drops the received T.
  void Destroy() { get()->~T(); }

 private:
  template <typename R>
  static R Make(T* p) {
    if constexpr (std::is_same_v<R, T>) {
      return T(std::move(*p));
    } else {
      return R(std::in_place, std::move(*p));
    }
  }
};

template <typename T>
ChanCore* CoreOf(const Chan<T>& ch) {
  return ch.core_;
}

// Senders (or receivers) blocked on `ch`: for tests.
template <typename T>
std::size_t WaitersForTest(const Chan<T>& ch, bool senders) {
  return ch.core_ == nullptr ? 0 : ch.core_->WaitersForTest(senders);
}

}  // namespace chan_internal

template <typename T>
class Chan {
  static_assert(!std::is_reference_v<T> && !std::is_const_v<T>,
                "Chan<T>: T must be a non-const object type");
  static_assert(std::is_move_constructible_v<T>,
                "Chan<T>: T must be move constructible");

 public:
  using value_type = T;

  // A nil channel.
  Chan() noexcept = default;
  Chan(const Chan& other) noexcept : core_(other.core_) {
    if (core_ != nullptr) core_->Ref();
  }
  Chan(Chan&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}
  Chan& operator=(Chan other) noexcept {
    std::swap(core_, other.core_);
    return *this;
  }
  ~Chan() {
    if (core_ != nullptr) core_->Unref();
  }

  // ch <- v. Blocks until delivered (see the header comment). Throws
  // ChanError if the channel is closed, before or while blocked; `v` is
  // then untouched.
  template <typename U = T>
    requires std::is_constructible_v<T, U&&>
  void Send(U&& v) const {
    SendImpl(std::forward<U>(v), sched_internal::kNoDeadline);
  }

  // Sends only if that needs no waiting (a receiver is waiting, or there is
  // room). Returns whether it sent; `v` is untouched if not. Throws
  // ChanError if the channel is closed.
  template <typename U = T>
    requires std::is_constructible_v<T, U&&>
  bool TrySend(U&& v) const {
    return SendImpl(std::forward<U>(v), 0);
  }

  // Send, giving up (returning false, `v` untouched) after `timeout` / at
  // `deadline`.
  template <typename U = T>
    requires std::is_constructible_v<T, U&&>
  bool SendFor(U&& v, absl::Duration timeout) const {
    return SendImpl(std::forward<U>(v), chan_internal::DeadlineAfter(timeout));
  }
  template <typename U = T>
    requires std::is_constructible_v<T, U&&>
  bool SendUntil(U&& v, absl::Time deadline) const {
    return SendImpl(std::forward<U>(v), chan_internal::DeadlineAt(deadline));
  }

  // v, ok := <-ch. Blocks until a value arrives (returned) or the channel is
  // closed and drained (nullopt).
  std::optional<T> Recv() const {
    chan_internal::Slot<T> slot;
    if (chan_internal::ChanCore::Recv(core_, slot.raw(),
                                      sched_internal::kNoDeadline) !=
        RecvStatus::kOk) {
      return std::nullopt;
    }
    return slot.template Take<std::optional<T>>();
  }

  // Receives only if that needs no waiting. status: kOk (value set),
  // kClosed (closed and drained), kWouldBlock (nothing there).
  RecvResult<T> TryRecv() const { return RecvWithDeadline(0); }

  // Recv, giving up (kWouldBlock) after `timeout` / at `deadline`.
  RecvResult<T> RecvFor(absl::Duration timeout) const {
    return RecvWithDeadline(chan_internal::DeadlineAfter(timeout));
  }
  RecvResult<T> RecvUntil(absl::Time deadline) const {
    return RecvWithDeadline(chan_internal::DeadlineAt(deadline));
  }

  // close(ch). Throws ChanError on a nil or already closed channel.
  void Close() const { chan_internal::ChanCore::Close(core_); }

  // len(ch), cap(ch): 0 for a nil channel. Len is a snapshot.
  std::size_t Len() const { return core_ == nullptr ? 0 : core_->size(); }
  std::size_t Cap() const { return core_ == nullptr ? 0 : core_->capacity(); }

  bool nil() const { return core_ == nullptr; }
  // Whether the handles refer to the same channel (Go's ch1 == ch2).
  friend bool operator==(const Chan& a, const Chan& b) {
    return a.core_ == b.core_;
  }

  // for (T& v : ch): receives until the channel is closed and drained.
  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    using pointer = T*;
    using reference = T&;

    Iterator() = default;
    T& operator*() const { return *cur_; }
    T* operator->() const { return &*cur_; }
    Iterator& operator++() {
      cur_.reset();
      ch_->RecvInto(&cur_);  // straight into cur_: one move, as Recv()
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const Iterator& it, std::default_sentinel_t) {
      return !it.cur_.has_value();
    }

   private:
    friend class Chan;
    explicit Iterator(const Chan* ch) : ch_(ch), cur_(ch->Recv()) {}
    const Chan* ch_ = nullptr;
    mutable std::optional<T> cur_;
  };
  Iterator begin() const { return Iterator(this); }
  std::default_sentinel_t end() const { return {}; }

 private:
  friend Chan MakeChan<T>(std::size_t capacity);
  friend chan_internal::ChanCore* chan_internal::CoreOf<T>(const Chan&);
  friend std::size_t chan_internal::WaitersForTest<T>(const Chan&, bool);
  explicit Chan(chan_internal::ChanCore* core) : core_(core) {}

  // The element is constructed from `v` under the channel's lock, straight
  // into its destination, when that cannot throw (moves, and copies of
  // trivially copyable types) and for every move of T (a throwing one is
  // fatal, see the header comment). Another construction that may throw
  // (copying a std::string, say) is done first, into a temporary that is
  // then moved: its exception reaches the caller before anything is
  // committed, and an lvalue `v` stays untouched.
  template <typename U>
  bool SendImpl(U&& v, std::int64_t deadline) const {
    if constexpr (chan_internal::kPutDirect<T, U>) {
      return chan_internal::ChanCore::Send(core_, chan_internal::AddressOf(v),
                                           &chan_internal::PutFrom<T, U&&>,
                                           deadline);
    } else {
      T tmp(std::forward<U>(v));
      return chan_internal::ChanCore::Send(core_, &tmp,
                                           &chan_internal::PutFrom<T, T&&>,
                                           deadline);
    }
  }

  RecvResult<T> RecvWithDeadline(std::int64_t deadline) const {
    chan_internal::Slot<T> slot;
    const RecvStatus status =
        chan_internal::ChanCore::Recv(core_, slot.raw(), deadline);
    if (status != RecvStatus::kOk) return RecvResult<T>{status, std::nullopt};
    return RecvResult<T>{status, slot.template Take<std::optional<T>>()};
  }

  // Recv() into *out (empty); returns whether a value arrived.
  bool RecvInto(std::optional<T>* out) const {
    chan_internal::Slot<T> slot;
    if (chan_internal::ChanCore::Recv(core_, slot.raw(),
                                      sched_internal::kNoDeadline) !=
        RecvStatus::kOk) {
      return false;
    }
    slot.EmplaceTo(out);
    return true;
  }

  chan_internal::ChanCore* core_ = nullptr;
};

template <typename T>
Chan<T> MakeChan(std::size_t capacity) {
  return Chan<T>(chan_internal::ChanCore::Create(&chan_internal::kElemOps<T>,
                                                 capacity));
}

}  // namespace gort

#endif  // GORT_CHAN_CHAN_H_
