// gort/chan/select.h: Go's select statement.
//
//   select {                          int v; bool ok;
//   case v, ok := <-in:               switch (gort::Select(gort::Recv(in, &v, &ok),
//       ...                                                gort::Send(out, x),
//   case out <- x:                                         gort::Recv(done),
//       ...                                                gort::Default())) {
//   case <-done:                        case 0: ...; break;   // v, ok set
//       return                          case 1: ...; break;   // x was sent
//   default:                            case 2: return;
//       ...                             case 3: ...; break;   // nothing ready
//   }                                 }
//
// Select takes the cases in Go's order and returns the index of the one
// that fired, so a ported select is a switch with the cases numbered in the
// same order. Cases:
//   Recv(ch)                  receive and discard
//   Recv(ch, &v)              v = the value (T{} if closed, as Go's zero)
//   Recv(ch, &v, &ok)         ok = false if the channel was closed (&v may
//                             be nullptr)
//   Recv(ch, &opt)            opt: std::optional<T>, nullopt if closed
//   Send(ch, value)           send; `value` is moved from only if this case
//                             fires (it is held by reference until then)
//   Default()                 makes the select non-blocking
//
// Why cases and an index rather than a lambda per case: the switch keeps
// the bodies in the caller's scope, where `break`, `return`, `continue` and
// co_await-free control flow all mean what they mean in Go's select; no
// allocation; and the case order on the page is Go's. Case objects hold
// references and are meant to be written inside the Select(...) call.
//
// Semantics are Go's: if one or more cases can proceed, one is chosen
// uniformly at random; if none can and there is no Default, the caller
// parks until exactly one completes. A case on a nil channel never fires; a
// receive on a closed channel is ready. A send case on a closed channel
// throws ChanError (if chosen), as Go panics. A select with no cases (or only
// nil channels) and no Default blocks forever. Channels are locked in
// address order, so concurrent selects never deadlock.
//
// Threading: Select may be called from any fiber or plain thread, over
// channels that other fibers and threads use at the same time; a blocked
// fiber parks, a blocked thread sleeps. Memory ordering is the channels'
// (chan.h): a fired case synchronizes exactly as the matching Send/Recv.

#ifndef GORT_CHAN_SELECT_H_
#define GORT_CHAN_SELECT_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "chan/chan.h"

namespace gort {
namespace chan_internal {

// One case, type-erased.
struct SelectCase {
  ChanCore* chan = nullptr;  // null: a nil channel, never ready
  bool is_send = false;
  void* elem = nullptr;  // send: the sender's object; receive: raw storage
  PutFn put = nullptr;   // send only
};

// Runs a select over `cases` (in the caller's order). Returns the index of
// the case that fired, or -1 if none was ready and !block. For a receive
// case, *received tells a value (true) from "closed" (false). Throws
// ChanError for a send case on a closed channel.
int SelectImpl(SelectCase* cases, int n, bool block, bool* received);

template <typename T>
class RecvCase {
 public:
  RecvCase(const Chan<T>& ch, T* out, bool* ok, std::optional<T>* opt)
      : core_(CoreOf(ch)), out_(out), ok_(ok), opt_(opt) {}
  SelectCase Describe() { return {core_, false, slot_.raw(), nullptr}; }
  void Finish(bool received) {
    if (ok_ != nullptr) *ok_ = received;
    if (received) {
      // Straight from the slot into the caller's object: one move (a
      // throwing one is fatal, as in Chan::Recv).
      if (out_ != nullptr) {
        slot_.AssignTo(out_);
      } else if (opt_ != nullptr) {
        slot_.EmplaceTo(opt_);
      } else {
        slot_.Destroy();
      }
    } else {
      if constexpr (std::is_default_constructible_v<T>) {
        if (out_ != nullptr) *out_ = T{};
      }
      if (opt_ != nullptr) opt_->reset();
    }
  }

 private:
  ChanCore* core_;
  T* out_;
  bool* ok_;
  std::optional<T>* opt_;
  Slot<T> slot_;
};

template <typename T, typename U>
class SendCase {
  // As Chan::Send: a copy or conversion that may throw is done up front,
  // into a temporary, so that its exception reaches the caller before any
  // channel lock is taken; a move of T is made under the lock (a throwing
  // one is fatal).
  static constexpr bool kDirect = kPutDirect<T, U>;

