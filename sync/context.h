// gort/sync/context.h: Go's context package — cancellation, deadlines and
// request-scoped values that flow down a tree of tasks.
//
//   // The request handler: everything it starts stops when the request does.
//   auto [ctx, cancel] = gort::WithTimeout(gort::Background(),
//                                          absl::Seconds(2));
//   gort::Go([ctx] {                   // contexts are cheap to copy
//     for (;;) {
//       Job job;
//       switch (gort::Select(gort::Recv(jobs, &job),
//                            gort::Recv(ctx.Done()))) {
//         case 0: Do(job); break;
//         case 1: return;              // ctx.Err() says why
//       }
//     }
//   });
//   ...
//   cancel();                          // Go's `defer cancel()`
//
//   inline constexpr gort::ContextKey<std::string> kUser{"user"};
//   gort::Context rctx = gort::WithValue(ctx, kUser, "gopher");
//   if (const std::string* u = rctx.Value(kUser)) { ... }
//
// A Context is a handle with reference semantics (a shared_ptr inside):
// copies refer to the same context, and copying one costs an atomic
// increment. A default-constructed Context is Background(). Contexts form a
// tree: WithCancel, WithDeadline, WithTimeout and WithValue derive a child
// from a parent. Semantics are Go's:
//  - Done() is a channel that is closed when the context is cancelled: by
//    its cancel function, by its deadline, or because its parent was
//    cancelled. Background's Done() is a nil channel (never ready in a
//    select). Done() is meant for gort::Select (chan/select.h) or Recv().
//  - Err() is absl::OkStatus() while the context is live, then, for ever:
//    absl::CancelledError("context canceled") after a cancel function ran,
//    absl::DeadlineExceededError("context deadline exceeded") after the
//    deadline passed. Tell them apart with absl::IsCancelled and
//    absl::IsDeadlineExceeded. A child cancelled by its parent gets the
//    parent's error.
//  - Cancelling a context cancels all of its descendants, at once: once its
//    Err() is non-OK (and so once its cancel function has returned), every
//    descendant is cancelled too. It never affects its parent. A context
//    derived from one already cancelled is born cancelled. Once Done() is
//    closed, Err() is non-OK.
//  - Deadline() is the earliest deadline on the way to the root, if any.
//    WithDeadline with a deadline later than the parent's is WithCancel.
//  - Value(key) returns the value the nearest WithValue with that key put on
//    the path to the root, or nullptr.
//  - Calling a cancel function more than once, or after the deadline, does
//    nothing. Call it when the work is done even if the deadline will pass
//    anyway: it stops the timer and unregisters the context from its parent
//    at once (absl::Cleanup c = cancel; is Go's `defer cancel()`).
//
// Lifetime: a context lives while any handle, cancel function, descendant or
// pending deadline timer refers to it. A cancellable context is registered
// in its nearest cancellable ancestor until it is cancelled or destroyed, so
// a long-lived parent never accumulates its finished children. A parent
// does not own its children (there is no garbage collector to break the
// cycle), but nothing observable is lost when one is destroyed uncancelled:
// if someone still holds its Done() channel, that channel is handed to the
// ancestor and closed when the ancestor is cancelled, as in Go.
//
// Threading rules: every function here may be called from any fiber or
// plain thread, concurrently, on the same or different handles (as for
// std::shared_ptr, one handle object must not be assigned while another task
// reads it). Only //sched:park and //chan are needed: contexts work between
// plain threads with no scheduler linked. Deadlines run on chan/time.h's
// timer thread (gort::AfterFunc).
//
// Memory ordering: everything a task did before calling a cancel function is
// visible to a task that has seen Done() closed, or Err() non-OK, because of
// that call. A value given to WithValue is visible through every copy of
// the derived context (and of its descendants), wherever it is handed.
//
// Cost: WithCancel allocates the context and its Done() channel and takes
// the parent's lock once to register; Err() is one load-acquire (it waits
// for the lock only while a cancellation is in progress); Value()
// walks the chain of ancestors (Go does the same). See docs/context.md.

#ifndef GORT_SYNC_CONTEXT_H_
#define GORT_SYNC_CONTEXT_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "chan/chan.h"

namespace gort {

class Context;
class CancelFunc;

namespace context_internal {
struct Node;
struct CancelNode;

// The value stored under `key` on the path from `node` to the root.
const void* FindValue(const Node* node, const void* key);
Context NewValueContext(const Context& parent, const void* key,
                        std::shared_ptr<const void> value);
// Contexts registered in `ctx`'s nearest cancellable ancestor-or-self (0 for
// Background): for tests.
std::size_t NumChildrenForTest(const Context& ctx);
// Done() channels of destroyed descendants that `ctx`'s canceler will close.
std::size_t NumOrphansForTest(const Context& ctx);
}  // namespace context_internal

// A key for WithValue/Value, carrying the type of its value. A key is
// identified by its address: define it once, with static storage duration
// (a namespace-scope or function-local static), as Go code defines an
// unexported key type. Neither copyable nor movable. In a header, make it
// `inline` so that every translation unit sees the same object:
//
//   inline constexpr gort::ContextKey<RequestId> kRequestId{"request_id"};
template <typename T>
class ContextKey {
  static_assert(!std::is_reference_v<T> && !std::is_const_v<T>,
                "ContextKey<T>: T must be a non-const object type");

