// gort's G/M/P scheduler. Design: docs/sched.md; reference: Go's
// runtime/proc.go (schedule, findRunnable, wakep, handoffp, sysmon).
//
// Invariants:
//  - A G is in at most one place at a time: running on exactly one M, or in
//    one run queue (a P's ring or runnext, or the global queue), or parked
//    (referenced only by whoever holds its ParkTicket or its timer), or in a
//    free list. It is published to a run queue only after its fiber has
//    switched away (in an AfterSwitch hook), never while on its own stack.
//  - An M runs Gs only while it holds a P (m->p, p->m). A P is held by one
//    M, or is in the idle list (status kIdle), or is in kSyscall: still
//    pointed to by the M in a Blocking call, which gets it back by CAS
//    kSyscall->kRunning unless the monitor retook it first (CAS to kIdle).
//  - Scheduling decisions that may sleep run on the M's g0 (its thread
//    fiber); a G switches directly to another G only when one is ready in
//    its P's local queue, and otherwise switches to g0.
//  - sched.lock guards the global run queue, the idle P and M lists and the
//    list of all Ms. nmspinning/npidle are read without it (seq_cst: the
//    "no lost wake-up" argument pairs the spinning M's decrement-then-
//    recheck with the readier's push-then-check in WakeP).
//  - G structs are never freed while the runtime runs (their Parker may be
//    named by a stale ticket); they are recycled through free lists.

#include "sched/sched.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include "absl/time/clock.h"
#include "fiber/fiber.h"
#include "fiber/internal/fatal.h"
#include "sched/internal/futex.h"
#include "sched/internal/test_hooks.h"
#include "sched/internal/timer_queue.h"
#include "sched/runq.h"

namespace gort {
namespace sched_internal {
namespace {

using fiber_internal::Fatal;

constexpr int kMaxProcs = 256;
constexpr int kGlobalQueueTick = 61;
constexpr int kRunnextCap = 3;
constexpr int kGFreeBatch = 32;  // Gs per free-list magazine
constexpr std::int64_t kLongRunningNs = 10'000'000;
constexpr std::int64_t kSyscallRetakeNs = 20'000;
// Stacks the monitor trims per round, past a pool's high-water mark or idle
// for a whole period: 1.3-2.7 ms of madvise on this project's VM
// (2026-11-28), which the rest of the round (P retakes, overdue timers)
// waits for.
constexpr std::size_t kTrimChunkStacks = 2048;

struct M;
struct P;

enum class GStatus : std::uint8_t { kIdle, kRunnable, kRunning, kWaiting, kSyscall, kDead };

struct ExitSignal {};  // thrown by Exit()

// RunMain's function and result, on RunMain's caller's stack: only the main
// G points to one, so the other Gs do not carry its fields.
struct MainState {
  absl::AnyInvocable<int() &&> fn;
  int result = 0;
  std::atomic<std::uint32_t> done{0};
};

// A parked G's deadline. It lives in the G (dense, huge-page-backed
// memory), not on the parked fiber's stack: sifting a heap of a million
// timers rewrites `index` of the timers it moves, and on fibers' stacks
// each of those was a cache and TLB miss in its own page.
struct Timer {
  std::int64_t when = 0;
  Parker* parker = nullptr;
  std::uint64_t seq = 0;
  // The queue it is in; changes only with both locked (MoveTimersToP0).
  std::atomic<P*> p{nullptr};
  int index = -1;  // in p's TimerQueue; -1 when not queued
  std::atomic<bool> fired{false};  // store-release after the last touch
};


// A G's first cache line holds exactly what Go() writes (fn, id, creation
// site, status, schedlink), so a G spawned on one P and run on another moves
// one line between cores; the rest is written by the M that runs it.
struct alignas(64) G {
  G() : parker(Parker::Kind::kFiber, this) {}
  ~G() {
    if (task != nullptr) task(task_storage, /*run=*/false);
  }
  // --- Written by the spawner (Go). ---
  TaskFn task = nullptr;  // owns task_storage's callable while non-null
  std::uint64_t id = 0;
  G* schedlink = nullptr;  // free lists
  const char* created_file = nullptr;
  int created_line = 0;
  std::atomic<GStatus> status{GStatus::kIdle};
  // Runs on a compact stack: never switched to or from directly by another
  // G, so that switch hooks and the scheduler run on g0's stack instead.
  bool compact_stack = false;
  // The callable: its first 24 bytes share the first cache line.
  alignas(void*) unsigned char task_storage[kTaskInlineBytes];
  // --- Written by the M that runs it. ---
  // Stored through std::atomic_ref (PrefetchQueueHead reads it from other
  // Ms); the M that owns g reads it plainly.
  Fiber* fiber = nullptr;
  // While g is off its M (parked or yielded): its fiber's saved frame
  // pointer, for fiber dumps (FiberInfo). Null while it runs.
  std::atomic<void*> saved_fp{nullptr};
  M* locked_m = nullptr;
  int lock_count = 0;
  bool park_aborted = false;  // the park in progress (below) was cut short
  Parker parker;
  // RunMain's fiber only; null again once it finished.
  MainState* main = nullptr;
  // The park in progress, for ParkHook (written by g before it switches).
  std::uint64_t park_seq = 0;
  ParkCommitFn park_commit = nullptr;
  void* park_commit_arg = nullptr;
  void (*park_unlock)(void*) = nullptr;  // ParkUnderLock's, for its hook
  Timer timer;  // a park's deadline (HookPark)
  // The global free list: a batch's first G links the next batch and
  // knows its length.
  G* batchlink = nullptr;
  int batch_size = 0;
};
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"
static_assert(sizeof(G) == 256, "a G is four cache lines");
static_assert(offsetof(G, task_storage) + 24 <= 64 &&
                  offsetof(G, status) < 64,
              "G's spawn-written fields and a callable's first 24 bytes "
              "must share one cache line");
#pragma GCC diagnostic pop

// A P's timers (internal/timer_queue.h: a FIFO run of the deadlines added
// in order, a 4-ary heap for the others), guarded by `lock`.
struct TimerHeap {
  Lock lock;
  TimerQueue<Timer> queue;
  // The earliest `when`, for lock-free looks from every M (RunAllTimers on
  // each trip through g0): away from `lock`, which each park takes, and
  // stored only when it changes, so that a sleeper added behind the
  // earliest timer does not take the line from readers.
  alignas(64) std::atomic<std::int64_t> next_when{kNoDeadline};
  // On next_when's line, read with it. Raised by the owner when its last
  // look left due timers unfired (more were due than its ring had room
  // for, or than one look fires): other busy Ms then fire them without
  // waiting kHelpTimersLag. Lowered by the owner's next look that leaves
  // none due, in g0. (Lowering it at the 61st-schedule check too, once
  // helpers had drained the heap, made it flap and the lag come back: the
  // compact million sleepers' p99 was 5-57 ms in six rounds, against
  // 0.6-25 without, 0.6-2.8 in four of five.) Stored only when it changes.
  std::atomic<bool> backlog{false};

  // Called with `lock` held.
  void Add(Timer* t) {
    queue.Add(t);
    PublishNextWhen();
  }
  void Remove(Timer* t) {
    queue.Remove(t);
    PublishNextWhen();
  }
  void PublishNextWhen() {
    const std::int64_t when = queue.EarliestWhen();
    if (next_when.load(std::memory_order_relaxed) != when) {
      next_when.store(when, std::memory_order_release);
    }
  }
};
static_assert(TimerQueue<Timer>::kNone == kNoDeadline);

enum PStatus : int { kPIdle, kPRunning, kPSyscall, kPRetired };

struct P {
  int id = 0;
  RunQueue<G> runq;
  std::atomic<int> status{kPIdle};
  M* m = nullptr;
  P* link = nullptr;  // idle list
  std::uint32_t schedtick = 0;
  int runnext_streak = 0;
  std::atomic<std::uint64_t> sched_count{0};   // for the monitor, thieves
  // Gs that exited on this P. Written only by its owner (a load and a
  // store-release, no read-modify-write: an exit on one P never touches a
  // line another P writes); LiveGs() sums the Ps.
  std::atomic<std::int64_t> exited{0};
  std::atomic<std::uint64_t> syscall_count{0};
  // The G this P runs; 0 while its M is on g0 (finding work, firing
  // timers), which the monitor must not report as a long-running fiber.
  std::atomic<std::uint64_t> current_g{0};
  // Free Gs (Go's gFree), as two magazines of up to kGFreeBatch: `gfree`
  // fills and drains one G at a time; `gfree_full` is a full spare. Whole
  // magazines move to and from the global free list, one lock per batch.
  G* gfree = nullptr;
  int gfree_count = 0;
  G* gfree_full = nullptr;
  TimerHeap timers;
  // The monitor's view.
  std::uint64_t seen_sched = 0, seen_syscall = 0;
  std::int64_t seen_sched_at = 0, seen_syscall_at = 0;
  bool reported_long = false;
  // StartM's hand-off to the monitor (start_handoff); under sched.lock.
  P* start_link = nullptr;
  bool start_spinning = false;
  // RunqPutSlow's half ring on its way to the global queue: here, not on the
  // stack of the fiber that readies a G, which may be a compact one.
  RunQueue<G>::Overflow overflow;  // owner only
};

struct M {
  int id = 0;
  std::thread thread;
  Fiber* g0 = nullptr;
  P* p = nullptr;
  std::atomic<P*> nextp{nullptr};  // set under sched.lock, or by StartLockedM
  G* curg = nullptr;
  G* pending = nullptr;  // set by this M: a G locked to another M
  G* handed = nullptr;   // set by StartLockedM: our locked G, with nextp
  std::atomic<std::uint32_t> note{0};  // 1: woken
  bool spinning = false;
  bool in_blocking = false;
  M* idle_next = nullptr;  // on Sched::midle; under sched.lock
  G* locked_g = nullptr;
  std::uint32_t rand = 0;
};

struct GQueueChunk;

// The header of an arena of Gs (NewGStorage).
struct GArena {
  GArena* next = nullptr;  // the arena made after this one
};

struct Sched {
  Lock lock;
  // The monitor's own ring, used only by the monitor thread: it steals the
  // Gs queued behind a long-running fiber into it (RescueQueued).
  RunQueue<G> rescue;
  GQueueChunk* runq_head = nullptr;  // see GlobRunqPutBatch
  GQueueChunk* runq_tail = nullptr;
  GQueueChunk* runq_spare_chunk = nullptr;
  std::atomic<std::int64_t> runq_size{0};
  P* pidle = nullptr;
  std::atomic<int> npidle{0};
  // Idle Ms, most recently stopped first, chained by M::idle_next (no
  // allocation when more Ms than ever before stop at once).
  M* midle = nullptr;
  int nmidle = 0;
  std::vector<M*> allm;
  std::atomic<int> nmspinning{0};
  // The monitor while it takes Gs from a P's queue (RescueQueued): with
  // nmspinning, the thieves a P's owner must see none of before putting its
  // queue in exclusive mode (SetExclusive).
  std::atomic<int> rescuing{0};
  P* allp[kMaxProcs] = {};
  std::atomic<int> procs{0};  // MaxProcs: Ps [0, procs) may run Gs
  // Ps ever made, [0, nallp): a P past `procs` may still hold work until
  // its M notices it retired, so stealing, timers and the monitor scan all.
  std::atomic<int> nallp{0};
  // Live Gs = created - exited (LiveGs). Exits are counted per P (P::exited)
  // and, for the rare exit without a P, here; separate cache lines, so that
  // a spawner and the Ps its Gs exit on do not share one.
  alignas(64) std::atomic<std::int64_t> ngo_created{0};
  alignas(64) std::atomic<std::int64_t> ngo_exited{0};
  alignas(64) std::atomic<std::int64_t> handoffs{0};
  std::atomic<std::int64_t> long_running{0};
  std::atomic<std::int64_t> trace_lines{0};
  std::atomic<bool> stopping{false};
  // Threads inside ReadyOnGlobalQueue (plain threads, the chan timer
  // thread, Ms without a P, readying or spawning a G). Shutdown waits for
  // 0: such a thread still reads the scheduler (WakeP) after the G it
  // queued has run and exited. A line of its own: `stopping` before it is
  // read on every trip through g0, `timer_sleeper` after it on every timer
  // added.
  alignas(64) std::atomic<int> outside_readies{0};
  alignas(64) std::atomic<M*> timer_sleeper{nullptr};
  std::atomic<std::int64_t> timer_sleeper_until{kNoDeadline};
  RuntimeOptions options;
  // Every G ever made lives in one of these arenas (NewGStorage), in the
  // order made: ForEachG visits them all (for ForEachFiber and for freeing
  // at Shutdown). Under allg_lock.
  Lock allg_lock;
  GArena* first_arena = nullptr;
  GArena* last_arena = nullptr;
  char* arena_next = nullptr;  // the next free slot of last_arena
  Lock gfree_lock;
  G* gfree = nullptr;  // full batches of kGFreeBatch, chained by batchlink
  std::atomic<std::uint64_t> goid{1};
  // The monitor.
  std::thread sysmon;
  std::atomic<std::uint32_t> sysmon_note{0};
  std::atomic<bool> sysmon_idle_sleep{false};
  // Ps whose M the monitor is to start (StartM from a compact fiber),
  // linked by start_link; written under `lock` (read without it only to
  // see that it is empty).
  std::atomic<P*> start_handoff{nullptr};
  std::atomic<int> in_blocking{0};
};

Sched* g_sched = nullptr;
std::atomic<bool> g_running{false};
std::mutex g_start_mu;  // Start/Shutdown/SetMaxProcs

}  // namespace
}  // namespace sched_internal
}  // namespace gort