 public:
  SendCase(const Chan<T>& ch, U&& v) : core_(CoreOf(ch)) {
    if constexpr (kDirect) {
      src_ = AddressOf(v);
    } else {
      copy_.emplace(std::forward<U>(v));
      src_ = &*copy_;
    }
  }
  SendCase(const SendCase&) = delete;  // src_ may point into *this
  SelectCase Describe() {
    if constexpr (kDirect) {
      return {core_, true, src_, &PutFrom<T, U&&>};
    } else {
      return {core_, true, src_, &PutFrom<T, T&&>};
    }
  }
  void Finish(bool) {}

 private:
  ChanCore* core_;
  void* src_ = nullptr;
  std::optional<T> copy_;  // used only if !kDirect
};

// SelectSet's send case. A set may be selected on again, so each run sends
// a copy of *value as it is at that run: the copy is made in Describe(),
// before any lock is taken (a copy that may throw goes into copy_ first,
// as in SendCase), never once for all runs.
template <typename T>
class SetSendCase {
  static constexpr bool kDirect = std::is_nothrow_copy_constructible_v<T>;

 public:
  SetSendCase(const Chan<T>& ch, const T* value)
      : core_(CoreOf(ch)), value_(value) {}
  SetSendCase(const SetSendCase&) = delete;  // copy_ is pointed into
  SelectCase Describe() {
    if constexpr (kDirect) {
      return {core_, true, AddressOf(*value_), &PutFrom<T, const T&>};
    } else {
      copy_.emplace(*value_);
      return {core_, true, &*copy_, &PutFrom<T, T&&>};
    }
  }
  void Finish(bool) {
    if constexpr (!kDirect) copy_.reset();
  }

 private:
  ChanCore* core_;
  const T* value_;
  std::optional<T> copy_;  // used only if !kDirect
};

struct DefaultCase {};

template <typename C>
inline constexpr bool kIsDefault =
    std::is_same_v<std::remove_cvref_t<C>, DefaultCase>;

template <typename Tuple, std::size_t... I>
int SelectTuple(Tuple& cases, std::index_sequence<I...>) {
  constexpr int kDefaults =
      (0 + ... + (kIsDefault<std::tuple_element_t<I, Tuple>> ? 1 : 0));
  static_assert(kDefaults <= 1, "gort::Select: more than one Default()");
  constexpr int kN = sizeof...(I) - kDefaults;
  // Position in the argument list of each channel case, and of Default.
  constexpr auto kLayout = [] {
    struct {
      int pos[sizeof...(I) + 1] = {};
      int default_pos = -1;
    } l;
    int k = 0;
    ((kIsDefault<std::tuple_element_t<I, Tuple>> ? (l.default_pos = I)
                                                 : (l.pos[k++] = I)),
     ...);
    return l;
  }();
  SelectCase descs[kN > 0 ? kN : 1];
  {
    int k = 0;
    (
        [&] {
          if constexpr (!kIsDefault<std::tuple_element_t<I, Tuple>>) {
            descs[k++] = std::get<I>(cases).Describe();
          }
        }(),
        ...);
  }
  bool received = false;
  const int fired = SelectImpl(descs, kN, kLayout.default_pos < 0, &received);
  if (fired < 0) return kLayout.default_pos;
  const int pos = kLayout.pos[fired];
  (
      [&] {
        if constexpr (!kIsDefault<std::tuple_element_t<I, Tuple>>) {
          if (pos == static_cast<int>(I)) std::get<I>(cases).Finish(received);
        }
      }(),
      ...);
  return pos;
}

}  // namespace chan_internal

// Receive cases (see the header comment).
template <typename T>
chan_internal::RecvCase<T> Recv(const Chan<T>& ch) {
  return {ch, nullptr, nullptr, nullptr};
}
template <typename T>
chan_internal::RecvCase<T> Recv(const Chan<T>& ch,
                                std::type_identity_t<T>* out,
                                bool* ok = nullptr) {
  return {ch, out, ok, nullptr};
}
template <typename T>
chan_internal::RecvCase<T> Recv(
    const Chan<T>& ch, std::optional<std::type_identity_t<T>>* out) {
  return {ch, nullptr, nullptr, out};
}

// A send case. `v` is referenced, and moved from (if an rvalue) only if the
// case fires.
template <typename T, typename U>
  requires std::is_constructible_v<T, U&&>
chan_internal::SendCase<T, U> Send(const Chan<T>& ch, U&& v) {
  return chan_internal::SendCase<T, U>(ch, std::forward<U>(v));
}

// The default case: Select returns its index if no other case is ready.
inline chan_internal::DefaultCase Default() { return {}; }

// Go's select over `cases`; returns the index of the case that fired.
template <typename... Cases>
int Select(Cases&&... cases) {
  auto tuple = std::forward_as_tuple(cases...);
  return chan_internal::SelectTuple(tuple,
                                    std::index_sequence_for<Cases...>{});
}

// A select whose cases are known only at run time (Go's reflect.Select),
// e.g. a fan-in over a vector of channels:
//
//   gort::SelectSet set;
//   std::vector<int> got(ins.size());
//   std::vector<char> ok(ins.size());
//   for (size_t i = 0; i < ins.size(); ++i) set.AddRecv(ins[i], &got[i], &ok[i]);
//   int i = set.Select();        // blocks; set.TrySelect() returns -1 instead
//
// Cases are numbered in the order they were added. The set keeps its own
// handle to each channel; the pointers passed in (out, ok, value) must stay
// valid while the set is used. A set may be selected on again. (Pass no ok
// rather than nullptr: AddRecv(ch, &v, nullptr) is ambiguous.)
class SelectSet {
 public:
  template <typename T>
  int AddRecv(const Chan<T>& ch, std::type_identity_t<T>* out = nullptr,
              bool* ok = nullptr) {
    return Add(std::make_unique<Holder<T, chan_internal::RecvCase<T>>>(
        ch, out, ok, nullptr));
  }
  // Sends a copy of *value, as it is when Select()/TrySelect() runs, if
  // this case fires (value must stay valid while the set is used).
  template <typename T>
  int AddSend(const Chan<T>& ch, const std::type_identity_t<T>* value) {
    return Add(std::make_unique<Holder<T, chan_internal::SetSendCase<T>>>(
        ch, value));
  }
  // Convenience for AddRecv with a `char` flag (std::vector<bool> has no
  // bool*): *ok is set to 1 for a value, 0 for closed.
  template <typename T>
  int AddRecv(const Chan<T>& ch, std::type_identity_t<T>* out, char* ok) {
    return Add(std::make_unique<CharOkHolder<T>>(ch, out, ok));
  }

