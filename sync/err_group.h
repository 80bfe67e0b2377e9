// gort/sync/err_group.h: golang.org/x/sync/errgroup — run a group of fibers
// working on subtasks of one task, wait for them all, and get the first
// error; optionally cancel the rest as soon as one fails.
//
//   gort::ErrGroup g = gort::ErrGroup::WithContext(parent);
//   g.SetLimit(8);                           // at most 8 fibers at a time
//   for (const std::string& url : urls) {
//     g.Go([&g, url] () -> absl::Status {
//       return Fetch(g.context(), url);     // stops early once ctx is done
//     });
//   }
//   absl::Status s = g.Wait();              // the first error, or OK
//
// Semantics are errgroup's:
//  - Go(fn) starts `fn` in a new fiber (gort::Go). Wait() blocks until every
//    function started so far has returned, then returns the first non-OK
//    status any of them returned (OkStatus() if none did).
//  - A group made by WithContext(parent) owns a child of `parent`
//    (context()) that is cancelled when a function first returns an error,
//    or when Wait returns, whichever happens first. A group made by the
//    default constructor has context() == Background().
//  - SetLimit(n) bounds the number of active fibers to n: Go blocks the
//    caller until one finishes; TryGo starts the function only if that needs
//    no waiting and returns whether it did. A negative n removes the limit.
//    Changing the limit while fibers of the group are active is a fatal
//    error, as errgroup panics.
//  - An exception escaping `fn` is fatal for the process (gort's rule for
//    every fiber: "fatal: uncaught exception in fiber ..."), as a panic in an
//    errgroup goroutine crashes a Go program. For a std::exception, the
//    group does not count the function as finished, so Wait cannot return
//    before the process dies. Catch inside `fn` and return a status to
//    report failures. gort::Exit() inside `fn` ends that fiber cleanly; it
//    counts as a function that returned OkStatus().
//
// Threading rules: Go, TryGo and Wait may be called from any fiber or plain
// thread, concurrently, including from functions running in the group, and
// including a Go from outside the group that races with its last function
// finishing while another task is in Wait: the group's count is changed
// under a lock, so such a Go either joins the round that Wait is waiting
// for (Wait then waits for it too) or starts a new one after Wait has been
// released (unlike Go's errgroup, whose WaitGroup panics then).
// SetLimit must not run concurrently with Go or TryGo. The group may be
// reused after Wait; its first error and (for WithContext) its cancelled
// context stay, as in Go. The destructor waits for the group's fibers (as
// if by Wait(), whose result it drops), and cancels context(): a group on
// the stack can never leave a fiber pointing at it.
//
// Memory ordering: everything a function did before returning is visible to
// the caller after Wait() returns; everything the caller of Go did before
// the call is visible to the function.
//
// Unlike Context and Semaphore (target //sync, which needs only the parking
// API), ErrGroup starts fibers and so needs the scheduler: it is its own
// target, //sync:err_group, depending on //sync and //sched.

#ifndef GORT_SYNC_ERR_GROUP_H_
#define GORT_SYNC_ERR_GROUP_H_

#include <source_location>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "chan/chan.h"
#include "sync/context.h"
#include "sync/mutex.h"
#include "sync/wait_group.h"

namespace gort {

namespace sync_internal {
struct ErrGroupPeer;  // test-only access, defined by tests
}  // namespace sync_internal

class ErrGroup {
 public:
  using Func = absl::AnyInvocable<absl::Status() &&>;

  // A group with no context (context() is Background) and no limit.
  ErrGroup() = default;
  // A group whose context() is a child of `parent`, cancelled on the first
  // error or when Wait returns.
  //   gort::ErrGroup g = gort::ErrGroup::WithContext(ctx);
  static ErrGroup WithContext(const Context& parent) {
    return ErrGroup(parent);
  }

  ErrGroup(const ErrGroup&) = delete;
  ErrGroup& operator=(const ErrGroup&) = delete;
  ~ErrGroup();

  // The group's context (see above). Valid while the group is.
  const Context& context() const { return ctx_; }

  // Starts `fn` in a new fiber, first waiting while the limit (if any) is
  // reached.
  void Go(Func fn, std::source_location site = std::source_location::current());

  // Starts `fn` in a new fiber only if the limit (if any) is not reached.
  // Returns whether it did.
  bool TryGo(Func fn,
             std::source_location site = std::source_location::current());

  // Blocks until every function started has returned; returns the first
  // error, or OkStatus(). Cancels context().
  absl::Status Wait();

  // Bounds the number of active fibers to n (n < 0: no limit; n == 0: Go
  // blocks for ever, as in Go). Fatal if fibers of the group are active.
  void SetLimit(int n);

 private:
  friend struct sync_internal::ErrGroupPeer;

  explicit ErrGroup(const Context& parent);

  void Start(Func fn, const DoneChan& token, std::source_location site);
  // A function has finished: wg_.Done(), under mu_. The last touch of *this
  // by its fiber.
  void Finished();
  void SetError(absl::Status status);

  // Counts the functions started and not yet finished. Its Add (in Start)
  // and Done (in Finished) are made under mu_, so an Add never lands in
  // the window between the Done that takes it to zero and the release of
  // its waiters, which WaitGroup reports as misuse.
  WaitGroup wg_;
  // Wait() calls in progress; the destructor waits for them.
  WaitGroup waits_;
  // Tokens of the active fibers: capacity = the limit; nil = no limit.
  DoneChan sem_;
  Context ctx_;
  CancelFunc cancel_;  // no-op without WithContext

  // Guards wg_'s Add and Done (see above), has_err_ and err_. A
  // gort::Mutex: a Go from outside the group may wait here for a fiber's
  // Finished(), and a Mutex may be destroyed while the Unlock that let the
  // destroyer in is still returning.
  Mutex mu_;
  bool has_err_ = false;  // guarded by mu_
  absl::Status err_;      // guarded by mu_
};

}  // namespace gort

#endif  // GORT_SYNC_ERR_GROUP_H_