// The M running on this thread (null on plain threads), read uncacheably:
// a fiber that parks may resume under another M.
GORT_DEFINE_THREAD_LOCAL(void*, gort_sched_current_m)
namespace gort {
namespace sched_internal {
namespace {
GORT_DECLARE_THREAD_LOCAL(void*, gort_sched_current_m, CurrentMSlot)

M* GetM() { return static_cast<M*>(*CurrentMSlot()); }
void SetM(M* m) { *CurrentMSlot() = m; }

G* CurrentG() {
  M* m = GetM();
  return m != nullptr ? m->curg : nullptr;
}

void NoteWakeup(std::atomic<std::uint32_t>* note) {
  note->store(1, std::memory_order_release);
  FutexWake(note);
}
// Returns false on timeout. Resets the note.
bool NoteSleep(std::atomic<std::uint32_t>* note, std::int64_t deadline) {
  for (;;) {
    if (note->exchange(0, std::memory_order_acquire) == 1) return true;
    if (deadline != kNoDeadline && MonoNow() >= deadline) return false;
    FutexWait(note, 0, deadline);
  }
}

std::uint32_t FastRand(M* m) {
  m->rand ^= m->rand << 13;
  m->rand ^= m->rand >> 17;
  m->rand ^= m->rand << 5;
  return m->rand;
}

// --- Global run queue (sched.lock held) --------------------------------------

// The global run queue is a FIFO of G pointers in chunks, not a list linked
// through the Gs: taking a batch then reads contiguous pointers instead of
// chasing one G's cache line to find the next (each line last written by
// the spawning P: a serial cross-core miss per G).
struct GQueueChunk {
  static constexpr int kCapacity = 500;  // ~4 KB
  GQueueChunk* next = nullptr;
  int head = 0, tail = 0;
  G* items[kCapacity];
};

GQueueChunk* NewChunk() {
  if (GQueueChunk* c = g_sched->runq_spare_chunk) {
    g_sched->runq_spare_chunk = nullptr;
    return c;
  }
  // sched.lock is a spin lock: no throwing (or waiting long) under it.
  auto* c = new (std::nothrow) GQueueChunk;
  if (c == nullptr) Fatal("gort: out of memory for the global run queue");
  return c;
}

void FreeChunk(GQueueChunk* c) {
  if (g_sched->runq_spare_chunk == nullptr) {
    c->next = nullptr;
    c->head = c->tail = 0;
    g_sched->runq_spare_chunk = c;
  } else {
    delete c;
  }
}

void GlobRunqPutBatch(G** gs, int n) {
  for (int i = 0; i < n;) {
    GQueueChunk* c = g_sched->runq_tail;
    if (c == nullptr || c->tail == GQueueChunk::kCapacity) {
      GQueueChunk* fresh = NewChunk();
      if (c != nullptr) {
        c->next = fresh;
      } else {
        g_sched->runq_head = fresh;
      }
      g_sched->runq_tail = c = fresh;
    }
    int k = std::min(n - i, GQueueChunk::kCapacity - c->tail);
    std::copy(gs + i, gs + i + k, c->items + c->tail);
    c->tail += k;
    i += k;
  }
  g_sched->runq_size.fetch_add(n, std::memory_order_seq_cst);
}

void GlobRunqPut(G* g) { GlobRunqPutBatch(&g, 1); }

// Takes up to n Gs, oldest first, into out. Returns how many.
int GlobRunqTake(G** out, int n) {
  int taken = 0;
  while (taken < n) {
    GQueueChunk* c = g_sched->runq_head;
    if (c == nullptr) break;
    int k = std::min(n - taken, c->tail - c->head);
    std::copy(c->items + c->head, c->items + c->head + k, out + taken);
    c->head += k;
    taken += k;
    if (c->head == c->tail && (c->tail == GQueueChunk::kCapacity ||
                               c == g_sched->runq_tail)) {
      g_sched->runq_head = c->next;
      if (c == g_sched->runq_tail) g_sched->runq_tail = nullptr;
      FreeChunk(c);
    }
  }
  g_sched->runq_size.fetch_sub(taken, std::memory_order_relaxed);
  return taken;
}

// Takes a fair share of the global queue: returns one G and moves up to
// `max - 1` more into p's local queue (Go's globrunqget).
G* GlobRunqGet(P* p, int max) {
  std::int64_t size = g_sched->runq_size.load(std::memory_order_relaxed);
  if (size == 0) return nullptr;
  int procs = g_sched->procs.load(std::memory_order_relaxed);
  std::int64_t n = std::min<std::int64_t>(size, size / procs + 1);
  if (max > 0 && n > max) n = max;
  n = std::min<std::int64_t>(n, RunQueue<G>::capacity() / 2);
  G* batch[RunQueue<G>::capacity() / 2];
  int taken = GlobRunqTake(batch, static_cast<int>(n));
  if (taken == 0) return nullptr;
  // Their lines were last written elsewhere: fetch them all at once.
  for (int i = 0; i < taken; ++i) __builtin_prefetch(batch[i], 1, 3);
  G* first = batch[0];
  auto local = p->runq.local();
  RunQueue<G>::Overflow overflow;
  for (int i = 1; i < taken; ++i) {
    if (!local.Push(batch[i], overflow)) {  // cannot happen: ring has room
      GlobRunqPutBatch(overflow.items, overflow.count);
    }
  }
  return first;
}

// --- Idle P and M lists (sched.lock held) -------------------------------------

void PIdlePut(P* p) {
  p->status.store(kPIdle, std::memory_order_relaxed);
  p->m = nullptr;
  p->link = g_sched->pidle;
  g_sched->pidle = p;
  g_sched->npidle.fetch_add(1, std::memory_order_seq_cst);
}

P* PIdleGet() {
  P* p = g_sched->pidle;
  if (p != nullptr) {
    g_sched->pidle = p->link;
    p->link = nullptr;
    g_sched->npidle.fetch_sub(1, std::memory_order_seq_cst);
  }
  return p;
}

M* MIdleGet() {
  M* m = g_sched->midle;
  if (m == nullptr) return nullptr;
  g_sched->midle = m->idle_next;
  m->idle_next = nullptr;
  --g_sched->nmidle;
  return m;
}

void AcquireP(M* m, P* p) {
  p->m = m;
  p->current_g.store(0, std::memory_order_relaxed);  // g0 runs it for now
  p->status.store(kPRunning, std::memory_order_release);
  m->p = p;
}

P* ReleaseP(M* m) {
  P* p = m->p;
  m->p = nullptr;
  p->m = nullptr;
  return p;
}

// --- Run queues --------------------------------------------------------------

// The full-ring path of RunqPut, out of line: its 1 KiB batch stays off the
// hot path's frame.
__attribute__((noinline)) bool RunqPutSlow(P* p, G* g) {
  RunQueue<G>::Overflow& overflow = p->overflow;
  if (!p->runq.local().Push(g, overflow)) {
    std::lock_guard<Lock> l(g_sched->lock);
    GlobRunqPutBatch(overflow.items, overflow.count);
    return true;
  }
  return false;
}

void SetExclusive(P* p, bool solo);

// Opens p's queue if it is still exclusive from when p was alone and
// MaxProcs has grown since: wherever p's owner may run or queue a G with
// its next pop far off (after taking p over, and at every push). Executed
// by p's owner.
inline void OpenIfGrown(P* p) {
  if (p->runq.local().exclusive() &&
      g_sched->procs.load(std::memory_order_relaxed) != 1) [[unlikely]] {
    SetExclusive(p, false);
  }
}

// Puts g in p's local queue (in runnext if `next`), spilling half of a full
// ring to the global queue. Executed only by p's owner M. Returns whether
// the ring was full.
inline bool RunqPut(P* p, G* g, bool next) {
  auto local = p->runq.local();
  // A G queued on a P that is still exclusive after MaxProcs grew (its
  // fiber has not reached a pop since) must be stealable: the fiber may
  // go on to wait for it without a scheduling point.
  OpenIfGrown(p);
  if (next) {
    g = local.PushNext(g);
    if (g == nullptr) return false;
  }
  if (local.TryPush(g)) return false;
  return RunqPutSlow(p, g);
}

void StartM(P* p, bool spinning);

// Wakes an idle P to look for work, unless one is already spinning.
void WakeP() {
  if (g_sched->npidle.load(std::memory_order_seq_cst) == 0) return;
  int expected = 0;
  if (g_sched->nmspinning.load(std::memory_order_seq_cst) != 0 ||
      !g_sched->nmspinning.compare_exchange_strong(expected, 1,
                                                   std::memory_order_seq_cst)) {
    return;
  }
  StartM(nullptr, /*spinning=*/true);
}

std::atomic<void (*)()> g_outside_ready_hook{nullptr};

// Queues g on the global queue and wakes an idle P for it: for callers
// without a P (plain threads, //chan's timer thread, Ms in Blocking).
// Counted in outside_readies from before g is queued (so before it can run,
// exit, and let Shutdown begin) until our last touch of the scheduler.
void ReadyOnGlobalQueue(G* g) {
  Sched* const sched = g_sched;
  sched->outside_readies.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<Lock> l(sched->lock);
    GlobRunqPut(g);
  }
  if (auto* hook = g_outside_ready_hook.load(std::memory_order_relaxed)) {
    hook();
  }
  WakeP();
  sched->outside_readies.fetch_sub(1, std::memory_order_release);
}

// Makes g runnable (Go's ready): into the caller's P's runnext when the
// caller runs on a P, else into the global queue.
void ReadyG(G* g, bool next = true) {
  g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
  M* m = GetM();
  if (m != nullptr && m->p != nullptr && !m->in_blocking &&
      m->p->status.load(std::memory_order_relaxed) == kPRunning) {
    RunqPut(m->p, g, next);
    WakeP();
    return;
  }
  ReadyOnGlobalQueue(g);
}

// --- Timers --------------------------------------------------------------------

void WakeTimerSleeper(std::int64_t when) {
  if (when < g_sched->timer_sleeper_until.load(std::memory_order_acquire)) {
    if (M* s = g_sched->timer_sleeper.load(std::memory_order_acquire)) {
      NoteWakeup(&s->note);
      return;
    }
  }
}

void AddTimer(P* p, Timer* t) {
  t->p.store(p, std::memory_order_relaxed);
  {
    std::lock_guard<Lock> l(p->timers.lock);
    p->timers.Add(t);
  }
  // An M sleeping until a later deadline must recompute. If no M sleeps
  // with a deadline, p's own M becomes the sleeper when it runs out of
  // work; a P stuck in a long-running fiber is covered by the monitor.
  if (g_sched->timer_sleeper.load(std::memory_order_acquire) != nullptr) {
    WakeTimerSleeper(t->when);
  }
}

// Called by the timer's owner after it woke up, before its frame dies.
void CancelTimer(Timer* t) {
  if (t->fired.load(std::memory_order_acquire)) return;
  for (;;) {
    P* p = t->p.load(std::memory_order_acquire);
    std::lock_guard<Lock> l(p->timers.lock);
    if (t->p.load(std::memory_order_relaxed) != p) continue;  // moved
    if (t->index != -1) p->timers.Remove(t);
    return;
  }
}

// A G woken by its timer has usually slept long enough for its stack to
// have left the caches (and its page the TLB): resuming it would stall on
// its control block, then on each frame it returns through, one miss after
// another. This starts fetching those lines in parallel: the control
// block, and up to 2 KiB of frames from the switch's saved frame pointer
// towards the top of the stack. Prefetches never fault, so a stale address
// costs nothing, and `g` may be a G that another M is taking or running
// meanwhile (PrefetchQueueHead): its `fiber` is read atomically, and
// `saved_fp` is null while it runs.
void PrefetchParkedStack(G* g) {
  const char* block = reinterpret_cast<const char*>(
      std::atomic_ref<Fiber*>(g->fiber).load(std::memory_order_relaxed));
  if (block == nullptr) return;
  __builtin_prefetch(block, 1, 2);
  __builtin_prefetch(block + 64, 1, 2);
  const char* fp =
      static_cast<const char*>(g->saved_fp.load(std::memory_order_relaxed));
  if (fp == nullptr || fp >= block) return;
  constexpr std::ptrdiff_t kFrameBytes = 2048;
  const char* end = block - fp > kFrameBytes ? fp + kFrameBytes : block;
  // From below the frame pointer: the switching function's locals (up to
  // 256 bytes are covered), then the saved context (the switch frame, on
  // x86-64 below the red zone) lie there.
  constexpr std::ptrdiff_t kBelow =
      256 + static_cast<std::ptrdiff_t>(fiber_internal::kSwitchFrameSpan);
  for (const char* a = fp - kBelow; a < end; a += 64) {
    __builtin_prefetch(a, 1, 2);
  }
}

// Called by p's owner when it has just taken a G from its ring: starts
// fetching the stack of the G that will run after it (the ring's head now),
// for which the prefetch on its ReadyG, often hundreds of Gs earlier, may
// have been evicted again. With a million 100 ms sleepers the resume of each
// woken fiber otherwise stalled on its control block (`to->state_` in the
// switch: 12% of the default-stack demo's profile). Measured 2026-11-28,
// alternating binaries: docs/sched.md, "Timers".
inline void PrefetchQueueHead(RunQueue<G>::Local& local) {
  if (G* next = local.PeekHead()) PrefetchParkedStack(next);
}

// Puts p's queue in exclusive mode (RunQueue: pops without a CAS) while it
// is the only P, and takes it out when MaxProcs grows. Executed by p's
// owner. Thieves are the spinning Ms (counted in nmspinning while they
// steal) and the monitor (counted in `rescuing`).
__attribute__((noinline)) void SetExclusive(P* p, bool solo) {
  auto local = p->runq.local();
  if (solo) {
    // Also back out if MaxProcs grew meanwhile (the caller's load of procs
    // was relaxed): SetMaxProcs stores it seq_cst before waking anyone.
    local.TryEnterExclusive([] {
      return g_sched->nmspinning.load(std::memory_order_seq_cst) == 0 &&
             g_sched->rescuing.load(std::memory_order_seq_cst) == 0 &&
             g_sched->procs.load(std::memory_order_seq_cst) == 1;
    });
    return;
  }
  local.LeaveExclusive();
  // Ms started for the new Ps may have found this queue closed and gone
  // back to sleep: call one for what is queued here.
  if (local.Size() > 0) WakeP();
}

// Takes the next G from p's local queue: runnext first, unless runnext has
// pre-empted the ring kRunnextCap times in a row (two fibers that keep
// readying each other would otherwise starve every G queued behind them).
// Every pop of the local queue goes through here: G to G (NextLocal),
// through g0 (FindRunnable), and after a spinning M fired timers into its
// ring (StealWork). Executed only by p's owner. Inline: it is
// on the path of every yield and hand-off.
__attribute__((always_inline)) inline G* PopLocal(P* p) {
  auto local = p->runq.local();
  // Out of exclusive mode at the first pop after MaxProcs grows; into it,
  // when MaxProcs is 1, at a pop on the 61-tick (the check costs a load of
  // a shared line that the pops of a many-P run need not pay).
  if (local.exclusive()) {
    if (g_sched->procs.load(std::memory_order_relaxed) != 1) [[unlikely]] {
      SetExclusive(p, false);
    }
  } else if (p->schedtick % kGlobalQueueTick == 0 && p->id == 0 &&
             g_sched->procs.load(std::memory_order_relaxed) == 1) {
    SetExclusive(p, true);  // (P 0 only: never a P being retired)
  }
  const bool capped = p->runnext_streak >= kRunnextCap;
  G* g = local.Pop(/*use_next=*/!capped);
  if (g == nullptr && capped) g = local.Pop(/*use_next=*/true);  // ring empty
  if (g == nullptr) return nullptr;
  PrefetchQueueHead(local);
  p->runnext_streak = local.last_pop_was_next() ? p->runnext_streak + 1 : 0;
  return g;
}

// Fires up to `budget` (at most 64) of p's due timers; returns how many.
// Any M may call it.
int RunTimers(P* p, std::int64_t now, int budget = 64) {
  if (p->timers.next_when.load(std::memory_order_acquire) > now) return 0;
  budget = std::min(budget, 64);
  struct Fired {
    Parker* parker;
    std::uint64_t seq;
  };
  Fired fired[64];
  int n = 0;
  {
    std::lock_guard<Lock> l(p->timers.lock);
    while (n < budget && p->timers.queue.EarliestWhen() <= now) {
      Timer* t = p->timers.queue.Earliest();
      p->timers.Remove(t);
      fired[n++] = {t->parker, t->seq};
      // store-release: after this the owner may return and free `t`.
      t->fired.store(true, std::memory_order_release);
    }
  }
  for (int i = 0; i < n; ++i) {
    if (fired[i].parker->Finish(fired[i].seq, Parker::kTimedOut) ==
        Parker::kParked) {
      G* g = static_cast<G*>(fired[i].parker->owner());
      PrefetchParkedStack(g);
      ReadyG(g, /*next=*/false);
    }
  }
  return n;
}

std::int64_t EarliestTimer() {
  std::int64_t when = kNoDeadline;
  int n = g_sched->nallp.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    when = std::min(when, g_sched->allp[i]->timers.next_when.load(
                              std::memory_order_acquire));
  }
  return when;
}

// How many due timers to fire into a ring holding `size` Gs: half the free
// room (none when 16 slots or fewer are left), so that under overload the
// backlog waits in the timer heaps, in deadline order, instead of
// overflowing to the global queue.
int TimerBudget(std::uint32_t size) {
  const int room =
      static_cast<int>(RunQueue<G>::capacity()) - static_cast<int>(size);
  return room > 16 ? room / 2 : 0;
}

// How overdue a timer of a P that another M is running must be before a
// busy M fires it (unless that P's owner flagged a backlog). The owner
// fires it on its next trip through g0, which its 61st-schedule check
// makes once a timer of its own is due: helping earlier moves the heap's
// lock and lines to the helper's core and back at the owner's next
// AddTimer, a miss on each side, for a timer about to fire anyway.
constexpr std::int64_t kHelpTimersLag = 500'000;  // ns

// Fires due timers of every P, `budget` in all (64 per P at most), starting
// at P `start` mod the P count (callers vary it, so that no P is always
// served last). With `self` (the caller's P, busy with its own queue):
// self's timers first, and those of a P that another M is running only
// once its earliest is kHelpTimersLag overdue or its owner has left due
// ones it had no room for (`backlog`); an idle P's, or one in a blocking
// call, as soon as due. Whether any fired.
bool RunAllTimers(std::int64_t now, int budget = 1 << 30,
                  std::uint32_t start = 0, P* self = nullptr) {
  int fired = self != nullptr ? RunTimers(self, now, budget) : 0;
  const int n = g_sched->nallp.load(std::memory_order_acquire);
  const int first = static_cast<int>(start % static_cast<std::uint32_t>(n));
  for (int k = 0; k < n && fired < budget; ++k) {
    P* p = g_sched->allp[(first + k) % n];
    if (p == self) continue;
    const std::int64_t when =
        p->timers.next_when.load(std::memory_order_acquire);
    if (when > now) continue;
    // (status shares a line with what p's owner writes at every switch:
    // looked at only once p has a timer due.)
    if (self != nullptr && when > now - kHelpTimersLag &&
        !p->timers.backlog.load(std::memory_order_relaxed) &&
        p->status.load(std::memory_order_relaxed) == kPRunning) {
      continue;
    }
    fired += RunTimers(p, now, budget - fired);
  }
  return fired > 0;
}

// --- Ms ------------------------------------------------------------------------

void MStart(M* m);

// Starts an M to run p (or an idle P if p is null).
void StartM(P* p, bool spinning) {
  M* m = nullptr;
  bool handoff = false;
  {
    std::lock_guard<Lock> l(g_sched->lock);
    if (g_sched->stopping.load(std::memory_order_acquire)) {
      // Shutdown sets `stopping` before it snapshots allm under this lock:
      // a thread started now would never be joined (and would outlive the
      // runtime it points into).
      if (spinning) g_sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst);
      return;
    }
    if (p == nullptr) {
      p = PIdleGet();
      if (p == nullptr) {
        if (spinning) g_sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst);
        return;
      }
    }
    m = MIdleGet();
    const G* g = m == nullptr ? CurrentG() : nullptr;
    if (g != nullptr && g->compact_stack) {
      // Starting a thread takes more stack than a compact fiber has (and
      // unwinding a failure far more): the monitor starts it, as Go's
      // newmHandoff starts Ms for locked threads.
      p->start_spinning = spinning;
      p->start_link = g_sched->start_handoff.load(std::memory_order_relaxed);
      g_sched->start_handoff.store(p, std::memory_order_relaxed);
      handoff = true;
    } else if (m == nullptr) {
      // Failing to start a thread is fatal, as in Go ("newosproc"): this
      // runs under sched.lock, inside Go() and Unpark(), which promise not
      // to throw once the fiber is queued.
      try {
        m = new M;
        m->id = static_cast<int>(g_sched->allm.size());
        m->rand = 0x9E3779B9u * (m->id + 1);
        g_sched->allm.push_back(m);
        m->nextp.store(p, std::memory_order_relaxed);
        m->spinning = spinning;
        m->thread = std::thread(MStart, m);
      } catch (const std::exception& e) {
        Fatal("gort: cannot start a thread for the scheduler: %s", e.what());
      }
      return;
    } else {
      // Under the lock: a woken M reads nextp under it (StopM).
      m->nextp.store(p, std::memory_order_relaxed);
      m->spinning = spinning;
    }
  }
  NoteWakeup(handoff ? &g_sched->sysmon_note : &m->note);
}

