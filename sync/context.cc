#include "sync/context.h"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "chan/time.h"
#include "sched/internal/futex.h"

// Invariants:
//  - A Node holds its parent strongly, so every ancestor of a live context is
//    alive; `canceler` (the nearest cancellable self-or-ancestor, or null) and
//    `registered_with` are therefore plain pointers.
//  - A CancelNode's `err`, `state`, `children` and `timer` are written only
//    under its `mu`. `state` goes kLive -> kCancelling -> kCancelled within
//    one critical section of `mu`, and never back. `err` is written once,
//    before the store-release of kCancelling, and never again: a reader that
//    load-acquires a state other than kLive may read `err` without the lock.
//  - Cancellation order: the node's `mu`, then its descendants' (breadth
//    first, each after its parent's) are taken and held to the end; each
//    gets `err` and kCancelling and has its children list detached; then,
//    descendants before ancestors, each gets kCancelled, its `done` closed,
//    and its `mu` released. No recursion: a deep tree costs no stack.
//    Err() is one load-acquire when the state is kLive or kCancelled, and
//    takes `mu` (so waits for the end of the cancellation) when it sees
//    kCancelling. Hence, as in Go (whose Err() always takes the lock):
//    Done() closed implies Err() non-OK; Err() non-OK implies every
//    descendant is cancelled; a child cancelled by its parent finds the
//    parent's Err() non-OK.
//  - A live, uncancelled CancelNode with a cancellable ancestor is in exactly
//    that ancestor's (`registered_with`'s) list of children: an intrusive
//    doubly-linked list (`sib_prev`/`sib_next`/`in_parent`, guarded by the
//    ancestor's `mu`), so registering and leaving allocate nothing and cost
//    O(1). It leaves the list when it is cancelled (its parent detached the
//    whole list, or it unlinks itself after releasing its own `mu`) or is
//    destroyed uncancelled (its destructor unlinks it). Parents hold
//    children weakly (weak_from_this() when cancelling): no reference
//    cycles.
//  - Lock order: an ancestor's `mu` before a descendant's. A cancellation
//    holds the `mu` of every node of the subtree it cancels (so once a cancel
//    function has returned, every descendant is cancelled); a child takes its
//    parent's `mu` only after releasing its own (to leave the list); a new
//    child is cancelled under its parent's `mu` at birth. Strong references
//    to the children are dropped only after every `mu` is released, so no
//    destructor runs under the lock of the node it would unlink itself from.
//  - Releasing a chain of ancestors is iterative too (~Node).
//  - A pending deadline timer holds its node strongly; the cycle node ->
//    timer -> node is broken when the node is cancelled (the timer is moved
//    out and stopped) or the timer fires (which cancels it).

namespace gort {
namespace context_internal {

using sched_internal::Lock;

struct Node {
  virtual ~Node();

  std::shared_ptr<Node> parent;  // null: a child of Background
  CancelNode* canceler = nullptr;
  absl::Time deadline = absl::InfiniteFuture();  // effective (earliest)
  // For value nodes:
  const void* key = nullptr;
  std::shared_ptr<const void> value;
};

struct CancelNode final : Node, std::enable_shared_from_this<CancelNode> {
  ~CancelNode() override;

  // Cancels this node and its descendants with `err` unless it is already
  // cancelled. If `remove_from_parent`, also leaves registered_with's
  // children. Iterative: a deep tree costs no stack.
  void Cancel(bool remove_from_parent, const absl::Status& err);

  // Under mu, on a live node: sets `err` and kCancelling, takes the timer
  // out into `timers`, and detaches the children into `kids` (strong
  // references; children being destroyed are skipped).
  void BeginCancelLocked(const absl::Status& e,
                         std::vector<std::shared_ptr<CancelNode>>& kids,
                         std::vector<Timer>& timers);

  // Under mu: puts `c` at the head of our children.
  void LinkChildLocked(CancelNode* c) {
    c->sib_prev = nullptr;
    c->sib_next = children;
    if (children != nullptr) children->sib_prev = c;
    children = c;
    c->in_parent = true;
  }
  // Under mu: takes `c` out of our children if it is still there.
  void UnlinkChildLocked(CancelNode* c) {
    if (!c->in_parent) return;
    (c->sib_prev != nullptr ? c->sib_prev->sib_next : children) = c->sib_next;
    if (c->sib_next != nullptr) c->sib_next->sib_prev = c->sib_prev;
    c->sib_prev = c->sib_next = nullptr;
    c->in_parent = false;
  }
  // Takes this node out of registered_with's children.
  void LeaveParent() {
    std::lock_guard<Lock> l(registered_with->mu);
    registered_with->UnlinkChildLocked(this);
  }