 public:
  constexpr explicit ContextKey(const char* name = "") : name_(name) {}
  ContextKey(const ContextKey&) = delete;
  ContextKey& operator=(const ContextKey&) = delete;

  const char* name() const { return name_; }

 private:
  const char* name_;
};

// The channel type of Done(): it carries no values, it is only closed.
using DoneChan = Chan<std::monostate>;

class Context {
 public:
  // Background(): never cancelled, no deadline, no values.
  Context() = default;

  // Closed when this context is cancelled; nil (never ready) for contexts
  // that can never be cancelled. The reference is valid while this Context
  // is; copy it to keep the channel longer.
  const DoneChan& Done() const;

  // OkStatus() while live; then CancelledError or DeadlineExceededError for
  // ever (see the header comment).
  absl::Status Err() const;

  // The earliest deadline of this context and its ancestors, if any.
  std::optional<absl::Time> Deadline() const;

  // The value of the nearest WithValue(.., key, ..) on the path to the root,
  // or nullptr. The pointee lives as long as this context.
  template <typename T>
  const T* Value(const ContextKey<T>& key) const {
    return static_cast<const T*>(
        context_internal::FindValue(node_.get(), &key));
  }

  // Whether the handles refer to the same context.
  friend bool operator==(const Context& a, const Context& b) {
    return a.node_ == b.node_;
  }

 private:
  friend class CancelFunc;
  friend std::pair<Context, CancelFunc> WithCancel(const Context& parent);
  friend std::pair<Context, CancelFunc> WithDeadline(const Context& parent,
                                                     absl::Time deadline);
  friend Context context_internal::NewValueContext(
      const Context& parent, const void* key,
      std::shared_ptr<const void> value);
  friend std::size_t context_internal::NumChildrenForTest(const Context& ctx);
  friend std::size_t context_internal::NumOrphansForTest(const Context& ctx);

  explicit Context(std::shared_ptr<context_internal::Node> node)
      : node_(std::move(node)) {}

  std::shared_ptr<context_internal::Node> node_;  // null: Background
};

// Cancels the context it was returned with (and all its descendants), with
// CancelledError. Copyable; every copy cancels the same context; calling it
// any number of times, from any task, is fine. A default-constructed
// CancelFunc does nothing. The call holds its own reference to the context:
// a task that sees the cancellation may destroy every handle at once, even
// the CancelFunc being called, if the caller reached it by reference.
class CancelFunc {
 public:
  CancelFunc() = default;
  void operator()() const;

 private:
  friend std::pair<Context, CancelFunc> WithCancel(const Context& parent);
  friend std::pair<Context, CancelFunc> WithDeadline(const Context& parent,
                                                     absl::Time deadline);
  explicit CancelFunc(std::shared_ptr<context_internal::CancelNode> node)
      : node_(std::move(node)) {}

  std::shared_ptr<context_internal::CancelNode> node_;
};

// context.Background(): the root of every tree. Never cancelled.
inline Context Background() { return Context(); }
// context.TODO(): Background, for code not yet plumbed for a context.
inline Context TODO() { return Context(); }

// A child of `parent` that is also cancelled by calling the returned
// function.
//   auto [ctx, cancel] = gort::WithCancel(parent);
std::pair<Context, CancelFunc> WithCancel(const Context& parent);

// A child of `parent` that is also cancelled, with DeadlineExceededError,
// at `deadline` (at once if it has passed). If the parent's deadline is
// earlier, this is WithCancel(parent). absl::InfiniteFuture() is no
// deadline.
std::pair<Context, CancelFunc> WithDeadline(const Context& parent,
                                            absl::Time deadline);

// WithDeadline(parent, absl::Now() + timeout).
std::pair<Context, CancelFunc> WithTimeout(const Context& parent,
                                           absl::Duration timeout);

// A child of `parent` whose Value(key) is a T made from `value`; every other
// question is answered by the parent. Values are immutable once stored.
template <typename T, typename U>
  requires std::is_constructible_v<T, U&&>
Context WithValue(const Context& parent, const ContextKey<T>& key,
                  U&& value) {
  return context_internal::NewValueContext(
      parent, &key, std::make_shared<const T>(std::forward<U>(value)));
}

}  // namespace gort

#endif  // GORT_SYNC_CONTEXT_H_