// Starts the Ms that compact fibers asked for (StartM). Run by the monitor.
void StartHandedOffMs() {
  if (g_sched->start_handoff.load(std::memory_order_relaxed) == nullptr) {
    return;
  }
  P* p;
  {
    std::lock_guard<Lock> l(g_sched->lock);
    p = g_sched->start_handoff.exchange(nullptr, std::memory_order_relaxed);
  }
  while (p != nullptr) {
    P* next = p->start_link;
    p->start_link = nullptr;
    StartM(p, p->start_spinning);
    p = next;
  }
}

// Parks the calling M (on g0, without a P) until it is given a P, or until
// `deadline` or a poke (for the timer sleeper). Returns whether it got a P.
// Stale wake-ups are harmless: after any wake-up the M looks, under the
// lock, whether it was given a P, and otherwise takes itself off the list.
bool StopM(M* m, std::int64_t deadline) {
  {
    std::lock_guard<Lock> l(g_sched->lock);
    if (g_sched->stopping.load(std::memory_order_acquire)) return false;
    m->idle_next = g_sched->midle;
    g_sched->midle = m;
    ++g_sched->nmidle;
  }
  NoteSleep(&m->note, deadline);
  P* p;
  {
    std::lock_guard<Lock> l(g_sched->lock);
    p = m->nextp.exchange(nullptr, std::memory_order_relaxed);
    if (p == nullptr) {
      for (M** link = &g_sched->midle; *link != nullptr;
           link = &(*link)->idle_next) {
        if (*link == m) {
          *link = m->idle_next;
          m->idle_next = nullptr;
          --g_sched->nmidle;
          break;
        }
      }
      return false;
    }
  }
  AcquireP(m, p);
  return true;
}