  DoneChan done = MakeChan<std::monostate>();
  // Done() channels of descendants destroyed uncancelled while someone
  // still held their channel: closed when we are cancelled (see ~CancelNode).
  // Guarded by mu.
  struct Orphan {
    DoneChan done;
    Orphan* next;
  };
  Orphan* orphans = nullptr;
  // Entries in `orphans`; when it passes prune_at, entries nobody else
  // holds any more are dropped, so a parent that lives long and is never
  // cancelled keeps only channels still held.
  std::size_t orphan_count = 0;
  std::size_t prune_at = 16;
  enum : std::uint8_t { kLive, kCancelling, kCancelled };
  // Stores are releases and pair with the load-acquire in Err().
  std::atomic<std::uint8_t> state{kLive};
  bool live() const { return state.load(std::memory_order_relaxed) == kLive; }
  CancelNode* registered_with = nullptr;  // the ancestor we registered in

  Lock mu;
  absl::Status err;                // set once (see Invariants)
  CancelNode* children = nullptr;  // head of the list of our children
  Timer timer;                     // the deadline's, if has_timer
  bool has_timer = false;

  // Our links in registered_with's list: guarded by registered_with->mu.
  CancelNode* sib_prev = nullptr;
  CancelNode* sib_next = nullptr;
  bool in_parent = false;
};

namespace {

// Never destroyed: copies share the representation, which is thus never
// freed (Debian's Abseil is not instrumented for TSan).
const absl::Status& CanceledError() {
  static const absl::Status* const s =
      new absl::Status(absl::CancelledError("context canceled"));
  return *s;
}
const absl::Status& DeadlineError() {
  static const absl::Status* const s = new absl::Status(
      absl::DeadlineExceededError("context deadline exceeded"));
  return *s;
}

const DoneChan& NilDone() {
  static const DoneChan* const nil = new DoneChan();
  return *nil;
}

// A new cancellable child of `parent`, registered in parent's canceler (or
// cancelled at once if that is cancelled already).
std::shared_ptr<CancelNode> NewCancelNode(const std::shared_ptr<Node>& parent,
                                          absl::Time deadline) {
  auto c = std::make_shared<CancelNode>();
  c->parent = parent;
  c->canceler = c.get();
  c->deadline = deadline;
  CancelNode* p = parent == nullptr ? nullptr : parent->canceler;
  if (p == nullptr) return c;  // Background: nothing can cancel it
  std::lock_guard<Lock> l(p->mu);
  if (!p->live()) {  // under p->mu: kCancelled
    // Lock order parent -> child; the child has no children yet.
    c->Cancel(/*remove_from_parent=*/false, p->err);
  } else {
    c->registered_with = p;
    p->LinkChildLocked(c.get());
  }
  return c;
}

}  // namespace

namespace {

using Orphan = CancelNode::Orphan;

// Moves the entries of *list whose channel nobody else holds any more to
// the front of *garbage, keeping the others in order. Returns how many stay.
std::size_t PruneUnheld(Orphan** list, Orphan** garbage) {
  std::size_t kept = 0;
  Orphan** link = list;
  while (Orphan* o = *link) {
    if (chan_internal::CoreOf(o->done)->Shared()) {
      link = &o->next;
      ++kept;
    } else {
      *link = o->next;
      o->next = *garbage;
      *garbage = o;
    }
  }
  return kept;
}

void DeleteOrphans(Orphan* list) {
  while (list != nullptr) delete std::exchange(list, list->next);
}

}  // namespace

CancelNode::~CancelNode() {
  // Cancelled: our Done() is closed, our orphans too, and our parent (or
  // our own Cancel) took us out of its list.
  if (!live()) return;
  // Destroyed uncancelled: no handle to us is left, but a task may still
  // hold our Done() channel (or a descendant's, now in `orphans`) and wait
  // for it to close when an ancestor is cancelled, as it would in Go, where
  // the parent keeps its children reachable. Hand those channels to the
  // ancestor we are registered in; none held: nothing to keep.
  Orphan* garbage = nullptr;  // released at the end, without any lock
  Orphan* mine = std::exchange(orphans, nullptr);
  std::size_t n = PruneUnheld(&mine, &garbage);
  if (chan_internal::CoreOf(done)->Shared()) {
    auto* o = new (std::nothrow) Orphan{done, mine};
    if (o == nullptr) {
      std::fputs("fatal: gort: out of memory in a context's destructor\n",
                 stderr);
      std::abort();
    }
    mine = o;
    ++n;
  }
  if (registered_with == nullptr) {  // nothing can cancel us: never closes
    DeleteOrphans(mine);
    DeleteOrphans(garbage);
    return;
  }
  bool ancestor_cancelled;
  {
    CancelNode* a = registered_with;
    std::lock_guard<Lock> l(a->mu);
    // Out of the list already: the ancestor detached us while cancelling
    // (its weak_from_this().lock() failed) and holds mu until kCancelled.
    ancestor_cancelled = !in_parent;
    a->UnlinkChildLocked(this);
    if (!ancestor_cancelled && mine != nullptr) {
      Orphan* tail = mine;
      while (tail->next != nullptr) tail = tail->next;
      tail->next = a->orphans;
      a->orphans = std::exchange(mine, nullptr);
      a->orphan_count += n;
      if (a->orphan_count > a->prune_at) {
        a->orphan_count = PruneUnheld(&a->orphans, &garbage);
        a->prune_at = 2 * a->orphan_count + 16;
      }
    }
  }
  DeleteOrphans(garbage);
  // The ancestor was cancelled: so are we, in effect; close what is held.
  for (Orphan* o = mine; o != nullptr; o = o->next) o->done.Close();
  DeleteOrphans(mine);
}

Node::~Node() {
  // Release the chain of ancestors iteratively: letting each destructor
  // release its own parent would recurse once per level, and a long chain
  // would overflow a fiber's stack. use_count() == 1: we hold the last
  // strong reference (a concurrent weak_from_this().lock() by a cancelling
  // ancestor may still revive a CancelNode; that is harmless, as Cancel
  // never reads `parent`, and its registered_with is that live ancestor).
  std::shared_ptr<Node> p = std::move(parent);
  while (p != nullptr && p.use_count() == 1) {
    std::shared_ptr<Node> next = std::move(p->parent);
    p.reset();  // its destructor finds no parent to release
    p = std::move(next);
  }
}

void CancelNode::BeginCancelLocked(
    const absl::Status& e, std::vector<std::shared_ptr<CancelNode>>& kids,
    std::vector<Timer>& timers) {
  err = e;
  // store-release: pairs with the load-acquire in Context::Err(), which
  // then reads `err` (after waiting for mu while the cancellation runs).
  state.store(kCancelling, std::memory_order_release);
  if (has_timer) {
    timers.push_back(std::move(timer));
    has_timer = false;
  }
  // Our orphans close with our own Done() (Cancel's last loop).
  // Detach the whole list. A failed lock(): that child is being destroyed
  // (its destructor waits for mu, then finds itself out of the list, and
  // closes its own Done() if someone still holds it).
  while (CancelNode* k = children) {
    UnlinkChildLocked(k);
    if (std::shared_ptr<CancelNode> strong = k->weak_from_this().lock()) {
      kids.push_back(std::move(strong));
    }
  }
}

void CancelNode::Cancel(bool remove_from_parent, const absl::Status& e) {
  std::vector<std::shared_ptr<CancelNode>> kids;  // released at the end
  std::vector<CancelNode*> locked;  // nodes whose mu we hold, in lock order
  std::vector<Timer> timers;
  mu.lock();
  if (!live()) {
    mu.unlock();
    return;
  }
  BeginCancelLocked(e, kids, timers);
  locked.push_back(this);
  // The subtree, breadth first, each node locked after its parent (the lock
  // order) and kept locked: no child can register under a node being
  // cancelled, and Err() of a node in kCancelling waits for the end.
  for (std::size_t i = 0; i < kids.size(); ++i) {
    CancelNode* k = kids[i].get();
    k->mu.lock();
    if (!k->live()) {  // it cancelled itself and is about to leave us
      k->mu.unlock();
      continue;
    }
    k->BeginCancelLocked(e, kids, timers);
    locked.push_back(k);
  }
  // Descendants before ancestors: when a node turns kCancelled, its whole
  // subtree is; and its Done() closes after that.
  for (auto it = locked.rbegin(); it != locked.rend(); ++it) {
    CancelNode* n = *it;
    // store-release: pairs with the load-acquire in Context::Err().
    n->state.store(kCancelled, std::memory_order_release);
    n->done.Close();
    Orphan* orphans = std::exchange(n->orphans, nullptr);
    for (Orphan* o = orphans; o != nullptr; o = o->next) o->done.Close();
    DeleteOrphans(orphans);
    n->orphan_count = 0;
    n->mu.unlock();
  }
  for (Timer& t : timers) t.Stop();
  if (remove_from_parent && registered_with != nullptr) LeaveParent();
  // `kids` and `timers` go here, after every unlock: a destructor they
  // trigger takes its parent's mu.
}

const void* FindValue(const Node* node, const void* key) {
  for (; node != nullptr; node = node->parent.get()) {
    if (node->key == key) return node->value.get();
  }
  return nullptr;
}

Context NewValueContext(const Context& parent, const void* key,
                        std::shared_ptr<const void> value) {
  auto n = std::make_shared<Node>();
  n->parent = parent.node_;
  if (n->parent != nullptr) {
    n->canceler = n->parent->canceler;
    n->deadline = n->parent->deadline;
  }
  n->key = key;
  n->value = std::move(value);
  return Context(std::move(n));
}

std::size_t NumChildrenForTest(const Context& ctx) {
  if (ctx.node_ == nullptr || ctx.node_->canceler == nullptr) return 0;
  CancelNode* c = ctx.node_->canceler;
  std::lock_guard<Lock> l(c->mu);
  std::size_t n = 0;
  for (CancelNode* k = c->children; k != nullptr; k = k->sib_next) ++n;
  return n;
}

std::size_t NumOrphansForTest(const Context& ctx) {
  if (ctx.node_ == nullptr || ctx.node_->canceler == nullptr) return 0;
  CancelNode* c = ctx.node_->canceler;
  std::lock_guard<Lock> l(c->mu);
  std::size_t n = 0;
  for (CancelNode::Orphan* o = c->orphans; o != nullptr; o = o->next) ++n;
  return n;
}

}  // namespace context_internal

using context_internal::CancelNode;

const DoneChan& Context::Done() const {
  if (node_ == nullptr || node_->canceler == nullptr) {
    return context_internal::NilDone();
  }
  return node_->canceler->done;
}

absl::Status Context::Err() const {
  if (node_ == nullptr || node_->canceler == nullptr) return absl::OkStatus();
  CancelNode* c = node_->canceler;
  // load-acquire: pairs with the store-releases in CancelNode::Cancel; `err`
  // is written before them and never again.
  const std::uint8_t s = c->state.load(std::memory_order_acquire);
  if (s == CancelNode::kLive) return absl::OkStatus();
  if (s == CancelNode::kCancelling) {
    // Descendants are being cancelled: wait until they all are.
    std::lock_guard<sched_internal::Lock> l(c->mu);
  }
  return c->err;
}

std::optional<absl::Time> Context::Deadline() const {
  if (node_ == nullptr || node_->deadline == absl::InfiniteFuture()) {
    return std::nullopt;
  }
  return node_->deadline;
}

void CancelFunc::operator()() const {
  if (node_ == nullptr) return;
  // A reference of our own for the whole cancellation: the caller may not
  // own this CancelFunc, and a waiter that sees the context cancelled (the
  // state is stored first) may drop the last other handles at once, while
  // we still close Done(), unlock and leave the parent.
  const std::shared_ptr<context_internal::CancelNode> node = node_;
  node->Cancel(/*remove_from_parent=*/true, context_internal::CanceledError());
}

std::pair<Context, CancelFunc> WithCancel(const Context& parent) {
  const absl::Time deadline =
      parent.node_ == nullptr ? absl::InfiniteFuture() : parent.node_->deadline;
  std::shared_ptr<CancelNode> c =
      context_internal::NewCancelNode(parent.node_, deadline);
  return {Context(c), CancelFunc(c)};
}

std::pair<Context, CancelFunc> WithDeadline(const Context& parent,
                                            absl::Time deadline) {
  const absl::Time inherited =
      parent.node_ == nullptr ? absl::InfiniteFuture() : parent.node_->deadline;
  // The parent's deadline comes first (or there is none): a plain child.
  if (inherited <= deadline) return WithCancel(parent);
  std::shared_ptr<CancelNode> c =
      context_internal::NewCancelNode(parent.node_, deadline);
  const absl::Duration d = deadline - absl::Now();
  if (d <= absl::ZeroDuration()) {
    c->Cancel(/*remove_from_parent=*/true, context_internal::DeadlineError());
  } else {
    std::lock_guard<sched_internal::Lock> l(c->mu);
    if (c->live()) {
      // The timer may fire before AfterFunc returns: its Cancel then waits
      // for c->mu, and finds the timer stored.
      c->has_timer = true;
      c->timer = AfterFunc(d, [c] {
        c->Cancel(/*remove_from_parent=*/true,
                  context_internal::DeadlineError());
      });
    }
  }
  return {Context(c), CancelFunc(c)};
}

std::pair<Context, CancelFunc> WithTimeout(const Context& parent,
                                           absl::Duration timeout) {
  return WithDeadline(parent, absl::Now() + timeout);
}

}  // namespace gort