  int size() const { return static_cast<int>(cases_.size()); }

  // Blocks until a case fires; returns its index. With no cases, blocks
  // forever (as `select {}`).
  int Select() { return Run(/*block=*/true); }
  // Returns the index of a ready case that fired, or -1 if none was ready.
  int TrySelect() { return Run(/*block=*/false); }

 private:
  struct Case {
    virtual ~Case() = default;
    virtual chan_internal::SelectCase Describe() = 0;
    virtual void Finish(bool received) = 0;
  };
  // Each case keeps a handle to its channel: the set may outlive the
  // caller's handles between Select calls.
  template <typename T, typename C>
  struct Holder final : Case {
    template <typename... A>
    explicit Holder(const Chan<T>& ch, A&&... a)
        : keep(ch), c(keep, std::forward<A>(a)...) {}
    chan_internal::SelectCase Describe() override { return c.Describe(); }
    void Finish(bool received) override { c.Finish(received); }
    Chan<T> keep;
    C c;
  };
  template <typename T>
  struct CharOkHolder final : Case {
    CharOkHolder(const Chan<T>& ch, T* out, char* ok)
        : keep(ch), c(keep, out, &flag, nullptr), ok(ok) {}
    chan_internal::SelectCase Describe() override { return c.Describe(); }
    void Finish(bool received) override {
      c.Finish(received);
      if (ok != nullptr) *ok = flag ? 1 : 0;
    }
    Chan<T> keep;
    bool flag = false;
    chan_internal::RecvCase<T> c;
    char* ok;
  };

  int Add(std::unique_ptr<Case> c) {
    cases_.push_back(std::move(c));
    return size() - 1;
  }
  int Run(bool block);

  std::vector<std::unique_ptr<Case>> cases_;
  std::vector<chan_internal::SelectCase> descs_;
};

}  // namespace gort

#endif  // GORT_CHAN_SELECT_H_