void HandoffP(P* p);

// A retired P's timers move to P 0 (never retired).
void MoveTimersToP0(P* p) {
  P* p0 = g_sched->allp[0];
  {
    std::lock_guard<Lock> lt0(p0->timers.lock);
    std::lock_guard<Lock> lt(p->timers.lock);
    while (!p->timers.queue.empty()) {
      // Earliest first: p0's run takes them in order.
      Timer* t = p->timers.queue.Earliest();
      p->timers.Remove(t);
      t->p.store(p0, std::memory_order_relaxed);  // both queues locked
      p0->timers.Add(t);
    }
  }
  // An M sleeping until a later deadline (its scan may have missed these
  // timers while they moved) must recompute.
  WakeTimerSleeper(p0->timers.next_when.load(std::memory_order_relaxed));
}

bool PRetired(P* p) {
  return p->id >= g_sched->procs.load(std::memory_order_relaxed);
}


// Moves p's free Gs (both magazines) to the global free list. By p's owner.
void FlushGFree(P* p) {
  G* batches[2] = {p->gfree, p->gfree_full};
  int sizes[2] = {p->gfree_count, kGFreeBatch};
  p->gfree = p->gfree_full = nullptr;
  p->gfree_count = 0;
  std::lock_guard<Lock> l(g_sched->gfree_lock);
  for (int i = 0; i < 2; ++i) {
    if (batches[i] == nullptr) continue;
    batches[i]->batch_size = sizes[i];
    batches[i]->batchlink = g_sched->gfree;
    g_sched->gfree = batches[i];
  }
}

// Retires p, which the caller owns, if SetMaxProcs retired its id: its
// free Gs and its queue go to the global lists and its timers to P 0;
// `owner`, if not null, is the M holding p, which gives it up. Returns
// false if MaxProcs grew again meanwhile and p stays. Decided under
// sched.lock, as SetMaxProcs decides which retired Ps to bring back.
bool RetireP(P* p, M* owner) {
  {
    std::lock_guard<Lock> l(g_sched->lock);
    if (!PRetired(p)) return false;
    FlushGFree(p);  // while we own it: free Gs stay usable by the others
    if (owner != nullptr) ReleaseP(owner);
    p->status.store(kPRetired, std::memory_order_release);
    auto local = p->runq.local();
    while (G* g = local.Pop()) GlobRunqPut(g);
  }
  MoveTimersToP0(p);
  WakeP();
  return true;
}

// --- Finding work (Go's findRunnable), on g0 -----------------------------------

G* StealWork(M* m) {
  int procs = g_sched->nallp.load(std::memory_order_acquire);
  P* self = m->p;
  auto local = self->runq.local();
  bool backed_off = false;
  for (int round = 0; round < 4; ++round) {
    bool last = round == 3;
    std::uint32_t start = FastRand(m);
    for (int i = 0; i < procs; ++i) {
      P* victim = g_sched->allp[(start + i) % procs];
      if (victim == self) continue;
      auto thief = victim->runq.stealer();
      if (thief.Exclusive()) continue;  // the only P until just now
      if (last &&
          victim->status.load(std::memory_order_relaxed) == kPRunning &&
          thief.RingEmpty() && (thief.HasNext() || !backed_off)) {
        // About to take a running P's lone runnext: give its owner a moment
        // to run it first (Go's runqgrab pauses 3 us, for every such
        // victim). Without the pause, a fiber that readies its partner and
        // then parks (channel ping-pong) has the partner stolen by the M it
        // just woke, so every hand-off crosses threads. Once per call we
        // also pause at a running P with nothing queued: a spinner that
        // finds nothing would otherwise give up its P at once, to be woken
        // by a syscall for the next ready. While we pause we count as
        // spinning, so further readies wake nobody. (Until 2026-11-28 this
        // tested Size() == 0, which counts runnext, so a lone runnext was
        // taken at once: a select over two producers kept both Ps busy
        // passing every item across cores; docs/sched.md, "Runnext and
        // locality".)
        //
        // After the pause, a lone runnext is taken only if its owner has
        // not scheduled meanwhile. If it has, the owner is passing control
        // along a chain of readies (ping-pong: each G readies its partner
        // into runnext and parks), and the G now in runnext runs there
        // within a switch; taking it would move the chain to this M and make
        // every later hand-off cross cores. If the owner has not scheduled
        // for the whole pause, its G is busy and the runnext G has waited:
        // take it, as Go does. (A thief that leaves it and gives up sees
        // it again in FindRunnable's re-check and comes back.)
        const std::uint64_t ticks =
            victim->sched_count.load(std::memory_order_relaxed);
        usleep(3);
        backed_off = true;
        if (victim->sched_count.load(std::memory_order_relaxed) != ticks) {
          if (G* g = thief.StealInto(local, false)) return g;
          continue;
        }
      }
      if (G* g = thief.StealInto(local, last)) return g;
    }
    if (RunAllTimers(MonoNow(), TimerBudget(local.Size()), FastRand(m))) {
      if (G* g = PopLocal(self)) return g;
    }
  }
  return nullptr;
}

void ResetSpinning(M* m) {
  m->spinning = false;
  if (g_sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst) == 1) {
    WakeP();  // the last spinning M to find work wakes another
  }
}

G* FindRunnable(M* m) {
top:
  if (g_sched->stopping.load(std::memory_order_acquire)) return nullptr;
  P* p = m->p;
  if (PRetired(p)) {
    // Stop spinning first: RetireP's WakeP must not count us as
    // the spinning M that will find the work (its Gs, or the G that got us
    // woken), since we are about to sleep without looking.
    if (m->spinning) ResetSpinning(m);
    if (RetireP(p, m)) goto nop;
  }
  {
    // Due timers go into this P's ring while it has room (TimerBudget). A
    // full ring still takes a few once one is over 1 ms overdue, so that
    // runnable fibers that keep it full cannot hold sleepers back for long.
    // With work queued here our own timers go first, and another busy P's
    // wait for kHelpTimersLag or its owner's backlog flag; with none queued
    // (nothing else to do), and for the 8 a full ring takes, every P's
    // alike. Then our flag: whether we left due timers unfired.
    std::int64_t now = MonoNow();
    const std::uint32_t queued = p->runq.local().Size();
    int budget = TimerBudget(queued);
    P* self = queued > 0 ? p : nullptr;
    if (budget == 0 && EarliestTimer() < now - 1'000'000) {
      budget = 8;
      self = nullptr;
    }
    if (budget > 0) RunAllTimers(now, budget, p->schedtick, self);
    const bool backlog =
        p->timers.next_when.load(std::memory_order_relaxed) <= now;
    if (backlog != p->timers.backlog.load(std::memory_order_relaxed)) {
      p->timers.backlog.store(backlog, std::memory_order_relaxed);
    }
    if ((p->schedtick + 1) % kGlobalQueueTick == 0 &&
        g_sched->runq_size.load(std::memory_order_relaxed) > 0) {
      std::lock_guard<Lock> l(g_sched->lock);
      if (G* g = GlobRunqGet(p, 1)) return g;
    }
    if (G* g = PopLocal(p)) return g;
    if (g_sched->runq_size.load(std::memory_order_relaxed) > 0) {
      std::lock_guard<Lock> l(g_sched->lock);
      if (G* g = GlobRunqGet(p, 0)) return g;
    }
    // (netpoll hook: poll I/O without blocking here.)
    int procs = g_sched->procs.load(std::memory_order_relaxed);
    if (m->spinning ||
        2 * g_sched->nmspinning.load(std::memory_order_relaxed) <
            procs - g_sched->npidle.load(std::memory_order_relaxed)) {
      if (!m->spinning) {
        m->spinning = true;
        g_sched->nmspinning.fetch_add(1, std::memory_order_seq_cst);
      }
      if (G* g = StealWork(m)) return g;
    }
    // Nothing: give up the P (or retire it, if SetMaxProcs shrank
    // meanwhile: a retired P on the idle list would be handed out again).
    {
      std::lock_guard<Lock> l(g_sched->lock);
      if (g_sched->runq_size.load(std::memory_order_relaxed) > 0) {
        if (G* g = GlobRunqGet(p, 0)) return g;
      }
      if (!PRetired(p)) {
        ReleaseP(m);
        PIdlePut(p);
      }
    }
    if (m->p != nullptr) goto top;  // retired: top gives it up
    if (m->spinning) {
      m->spinning = false;
      g_sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst);
      // Re-check every queue after dropping "spinning": a G readied just
      // before our decrement saw nmspinning != 0 and did not wake anyone.
      int procs2 = g_sched->nallp.load(std::memory_order_seq_cst);
      for (int i = 0; i < procs2; ++i) {
        // (An exclusive queue is its running owner's alone: SetExclusive
        // wakes an M for it when it opens up.)
        auto q = g_sched->allp[i]->runq.stealer();
        if ((q.Size() > 0 && !q.Exclusive()) ||
            g_sched->runq_size.load(std::memory_order_seq_cst) > 0) {
          P* p2;
          {
            std::lock_guard<Lock> l(g_sched->lock);
            p2 = PIdleGet();
          }
          if (p2 != nullptr) {
            AcquireP(m, p2);
            m->spinning = true;
            g_sched->nmspinning.fetch_add(1, std::memory_order_seq_cst);
            goto top;
          }
          break;
        }
      }
    }
  }
nop:
  if (m->spinning) {  // e.g. started spinning with a P that then retired
    m->spinning = false;
    g_sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst);
  }
  for (;;) {
    // Sleep until given a P; the first M to sleep while timers are pending
    // and a P is idle sleeps only until the earliest one (Go's
    // netpoll(delay) role). With every P busy, the Ps fire their own timers
    // (on each trip through g0, or every 61st schedule; the monitor those a
    // P stuck in one fiber leaves overdue): an M without a P that fired
    // them put every G they woke on the global queue, behind newer work,
    // and went straight back to the next due timer, which kept the heaps
    // drained into that queue under load (2026-11-28: 100 ms sleepers on
    // compact stacks woke up to 300 ms late).
    std::int64_t until = EarliestTimer();
    M* expected = nullptr;
    bool sleeper = until != kNoDeadline &&
                   g_sched->npidle.load(std::memory_order_acquire) > 0 &&
                   g_sched->timer_sleeper.compare_exchange_strong(expected, m);
    if (sleeper) {
      g_sched->timer_sleeper_until.store(until, std::memory_order_release);
      // Re-read: a timer added before we became the sleeper did not wake us.
      until = std::min(until, EarliestTimer());
    }
    bool got_p = StopM(m, sleeper ? until : kNoDeadline);
    if (sleeper) {
      g_sched->timer_sleeper_until.store(kNoDeadline, std::memory_order_release);
      g_sched->timer_sleeper.store(nullptr, std::memory_order_release);
    }
    if (g_sched->stopping.load(std::memory_order_acquire)) return nullptr;
    if (got_p) goto top;
    // Timed out: timers are due. Take an idle P and fire them into its
    // queue (FindRunnable); with none idle, the busy Ps will.
    P* p2;
    {
      std::lock_guard<Lock> l(g_sched->lock);
      p2 = PIdleGet();
    }
    if (p2 != nullptr) {
      AcquireP(m, p2);
      goto top;
    }
  }
}

// --- Switching -------------------------------------------------------------------

void GExitHook(Fiber* from, void*);
void ParkHook(Fiber* from, void* arg);
void YieldHook(Fiber* from, void*);

// The next G from the local queue, without blocking, honouring the runnext
// cap and the every-61st-tick global queue check. Null means "go to g0".
// Executed only by p's owner.
G* NextLocal(M* m, P* p) {
  if (m->locked_g != nullptr || PRetired(p)) return nullptr;
  if ((p->schedtick + 1) % kGlobalQueueTick == 0) {
    if (g_sched->runq_size.load(std::memory_order_relaxed) > 0) return nullptr;
    if (p->timers.next_when.load(std::memory_order_relaxed) <= MonoNow()) {
      return nullptr;
    }
  }
  G* g = PopLocal(p);
  if (g == nullptr) return nullptr;
  if (g->locked_m != nullptr && g->locked_m != m) {
    m->pending = g;  // g0 hands it to its own M
    return nullptr;
  }
  return g;
}

void RunG(G* g);
void GExit(Fiber* self);

// Gives g its fiber and stack when it is about to run for the first time.
// Deferred from Go() so that Gs waiting in run queues hold no stack: a
// spawner that starts a million fibers before any runs then touches a
// million G structs (dense, huge-page backed), not a million fresh stack
// pages, and a G that runs to completion recycles one warm stack.
__attribute__((noinline)) void CreateFiber(G* g) {
  Fiber::Options opts;
  opts.stack_size = g_sched->options.stack_size;
  opts.compact_stack = g->compact_stack;
  Fiber* f = Fiber::Create([g] { RunG(g); }, opts);
  f->set_user_data(g);
  f->set_exit_handler(&GExit);
  // Atomic: PrefetchQueueHead may read it from another M.
  std::atomic_ref<Fiber*>(g->fiber).store(f, std::memory_order_relaxed);
}

inline void EnsureFiber(G* g) {
  if (g->fiber == nullptr) CreateFiber(g);
}

inline void MarkRunning(M* m, G* g) {
  m->curg = g;
  g->saved_fp.store(nullptr, std::memory_order_relaxed);
  g->status.store(GStatus::kRunning, std::memory_order_relaxed);
  P* p = m->p;
  ++p->schedtick;
  p->sched_count.store(p->schedtick, std::memory_order_relaxed);
  p->current_g.store(g->id, std::memory_order_relaxed);
}

// Switches the current G away: to the next local G if there is one, else to
// g0. `hook(from, arg)` runs on the other side. Executed by the current G.
// A compact G switches only to and from g0 (Go's mcall): the hook, the
// search for work and the next G's first steps all stay off its small stack,
// and no hook ever runs on top of a compact G's frames.
void SwitchAway(bool exiting, Fiber::AfterSwitch hook, void* arg) {
  M* m = GetM();
  G* next =
      m->p != nullptr && !m->curg->compact_stack ? NextLocal(m, m->p) : nullptr;
  if (next != nullptr && next->compact_stack) {
    m->pending = next;  // g0 runs it, without a hook on its stack
    next = nullptr;
  }
  Fiber* target;
  if (next != nullptr) {
    EnsureFiber(next);
    MarkRunning(m, next);
    target = next->fiber;
  } else {
    m->curg = nullptr;
    if (m->p != nullptr) m->p->current_g.store(0, std::memory_order_relaxed);
    target = m->g0;
  }
  if (exiting) Fiber::ExitTo(target, hook, arg);
  Fiber::SwitchTo(target, hook, arg);
}

// --- G lifecycle ---------------------------------------------------------------

// G structs come from arenas of huge-page-eligible memory: a million Gs
// queued at once then cost a few hundred page faults, not ~60,000 (a fresh
// page costs 10-20 us to fault in on this VM). An arena's first slot is its
// header, which chains the arenas; G slots follow, filled in order. Making
// a G never calls malloc: a steady spawn/exit load that outgrows the free
// Gs now and then (a P's magazines fill before they spill) allocates
// nothing (SpawnExitBurstsReuseGsAndStacks counts operator new).
constexpr std::size_t kGArenaBytes = 32u << 20;
constexpr std::size_t kGSlot = (sizeof(G) + 63) & ~std::size_t{63};
static_assert(sizeof(GArena) <= kGSlot);

char* GArenaSlots(GArena* a) { return reinterpret_cast<char*>(a) + kGSlot; }
char* GArenaEnd(GArena* a) {
  return reinterpret_cast<char*>(a) + kGArenaBytes / kGSlot * kGSlot;
}

// Called with allg_lock held.
G* NewGStorage() {
  if (g_sched->last_arena == nullptr ||
      g_sched->arena_next == GArenaEnd(g_sched->last_arena)) {
    void* mem = mmap(nullptr, kGArenaBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) Fatal("gort: out of memory for fiber control blocks");
    madvise(mem, kGArenaBytes, MADV_HUGEPAGE);  // a hint; fine if refused
    auto* arena = new (mem) GArena;
    (g_sched->last_arena != nullptr ? g_sched->last_arena->next
                                    : g_sched->first_arena) = arena;
    g_sched->last_arena = arena;
    g_sched->arena_next = GArenaSlots(arena);
  }
  G* g = new (g_sched->arena_next) G;
  g_sched->arena_next += kGSlot;
  return g;
}

// Calls fn(g) for every G ever made, in the order made. Called with
// allg_lock held (or, at Shutdown, with no other thread left).
template <typename Fn>
void ForEachG(Fn fn) {
  for (GArena* a = g_sched->first_arena; a != nullptr; a = a->next) {
    char* end = a == g_sched->last_arena ? g_sched->arena_next : GArenaEnd(a);
    for (char* slot = GArenaSlots(a); slot < end; slot += kGSlot) {
      fn(reinterpret_cast<G*>(slot));
    }
  }
}

G* AllocG() {
  M* m = GetM();
  P* p = m != nullptr && !m->in_blocking ? m->p : nullptr;
  if (p != nullptr) {
    if (p->gfree == nullptr) {
      if (p->gfree_full != nullptr) {
        p->gfree = p->gfree_full;
        p->gfree_full = nullptr;
        p->gfree_count = kGFreeBatch;
      } else {
        std::lock_guard<Lock> l(g_sched->gfree_lock);
        if (G* batch = g_sched->gfree) {
          g_sched->gfree = batch->batchlink;
          batch->batchlink = nullptr;
          p->gfree = batch;
          p->gfree_count = batch->batch_size;
        }
      }
    }
    if (G* g = p->gfree) {
      p->gfree = g->schedlink;
      --p->gfree_count;
      g->schedlink = nullptr;
      // The next AllocG's G, likely last written on another P: start
      // fetching its line (for writing) while this G is set up.
      if (p->gfree != nullptr) __builtin_prefetch(p->gfree, 1, 3);
      return g;
    }
  } else {
    // No P: take one G out of a global batch.
    std::lock_guard<Lock> l(g_sched->gfree_lock);
    if (G* batch = g_sched->gfree) {
      G* g = batch->schedlink;
      if (g != nullptr) {  // leave the (now short) batch in place
        batch->schedlink = g->schedlink;
        --batch->batch_size;
      } else {
        g_sched->gfree = batch->batchlink;
        batch->batchlink = nullptr;
        g = batch;
      }
      g->schedlink = nullptr;
      return g;
    }
  }
  std::lock_guard<Lock> l(g_sched->allg_lock);
  return NewGStorage();
}

// Executed on the M that ran g, after g's fiber is gone (or by AbortSpawn,
// on any thread, for a G that never ran).
void FreeG(G* g) {
  g->status.store(GStatus::kDead, std::memory_order_relaxed);
  std::atomic_ref<Fiber*>(g->fiber).store(nullptr, std::memory_order_relaxed);
  M* m = GetM();
  P* p = m != nullptr && !m->in_blocking ? m->p : nullptr;
  if (p == nullptr) {
    // A batch of one: batches may be short (see AllocG's no-P path).
    std::lock_guard<Lock> l(g_sched->gfree_lock);
    g->schedlink = nullptr;
    g->batch_size = 1;
    g->batchlink = g_sched->gfree;
    g_sched->gfree = g;
    return;
  }
  if (p->gfree_count == kGFreeBatch) {  // a full magazine: set it aside
    G* spill = p->gfree_full;
    p->gfree_full = p->gfree;
    p->gfree = nullptr;
    p->gfree_count = 0;
    if (spill != nullptr) {
      spill->batch_size = kGFreeBatch;
      std::lock_guard<Lock> l(g_sched->gfree_lock);
      spill->batchlink = g_sched->gfree;
      g_sched->gfree = spill;
    }
  }
  g->schedlink = p->gfree;
  p->gfree = g;
  ++p->gfree_count;
}

void GExitHook(Fiber* from, void*) {
  G* g = static_cast<G*>(from->user_data());
  Fiber::Destroy(from);
  FreeG(g);
  // store-release / fetch_add release: LiveGs() reading 0 (acquire) then
  // sees this G's teardown above as done.
  if (P* p = GetM()->p) {
    p->exited.store(p->exited.load(std::memory_order_relaxed) + 1,
                    std::memory_order_release);
  } else {
    g_sched->ngo_exited.fetch_add(1, std::memory_order_acq_rel);
  }
}

// Runs on g's fiber after its function and captures are gone.
void GExit(Fiber* self) {
  G* g = static_cast<G*>(self->user_data());
  M* m = GetM();
  if (g->locked_m != nullptr) {  // exits while locked: unlock
    g->locked_m = nullptr;
    g->lock_count = 0;
    m->locked_g = nullptr;
  }
  SwitchAway(/*exiting=*/true, &GExitHook, nullptr);
}

// An exception escaped g's function: the process ends, as an unrecovered
// panic ends a Go program, with a message that names g as fiber dumps
// (ForEachFiber), the trace and the long-running report do: its id and
// where Go() started it.
[[noreturn]] void UncaughtException(G* g, const char* type,
                                    const char* what) {
  fiber_internal::Fatal(
      "uncaught exception in fiber %llu, started at %s:%d: %s%s%s",
      static_cast<unsigned long long>(g->id),
      g->created_file != nullptr ? g->created_file : "?", g->created_line,
      type, what != nullptr ? ": " : "", what != nullptr ? what : "");
}

void RunG(G* g) {
  TaskFn task = g->task;
  g->task = nullptr;  // the call below destroys it, even if it throws
  try {
    if (MainState* main = g->main) {
      main->result = std::move(main->fn)();
      main->fn = nullptr;
    } else {
      task(g->task_storage, /*run=*/true);
    }
  } catch (const ExitSignal&) {
    if (MainState* main = g->main) main->fn = nullptr;
  } catch (const std::exception& e) {
    UncaughtException(g, typeid(e).name(), e.what());
  } catch (...) {
    UncaughtException(g, "an exception that is not a std::exception",
                      nullptr);
  }
  if (MainState* main = g->main) {
    g->main = nullptr;        // a reused G starts with it null
    NoteWakeup(&main->done);  // RunMain returns: `main` is gone
  }
}

void EnsureStarted();

// Gs created and not yet exited. The exit counts (one per P, plus one for
// exits without a P) only grow, and are all read before `created`: their
// sum is at most the exits so far, `created` at least the creations, so
// the result never undercounts, and 0 means that when the exit counts had
// been read no G was alive.
std::int64_t LiveGs() {
  std::int64_t exited = g_sched->ngo_exited.load(std::memory_order_acquire);
  const int n = g_sched->nallp.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    exited += g_sched->allp[i]->exited.load(std::memory_order_acquire);
  }
  return g_sched->ngo_created.load(std::memory_order_acquire) - exited;
}

// Makes g (from AllocG, its task stored) a live, runnable-to-be G.
void InitG(G* g, TaskFn task, std::source_location site,
           bool compact_stack = false) {
  g->task = task;
  g->compact_stack = compact_stack;
  g->id = g_sched->goid.fetch_add(1, std::memory_order_relaxed);
  g->created_file = site.file_name();
  g->created_line = static_cast<int>(site.line());
  // No fiber (and no stack) until the G first runs: see EnsureFiber.
  g_sched->ngo_created.fetch_add(1, std::memory_order_relaxed);
  // store-release: ForEachFiber reads the fields above once it sees this.
  g->status.store(GStatus::kRunnable, std::memory_order_release);
}

void NoopTask(void*, bool) {}  // RunMain's G runs MainState::fn instead

// --- Parking hooks ------------------------------------------------------------------

// Runs on the next fiber (or g0) once g is off its stack. The park's
// arguments are in g itself, read through the G pointer (not from g's stack:
// see "memory renaming" in docs/fiber.md).
void ParkHook(Fiber* from, void*) {
  G* g = static_cast<G*>(from->user_data());
  // Before g can be made runnable (by the CAS below or by a waker).
  // store-release: a reader that loads it (acquire) may walk the frames.
  g->saved_fp.store(from->SavedFramePointer(), std::memory_order_release);
  const std::uint64_t seq = g->park_seq;
  if (g->park_commit != nullptr && !g->park_commit(g->park_commit_arg)) {
    g->park_aborted = true;  // Park returns kUnparked, whoever else won
    g->parker.Finish(seq, Parker::kUnparked);
    ReadyG(g);
    return;
  }
  const std::uint64_t base = seq << Parker::kStateBits;
  std::uint64_t w = base | Parker::kPreparing;
  if (!g->parker.word_.compare_exchange_strong(w, base | Parker::kParked,
                                               std::memory_order_acq_rel,
                                               std::memory_order_acquire)) {
    ReadyG(g);  // an Unpark or the deadline won while we switched
  }
}

Parker* HookCurrent() {
  G* g = CurrentG();
  return g != nullptr ? &g->parker : nullptr;
}

// The parking fiber's G, running on m; fatal inside Blocking(), where the
// fiber holds its M while it runs outside the scheduler.
G* ParkingG(Parker* p, M* m) {
  G* g = static_cast<G*>(p->owner());
  if (m->in_blocking) {
    Fatal("gort: fiber %llu parks inside Blocking(); Blocking's function must "
          "not use gort's blocking primitives",
          static_cast<unsigned long long>(g->id));
  }
  return g;
}

// ParkUnderLock's half of ParkHook: runs on the next fiber once g is off its
// stack.
void ParkUnderLockHook(Fiber* from, void*) {
  G* g = static_cast<G*>(from->user_data());
  g->saved_fp.store(from->SavedFramePointer(), std::memory_order_release);
  // Before the unlock: the waker takes the lock after it, so it finds the
  // cycle parked and no Unpark can come earlier. From the unlock on, g may
  // be readied and run elsewhere: nothing below touches it.
  g->parker.MarkParkedUnderLock(g->park_seq);
  g->park_unlock(g->park_commit_arg);
}

void HookParkUnderLock(Parker* p, std::uint64_t seq, void (*unlock)(void*),
                       void* arg) {
  G* g = ParkingG(p, GetM());
  g->status.store(GStatus::kWaiting, std::memory_order_relaxed);
  g->park_seq = seq;
  g->park_unlock = unlock;
  g->park_commit_arg = arg;
  SwitchAway(/*exiting=*/false, &ParkUnderLockHook, nullptr);
}

ParkResult HookPark(Parker* p, std::uint64_t seq, ParkCommitFn commit,
                    void* arg, std::int64_t deadline) {
  M* m = GetM();
  G* g = ParkingG(p, m);
  Timer& timer = g->timer;
  if (deadline != kNoDeadline) {
    timer.when = deadline;
    timer.parker = p;
    timer.seq = seq;
    timer.index = -1;
    timer.fired.store(false, std::memory_order_relaxed);
    AddTimer(m->p, &timer);
  }
  g->status.store(GStatus::kWaiting, std::memory_order_relaxed);
  g->park_seq = seq;
  g->park_commit = commit;
  g->park_commit_arg = arg;
  g->park_aborted = false;
  SwitchAway(/*exiting=*/false, &ParkHook, nullptr);
  if (deadline != kNoDeadline) CancelTimer(&timer);
  if (g->park_aborted) return ParkResult::kUnparked;
  return (p->word_.load(std::memory_order_acquire) & Parker::kStateMask) ==
                 Parker::kTimedOut
             ? ParkResult::kTimedOut
             : ParkResult::kUnparked;
}

void HookReady(Parker* p) { ReadyG(static_cast<G*>(p->owner())); }

const SchedulerHooks kHooks = {&HookCurrent, &HookPark, &HookParkUnderLock,
                                &HookReady};

void YieldHook(Fiber* from, void*) {
  G* g = static_cast<G*>(from->user_data());
  g->saved_fp.store(from->SavedFramePointer(), std::memory_order_release);
  g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
  M* m = GetM();
  // Go's Gosched queues globally; we stay local (no lock) unless the local
  // queue is empty and others wait in the global one, which then go first.
  if (m->p != nullptr &&
      (m->p->runq.local().HasWork() ||
       g_sched->runq_size.load(std::memory_order_relaxed) == 0)) {
    RunqPut(m->p, g, /*next=*/false);
  } else {
    std::lock_guard<Lock> l(g_sched->lock);
    GlobRunqPut(g);
  }
}

// Publishes a G leaving a Blocking call without a P: global queue.
void GlobalReadyHook(Fiber* from, void*) {
  G* g = static_cast<G*>(from->user_data());
  g->saved_fp.store(from->SavedFramePointer(), std::memory_order_release);
  g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
  {
    std::lock_guard<Lock> l(g_sched->lock);
    GlobRunqPut(g);
  }
  WakeP();
}

// --- The M's loop (g0) ------------------------------------------------------------

void Execute(M* m, G* g) {
  EnsureFiber(g);
  MarkRunning(m, g);
  Fiber::SwitchTo(g->fiber);
  // Back on g0: the G parked, yielded or exited and its hook has run.
}

// Hands p (held by the calling M) and g (locked to another M) to that M.
void StartLockedM(M* m, G* g) {
  P* p = ReleaseP(m);
  M* lm = g->locked_m;
  lm->handed = g;
  // store-release: publishes `handed` to the locked M.
  lm->nextp.store(p, std::memory_order_release);
  NoteWakeup(&lm->note);
}

void Schedule(M* m) {
  for (;;) {
    if (g_sched->stopping.load(std::memory_order_acquire)) return;
    if (m->locked_g != nullptr) {
      // Our locked G stopped running: give the P away and wait for whoever
      // picks the G up to hand it to us with a P (Go's stoplockedm).
      if (m->p != nullptr) HandoffP(ReleaseP(m));
      P* p;
      while ((p = m->nextp.exchange(nullptr, std::memory_order_acquire)) ==
             nullptr) {
        if (g_sched->stopping.load(std::memory_order_acquire)) return;
        NoteSleep(&m->note, kNoDeadline);
      }
      AcquireP(m, p);
      OpenIfGrown(p);    // handed over without passing FindRunnable
      G* g = m->handed;  // written before nextp's store-release
      m->handed = nullptr;
      Execute(m, g);
      continue;
    }
    if (m->p == nullptr) {
      if (!StopM(m, kNoDeadline)) {
        if (g_sched->stopping.load(std::memory_order_acquire)) return;
        continue;
      }
    }
    G* g = m->pending;
    m->pending = nullptr;
    if (g == nullptr) {
      g = FindRunnable(m);
      if (g == nullptr) return;  // shutdown
    }
    if (m->spinning) ResetSpinning(m);
    if (g->locked_m != nullptr && g->locked_m != m) {
      StartLockedM(m, g);
      continue;  // we have no P now: StopM above
    }
    // A P taken over from another M (idle list, a Blocking hand-off) may
    // still be exclusive from when it was alone: open it before running
    // anything (a G from m->pending, the global queue or a steal was not
    // taken by a pop, which would have opened it).
    OpenIfGrown(m->p);
    Execute(m, g);
  }
}

void MStart(M* m) {
  SetM(m);
  m->g0 = Fiber::Current();
  char name[16];
  std::snprintf(name, sizeof(name), "gort-m%d", m->id);
  pthread_setname_np(pthread_self(), name);
  if (P* p = m->nextp.exchange(nullptr, std::memory_order_acquire)) {
    AcquireP(m, p);
  }
  Schedule(m);
  SetM(nullptr);
}

// Gives up p (taken from an M in a Blocking call, or by a locked M): start
// an M for it if there is work, else make it idle.
void HandoffP(P* p) {
  // SetMaxProcs shrank while p was away: retire it.
  if (PRetired(p) && RetireP(p, nullptr)) return;
  bool work = p->runq.Size() > 0 ||
              g_sched->runq_size.load(std::memory_order_relaxed) > 0 ||
              p->timers.next_when.load(std::memory_order_relaxed) !=
                  kNoDeadline;
  if (work) {
    StartM(p, /*spinning=*/false);
    return;
  }
  int expected = 0;
  if (g_sched->nmspinning.load(std::memory_order_relaxed) +
              g_sched->npidle.load(std::memory_order_relaxed) ==
          0 &&
      g_sched->nmspinning.compare_exchange_strong(expected, 1)) {
    StartM(p, /*spinning=*/true);
    return;
  }
  {
    std::lock_guard<Lock> l(g_sched->lock);
    // Re-check under the lock (Go's handoffp does too): a G queued
    // globally since the check above saw no idle P to wake. A P retired
    // since the check at the top must not go on the idle list.
    if (g_sched->runq_size.load(std::memory_order_relaxed) == 0 &&
        !PRetired(p)) {
      PIdlePut(p);
      return;
    }
  }
  if (PRetired(p) && RetireP(p, nullptr)) return;
  StartM(p, /*spinning=*/false);
}

// --- The monitor (Go's sysmon) -----------------------------------------------------

// Moves the Gs queued on p (ring and runnext) to the global queue, as a
// thief would take them, and wakes a P for them. Monitor thread only.
// Returns whether it moved any.
bool RescueQueued(P* p) {
  auto local = g_sched->rescue.local();
  G* batch[RunQueue<G>::capacity() + 1];
  int moved = 0;
  // Announced as a thief (RunQueue's exclusive mode): a P that is the
  // only one keeps its queue closed (with one P there is nowhere else to
  // run these Gs anyway), and opens it when MaxProcs grows.
  g_sched->rescuing.fetch_add(1, std::memory_order_seq_cst);
  // A bounded number of rounds: the owner may be pushing meanwhile.
  for (int round = 0; round < 8; ++round) {
    G* g = p->runq.stealer().StealInto(local, /*steal_next=*/true);
    if (g == nullptr) break;
    int n = 0;
    batch[n++] = g;
    while (G* h = local.Pop()) batch[n++] = h;
    {
      std::lock_guard<Lock> l(g_sched->lock);
      GlobRunqPutBatch(batch, n);
    }
    moved += n;
  }
  g_sched->rescuing.fetch_sub(1, std::memory_order_seq_cst);
  if (moved > 0) WakeP();
  return moved > 0;
}

void SysmonLoop() {
  std::int64_t delay_ns = 20'000;
  int idle_rounds = 0;
  std::int64_t trace_ns =
      std::int64_t{g_sched->options.sched_trace_ms} * 1'000'000;
  std::int64_t next_trace = trace_ns > 0 ? MonoNow() + trace_ns : kNoDeadline;
  const std::int64_t start = MonoNow();
  std::int64_t next_stack_trim = start + 1'000'000'000;
  bool idle_trim_unfinished = false;
  while (!g_sched->stopping.load(std::memory_order_acquire)) {
    bool long_sleep = delay_ns >= 1'000'000;
    g_sched->sysmon_idle_sleep.store(long_sleep, std::memory_order_release);
    const std::int64_t before = MonoNow();
    std::int64_t wake = before + delay_ns;
    if (g_sched->timer_sleeper.load(std::memory_order_acquire) == nullptr) {
      // No M sleeps on the timers (every P busy): be there when the
      // earliest is 1 ms overdue (Go's sysmon sleeps until timeSleepUntil),
      // but not sooner than the shortest period.
      const std::int64_t t = EarliestTimer();
      if (t != kNoDeadline) {
        wake = std::min(wake, std::max(before + 20'000, t + 1'000'001));
      }
    }
    NoteSleep(&g_sched->sysmon_note, wake);
    g_sched->sysmon_idle_sleep.store(false, std::memory_order_release);
    if (g_sched->stopping.load(std::memory_order_acquire)) break;
    StartHandedOffMs();
    std::int64_t now = MonoNow();
    bool acted = false;
    int procs = g_sched->nallp.load(std::memory_order_acquire);
    for (int i = 0; i < procs; ++i) {
      P* p = g_sched->allp[i];
      int st = p->status.load(std::memory_order_acquire);
      // Not running: the next look at it running is a first look. (Else a
      // P taken off the idle list would count as running since it idled:
      // a false long-running report, and its fresh queue "rescued".)
      if (st != kPRunning) p->seen_sched_at = 0;
      if (st == kPSyscall) {
        std::uint64_t c = p->syscall_count.load(std::memory_order_relaxed);
        if (c != p->seen_syscall) {
          p->seen_syscall = c;
          p->seen_syscall_at = now;
        } else if (now - p->seen_syscall_at >= kSyscallRetakeNs) {
          int expected = kPSyscall;
          if (p->status.compare_exchange_strong(expected, kPIdle,
                                                std::memory_order_acq_rel)) {
            g_sched->handoffs.fetch_add(1, std::memory_order_relaxed);
            p->m = nullptr;
            HandoffP(p);
            acted = true;
          }
        }
      } else if (st == kPRunning) {
        std::uint64_t c = p->sched_count.load(std::memory_order_relaxed);
        // seen_sched_at == 0: first look at this P (its count may still be
        // 0, as our initial seen_sched); not "running since time 0".
        if (c != p->seen_sched || p->seen_sched_at == 0) {
          p->seen_sched = c;
          p->seen_sched_at = now;
          p->reported_long = false;
        } else if (!p->reported_long &&
                   now - p->seen_sched_at >= kLongRunningNs) {
          p->reported_long = true;
          const std::uint64_t g = p->current_g.load(std::memory_order_relaxed);
          // 0: the P's M is on g0 (under ThreadSanitizer a search for work
          // can take 10 ms): no fiber to report.
          if (g != 0) {
            g_sched->long_running.fetch_add(1, std::memory_order_relaxed);
          }
          if (g != 0 && trace_ns > 0) {
            std::fprintf(stderr,
                         "SCHED: fiber %llu has run for %lld ms on P %d "
                         "without a scheduling point\n",
                         static_cast<unsigned long long>(g),
                         static_cast<long long>((now - p->seen_sched_at) /
                                                1'000'000),
                         p->id);
          }
        }
        // A P held by one fiber for that long runs nothing else until the
        // fiber reaches a scheduling point (gort cannot preempt it), and a
        // busy P does not steal: hand what is queued there (a G that fiber
        // readied, say) to the global queue, where the other Ps look.
        // (seen_sched_at is `now` unless the count stood still.)
        if (now - p->seen_sched_at >= kLongRunningNs &&
            p->runq.stealer().Size() > 0 && RescueQueued(p)) {
          acted = true;
        }
      }
    }
    // Trimming (docs/sched.md, "Blocking calls and the monitor"): the
    // stacks past a pool's high-water mark, which Start left to us, then
    // those pooled and unused for a whole period (Go's scavenger: bursts
    // reuse warm stacks, idle RSS still shrinks), in slices of
    // kTrimChunkStacks per round, so that the rest of the round (P retakes,
    // overdue timers) does not wait for a whole trim. A sweep of idle
    // stacks begins every second after the previous one finished.
    if (StackTrimmingPending()) {
      if (TrimExcessStacks(kTrimChunkStacks)) acted = true;
    } else if (now >= next_stack_trim || idle_trim_unfinished) {
      idle_trim_unfinished = TrimIdleStacks(1024, kTrimChunkStacks);
      if (idle_trim_unfinished) {
        acted = true;
      } else {
        next_stack_trim = now + 1'000'000'000;
      }
    }
    // Timers over 1 ms overdue that nobody will fire: no M sleeps on them,
    // and their P has been held by one fiber for that long (gort cannot
    // preempt it), or is idle. Fire them here: ReadyG, with no M, puts the
    // Gs they wake on the global queue, which every busy P looks at within
    // 61 schedules, and wakes an idle P if there is one. A P that keeps
    // scheduling fires its own on its trips through g0 (and others' past
    // kHelpTimersLag or flagged as a backlog);
    // firing those here too put every overdue sleeper on the global queue
    // whenever both Ps were merely busy, behind newer work.
    if (g_sched->timer_sleeper.load(std::memory_order_acquire) == nullptr) {
      for (int i = 0; i < procs; ++i) {
        P* p = g_sched->allp[i];
        if (p->timers.next_when.load(std::memory_order_relaxed) >=
            now - 1'000'000) {
          continue;
        }
        const int st = p->status.load(std::memory_order_acquire);
        const bool stuck = st == kPRunning && p->seen_sched_at != 0 &&
                           now - p->seen_sched_at >= 1'000'000;
        if ((stuck || st == kPIdle) && RunTimers(p, now) > 0) acted = true;
      }
    }
    if (now >= next_trace) {
      SchedStats s = GetSchedStats();
      std::string queues;  // the Ps in use (a retired P's queue is moved)
      for (int i = 0; i < std::min(procs, s.procs); ++i) {
        queues += (i ? " " : "") +
                  std::to_string(g_sched->allp[i]->runq.Size());
      }
      std::fprintf(stderr,
                   "SCHED %lldms: procs=%d idleprocs=%d threads=%d "
                   "spinningthreads=%d idlethreads=%d runqueue=%lld "
                   "fibers=%lld handoffs=%lld longrunning=%lld [%s]\n",
                   static_cast<long long>((now - start) / 1'000'000), s.procs,
                   s.idle_procs, s.threads, s.spinning_threads,
                   s.idle_threads, static_cast<long long>(s.global_runq),
                   static_cast<long long>(s.fibers),
                   static_cast<long long>(s.handoffs),
                   static_cast<long long>(s.long_running), queues.c_str());
      g_sched->trace_lines.fetch_add(1, std::memory_order_relaxed);
      next_trace = now + trace_ns;
    }
    // Go's backoff: 20 us while things happen, doubling to 10 ms when idle,
    // but stay fast while fibers are inside Blocking calls.
    if (acted || g_sched->in_blocking.load(std::memory_order_relaxed) > 0) {
      idle_rounds = 0;
      delay_ns = 20'000;
    } else if (++idle_rounds > 50) {
      delay_ns = std::min<std::int64_t>(delay_ns * 2, 10'000'000);
    }
    if (trace_ns > 0) delay_ns = std::min(delay_ns, trace_ns);
  }
}

// --- Start / stop ----------------------------------------------------------------

int DefaultProcs() {
  if (const char* env = std::getenv("GORT_MAXPROCS")) {
    int n = std::atoi(env);
    if (n >= 1) return std::min(n, kMaxProcs);
  }
  // The process's CPUs: its main thread's affinity (what Go reads at
  // start-up), not that of whichever thread happens to start the runtime,
  // which may have been pinned to one CPU.
  cpu_set_t set;
  if (sched_getaffinity(getpid(), sizeof(set), &set) == 0) {
    return std::clamp(CPU_COUNT(&set), 1, kMaxProcs);
  }
  return std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1,
                    kMaxProcs);
}

P* NewP(int id) {
  P* p = new P;
  p->id = id;
  return p;
}

void StartLocked(const RuntimeOptions& options) {
  if (g_running.load(std::memory_order_acquire)) {
    Fatal("gort::Start: the runtime is already running");
  }
  g_sched = new Sched;
  g_sched->options = options;
  int procs = options.max_procs > 0 ? std::min(options.max_procs, kMaxProcs)
                                    : DefaultProcs();
  if (g_sched->options.sched_trace_ms == 0) {
    if (const char* env = std::getenv("GORT_SCHEDTRACE")) {
      g_sched->options.sched_trace_ms = std::max(0, std::atoi(env));
    }
  }
  for (int i = 0; i < procs; ++i) g_sched->allp[i] = NewP(i);
  g_sched->nallp.store(procs, std::memory_order_release);
  g_sched->procs.store(procs, std::memory_order_release);
  for (int i = procs - 1; i >= 0; --i) PIdlePut(g_sched->allp[i]);
  InstallSchedulerHooks(&kHooks);
  // The monitor trims stack pools past their high-water mark, so that an
  // exiting fiber's M does not (SysmonLoop). Undone in Shutdown.
  SetStackTrimmingDeferred(true);
  g_sched->sysmon = std::thread([] {
    pthread_setname_np(pthread_self(), "gort-sysmon");
    SysmonLoop();
  });
  g_running.store(true, std::memory_order_release);
}

void EnsureStarted() {
  if (__builtin_expect(g_running.load(std::memory_order_acquire), 1)) return;
  std::lock_guard<std::mutex> l(g_start_mu);
  if (!g_running.load(std::memory_order_relaxed)) StartLocked(RuntimeOptions{});
}

void GlobalReadyHook(Fiber* from, void*);

// Go's newproc. A fiber that spawns faster than the Ps drain the queues
// (its ring overflowed, and the global queue holds more than a full ring
// per P) yields once: back-pressure in place of the preemption Go's sysmon
// would apply after 10 ms. Without it, a
// loop that starts a million fibers runs to its end before any of them
// starts, and all million wait at once; with it, started fibers run (and
// recycle their stacks and Gs) while the loop goes on. Like any scheduling
// point, this is invisible to a correct program: Go promises nothing about
// when a new goroutine runs relative to its creator.
void Spawn(G* g) {
  M* m = GetM();
  if (m != nullptr && m->p != nullptr && m->curg != nullptr &&
      !m->in_blocking) {
    // Go's newproc: the new G runs next.
    const bool overflowed = RunqPut(m->p, g, /*next=*/true);
    WakeP();
    if (overflowed && m->locked_g == nullptr &&
        g_sched->runq_size.load(std::memory_order_relaxed) >
            static_cast<std::int64_t>(RunQueue<G>::capacity()) *
                g_sched->procs.load(std::memory_order_relaxed)) {
      // To the global queue's tail (Go's Gosched): the spawner resumes
      // only once every P together has drained the backlog ahead of it.
      SwitchAway(/*exiting=*/false, &GlobalReadyHook, nullptr);
    }
    return;
  }
  ReadyOnGlobalQueue(g);
}

}  // namespace

// --- Blocking ---------------------------------------------------------------------

bool EnterBlocking() {
  M* m = GetM();
  if (m == nullptr || m->curg == nullptr || m->p == nullptr) return false;
  if (m->in_blocking) return false;  // nested: the outer call handles it
  P* p = m->p;
  m->in_blocking = true;
  m->curg->status.store(GStatus::kSyscall, std::memory_order_relaxed);
  p->syscall_count.store(p->syscall_count.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
  // store-release: the monitor may take p from now on.
  p->status.store(kPSyscall, std::memory_order_release);
  if (g_sched->in_blocking.fetch_add(1, std::memory_order_relaxed) == 0 &&
      g_sched->sysmon_idle_sleep.load(std::memory_order_acquire)) {
    NoteWakeup(&g_sched->sysmon_note);  // tighten its period
  }
  return true;
}

void ExitBlocking(bool entered) {
  if (!entered) return;
  M* m = GetM();
  G* g = m->curg;
  P* p = m->p;
  g_sched->in_blocking.fetch_sub(1, std::memory_order_relaxed);
  m->in_blocking = false;
  int expected = kPSyscall;
  if (p->status.compare_exchange_strong(expected, kPRunning,
                                        std::memory_order_acq_rel)) {
    g->status.store(GStatus::kRunning, std::memory_order_relaxed);
    OpenIfGrown(p);  // SetMaxProcs skips a P in a system call
    return;  // fast path: the P was not retaken
  }
  // The monitor handed our P to another M. Try an idle P; else queue the G
  // globally and let this M sleep.
  m->p = nullptr;
  P* p2 = nullptr;
  if (m->locked_g == nullptr) {
    std::lock_guard<Lock> l(g_sched->lock);
    p2 = PIdleGet();
  }
  if (p2 != nullptr) {
    AcquireP(m, p2);
    MarkRunning(m, g);
    OpenIfGrown(p2);  // back to user code without passing FindRunnable
    return;
  }
  m->curg = nullptr;
  Fiber::SwitchTo(m->g0, &GlobalReadyHook, nullptr);
}

}  // namespace sched_internal

// --- Public API ----------------------------------------------------------------------

using namespace sched_internal;  // NOLINT: this file's own internals

void Start(const RuntimeOptions& options) {
  std::lock_guard<std::mutex> l(g_start_mu);
  StartLocked(options);
}

bool Running() { return g_running.load(std::memory_order_acquire); }

bool Shutdown(absl::Duration timeout) {
  if (GetM() != nullptr) Fatal("gort::Shutdown called from a fiber's thread");
  const absl::Time deadline = absl::Now() + timeout;
  // g_start_mu is held only for each look, not across the wait: a live
  // fiber may need it (SetMaxProcs) in order to finish.
  std::unique_lock<std::mutex> l(g_start_mu);
  if (!g_running.load(std::memory_order_acquire)) return true;
  while (LiveGs() > 0) {
    if (absl::Now() >= deadline) return false;
    l.unlock();
    absl::SleepFor(absl::Milliseconds(1));
    l.lock();
    if (!g_running.load(std::memory_order_acquire)) return true;
  }
  // A thread that readied the last fiber from outside the runtime may still
  // be in WakeP, about to start an M: let it finish before the Ms are
  // stopped and the scheduler freed. (No fiber is live, so no new one
  // comes.) Acquire: pairs with its release decrement.
  while (g_sched->outside_readies.load(std::memory_order_acquire) != 0) {
    std::this_thread::yield();
  }
  g_sched->stopping.store(true, std::memory_order_seq_cst);
  NoteWakeup(&g_sched->sysmon_note);
  g_sched->sysmon.join();
  std::vector<M*> ms;
  {
    std::lock_guard<Lock> lk(g_sched->lock);
    ms = g_sched->allm;
  }
  for (M* m : ms) NoteWakeup(&m->note);
  for (M* m : ms) {
    m->thread.join();
    delete m;
  }
  // The Ms' exits flushed their stack caches; what that left past the
  // high-water mark is trimmed here, with nobody left to defer to.
  SetStackTrimmingDeferred(false);
  InstallSchedulerHooks(nullptr);
  ForEachG([](G* g) { g->~G(); });
  for (GArena* a = g_sched->first_arena; a != nullptr;) {
    GArena* next = a->next;
    munmap(a, kGArenaBytes);
    a = next;
  }
  for (P* p : g_sched->allp) delete p;
  while (GQueueChunk* c = g_sched->runq_head) {  // empty, or abandoned Gs
    g_sched->runq_head = c->next;
    delete c;
  }
  delete g_sched->runq_spare_chunk;
  delete g_sched;
  g_sched = nullptr;
  g_running.store(false, std::memory_order_release);
  return true;
}

namespace sched_internal {

void SetOutsideReadyHookForTesting(void (*hook)()) {
  g_outside_ready_hook.store(hook, std::memory_order_relaxed);
}

SpawnSlot BeginSpawn() {
  EnsureStarted();
  G* g = AllocG();
  return SpawnSlot{g, g->task_storage};
}

void CommitSpawn(SpawnSlot slot, TaskFn fn, std::source_location site,
                 const GoOptions& options) {
  G* g = static_cast<G*>(slot.g);
  InitG(g, fn, site, options.compact_stack);
  Spawn(g);
}

void AbortSpawn(SpawnSlot slot) noexcept {
  G* g = static_cast<G*>(slot.g);
  g->status.store(GStatus::kDead, std::memory_order_relaxed);
  FreeG(g);
}

}  // namespace sched_internal

void Yield() {
  G* g = CurrentG();
  M* m = GetM();
  if (g == nullptr || m->in_blocking) {  // a thread, or inside Blocking()
    std::this_thread::yield();
    return;
  }
  P* p = m->p;
  if (m->locked_g == nullptr && p != nullptr && !p->runq.local().HasWork() &&
      g_sched->runq_size.load(std::memory_order_relaxed) == 0) {
    // Nothing else to run here, unless a timer is due: looked at on every
    // 61st such yield only (a clock read costs more than the yield).
    std::int64_t next = p->timers.next_when.load(std::memory_order_relaxed);
    if (next == kNoDeadline || ++p->schedtick % kGlobalQueueTick != 0 ||
        next > sched_internal::MonoNow()) {
      return;
    }
  }
  SwitchAway(/*exiting=*/false, &YieldHook, nullptr);
}

namespace {
// now + d on the monotonic clock, saturating (an infinite sleep parks
// forever; a negative one returns at once).
std::int64_t DeadlineAfter(absl::Duration d) {
  std::int64_t now = sched_internal::MonoNow();
  if (d >= absl::Nanoseconds(kNoDeadline - now)) return kNoDeadline;
  if (d <= absl::ZeroDuration()) return now;
  return now + absl::ToInt64Nanoseconds(d);
}
}  // namespace

void SleepUntil(absl::Time t) { Sleep(t - absl::Now()); }

void Sleep(absl::Duration d) {
  std::int64_t deadline = DeadlineAfter(d);
  for (;;) {
    ParkTicket ticket = Parker::Current()->Prepare();
    if (Park(ticket, WaitReason::kSleep, nullptr, nullptr, deadline) ==
        ParkResult::kTimedOut) {
      return;
    }
  }
}

std::int64_t NumFibers() {
  return g_running.load(std::memory_order_acquire)
             ? LiveGs()
             : 0;
}

void Exit() {
  G* g = CurrentG();
  if (g == nullptr) Fatal("gort::Exit called outside a fiber");
  if (g->compact_stack) {
    Fatal(
        "gort::Exit called by fiber %llu, which runs on a compact stack: "
        "unwinding needs about 5 KB of stack; start fibers that call "
        "Exit() without GoOptions::compact_stack",
        static_cast<unsigned long long>(g->id));
  }
  throw ExitSignal{};
}

void SetMaxProcs(int n) {
  if (n < 1) Fatal("gort::SetMaxProcs(%d): must be at least 1", n);
  n = std::min(n, kMaxProcs);
  EnsureStarted();
  std::lock_guard<std::mutex> l(g_start_mu);
  int old = g_sched->procs.load(std::memory_order_acquire);
  if (n == old) return;
  std::unique_lock<Lock> lk(g_sched->lock);
  if (n > old) {
    std::vector<P*> back;
    for (int i = old; i < n; ++i) {
      if (g_sched->allp[i] == nullptr) {
        g_sched->allp[i] = NewP(i);
        g_sched->allp[i]->status.store(kPRetired, std::memory_order_relaxed);
        // store-release: publishes the new P to lock-free scanners.
        g_sched->nallp.store(i + 1, std::memory_order_release);
      }
      // A P whose M has not yet noticed its retirement just stays with it.
      if (g_sched->allp[i]->status.load(std::memory_order_acquire) ==
          kPRetired) {
        back.push_back(g_sched->allp[i]);
      }
    }
    // seq_cst: SetExclusive's entry re-reads it after raising the flag.
    g_sched->procs.store(n, std::memory_order_seq_cst);
    for (P* p : back) PIdlePut(p);
    // An idle P is nobody's but the lock holder's: open any queue left
    // exclusive (RunQueue) from when it was alone.
    for (P* p = g_sched->pidle; p != nullptr; p = p->link) {
      if (p->runq.local().exclusive()) p->runq.local().LeaveExclusive();
    }
    lk.unlock();
    // Called from a fiber on the P that was alone: open its queue now, not
    // at its next pop, so that a caller that goes on without a scheduling
    // point (waiting for a fiber it queued) does not keep that fiber from
    // the new Ps.
    if (M* m = GetM(); m != nullptr && !m->in_blocking && m->p != nullptr &&
                       m->p->runq.local().exclusive()) {
      SetExclusive(m->p, false);
    }
    for (int i = old; i < n; ++i) WakeP();
    return;
  }
  std::vector<P*> retired;
  {
    g_sched->procs.store(n, std::memory_order_release);
    // Idle Ps beyond n leave the idle list now; running ones retire when
    // their M next schedules (NextLocal/FindRunnable notice).
    P** link = &g_sched->pidle;
    while (*link != nullptr) {
      P* p = *link;
      if (p->id >= n) {
        *link = p->link;
        p->link = nullptr;
        g_sched->npidle.fetch_sub(1, std::memory_order_seq_cst);
        FlushGFree(p);  // off the idle list, p is ours: as in RetireP
        p->status.store(kPRetired, std::memory_order_relaxed);
        auto local = p->runq.local();
        while (G* g = local.Pop()) GlobRunqPut(g);
        retired.push_back(p);
      } else {
        link = &p->link;
      }
    }
  }
  lk.unlock();
  for (P* p : retired) MoveTimersToP0(p);
  WakeP();
}

int MaxProcs() {
  if (!g_running.load(std::memory_order_acquire)) return DefaultProcs();
  return g_sched->procs.load(std::memory_order_acquire);
}

void LockOSThread() {
  G* g = CurrentG();
  if (g == nullptr) return;
  M* m = GetM();
  ++g->lock_count;
  g->locked_m = m;
  m->locked_g = g;
}

void UnlockOSThread() {
  G* g = CurrentG();
  if (g == nullptr || g->lock_count == 0) return;
  if (--g->lock_count == 0) {
    GetM()->locked_g = nullptr;
    g->locked_m = nullptr;
  }
}

int RunMain(absl::AnyInvocable<int() &&> main_fn) {
  EnsureStarted();
  MainState main;
  main.fn = std::move(main_fn);
  G* g = AllocG();
  InitG(g, &NoopTask, std::source_location::current());
  g->main = &main;
  Spawn(g);
  NoteSleep(&main.done, kNoDeadline);
  return main.result;
}

void ForEachFiber(const std::function<void(const FiberInfo&)>& fn) {
  if (!g_running.load(std::memory_order_acquire)) return;
  std::vector<FiberInfo> infos;
  {
    std::lock_guard<Lock> l(g_sched->allg_lock);
    ForEachG([&](G* g) {
      GStatus st = g->status.load(std::memory_order_acquire);
      if (st == GStatus::kIdle || st == GStatus::kDead) return;
      FiberInfo info{};
      info.id = g->id;
      switch (st) {
        case GStatus::kRunning: info.state = FiberInfo::State::kRunning; break;
        case GStatus::kWaiting: info.state = FiberInfo::State::kWaiting; break;
        case GStatus::kSyscall: info.state = FiberInfo::State::kSyscall; break;
        default: info.state = FiberInfo::State::kRunnable; break;
      }
      info.wait_reason = g->parker.wait_reason();
      info.created_file = g->created_file;
      info.created_line = g->created_line;
      info.saved_frame_pointer =
          st == GStatus::kRunning ? nullptr
                                  : g->saved_fp.load(std::memory_order_acquire);
      infos.push_back(info);
    });
  }
  for (const FiberInfo& info : infos) fn(info);
}

SchedStats GetSchedStats() {
  SchedStats s{};
  if (!g_running.load(std::memory_order_acquire)) return s;
  s.procs = g_sched->procs.load(std::memory_order_relaxed);
  s.idle_procs = g_sched->npidle.load(std::memory_order_relaxed);
  {
    std::lock_guard<Lock> l(g_sched->lock);
    s.threads = static_cast<int>(g_sched->allm.size());
    s.idle_threads = g_sched->nmidle;
  }
  s.spinning_threads = g_sched->nmspinning.load(std::memory_order_relaxed);
  s.global_runq = g_sched->runq_size.load(std::memory_order_relaxed);
  s.fibers = LiveGs();
  s.handoffs = g_sched->handoffs.load(std::memory_order_relaxed);
  s.long_running = g_sched->long_running.load(std::memory_order_relaxed);
  s.trace_lines = g_sched->trace_lines.load(std::memory_order_relaxed);
  return s;
}

}  // namespace gort
