#include "fiber/fiber.h"

#include <execinfo.h>

#include <atomic>
#include <cfenv>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fiber/internal/context.h"
#include "fiber/internal/fatal.h"
#include "gtest/gtest.h"

namespace gort {
namespace {

TEST(FiberTest, ThreadFiberIsCurrentOutsideFibers) {
  Fiber* self = Fiber::Current();
  ASSERT_NE(self, nullptr);
  EXPECT_TRUE(self->is_thread_fiber());
  EXPECT_EQ(self->state(), Fiber::State::kRunning);
  EXPECT_EQ(Fiber::Current(), self);
}

TEST(FiberTest, GeneratorYieldsValuesInOrder) {
  int value = -1;
  Fiber* gen = Fiber::Create([&] {
    for (int i = 0; i < 5; ++i) {
      value = i;
      Fiber::Suspend();
    }
  });
  EXPECT_EQ(gen->state(), Fiber::State::kReady);
  std::vector<int> seen;
  for (;;) {
    gen->Resume();
    if (gen->finished()) break;
    EXPECT_EQ(gen->state(), Fiber::State::kSuspended);
    seen.push_back(value);
  }
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4}));
  Fiber::Destroy(gen);
}

TEST(FiberTest, CurrentInsideFiberIsTheFiber) {
  Fiber* inside = nullptr;
  Fiber* f = Fiber::Create([&] { inside = Fiber::Current(); });
  f->Resume();
  EXPECT_EQ(inside, f);
  EXPECT_FALSE(f->is_thread_fiber());
  EXPECT_TRUE(f->finished());
  EXPECT_TRUE(Fiber::Current()->is_thread_fiber());
  Fiber::Destroy(f);
}

TEST(FiberTest, IdsAreUniqueAndNamesKept) {
  Fiber::Options opts;
  opts.name = "worker";
  Fiber* a = Fiber::Create([] {}, opts);
  Fiber* b = Fiber::Create([] {});
  EXPECT_NE(a->id(), b->id());
  EXPECT_STREQ(a->name(), "worker");
  EXPECT_EQ(b->name(), nullptr);
  Fiber::Destroy(a);  // never run: allowed
  Fiber::Destroy(b);
}

TEST(FiberTest, CapturedStateIsDestroyedWhenFunctionReturns) {
  auto token = std::make_shared<int>(7);
  std::weak_ptr<int> weak = token;
  Fiber* f = Fiber::Create([t = std::move(token)] { EXPECT_EQ(*t, 7); });
  EXPECT_FALSE(weak.expired());
  f->Resume();
  EXPECT_TRUE(weak.expired());
  Fiber::Destroy(f);
}

TEST(FiberTest, DestroyingUnrunFiberDestroysItsFunction) {
  auto token = std::make_shared<int>(1);
  std::weak_ptr<int> weak = token;
  Fiber* f = Fiber::Create([t = std::move(token)] {});
  Fiber::Destroy(f);
  EXPECT_TRUE(weak.expired());
}

// The AfterSwitch hook runs on the destination, with the source suspended.
TEST(FiberTest, SwitchToRunsHookOnDestinationSide) {
  Fiber* main = Fiber::Current();
  Fiber* hook_from = nullptr;
  Fiber::State from_state_in_hook{};
  std::pair<Fiber**, Fiber::State*> out(&hook_from, &from_state_in_hook);
  Fiber* f = Fiber::Create([&] {
    Fiber::SwitchTo(
        main,
        [](Fiber* from, void* arg) {
          auto* out = static_cast<std::pair<Fiber**, Fiber::State*>*>(arg);
          *out->first = from;
          *out->second = from->state();
        },
        &out);
  });
  Fiber::SwitchTo(f);
  EXPECT_EQ(hook_from, f);
  EXPECT_EQ(from_state_in_hook, Fiber::State::kSuspended);
  // Let it finish: its default exit goes to its resumer, so enter via Resume.
  f->Resume();
  EXPECT_TRUE(f->finished());
  Fiber::Destroy(f);
}

TEST(FiberTest, ExitToRunsHookThatMayDestroyTheExitedFiber) {
  Fiber* main = Fiber::Current();
  bool destroyed = false;
  Fiber* f = Fiber::Create([&] {
    Fiber::ExitTo(
        main,
        [](Fiber* from, void* arg) {
          EXPECT_TRUE(from->finished());
          Fiber::Destroy(from);
          *static_cast<bool*>(arg) = true;
        },
        &destroyed);
  });
  Fiber::SwitchTo(f);
  EXPECT_TRUE(destroyed);
}

Fiber* g_exit_target = nullptr;
int g_exit_handler_calls = 0;

TEST(FiberTest, ExitHandlerRunsAfterFunctionReturns) {
  g_exit_target = Fiber::Current();
  g_exit_handler_calls = 0;
  Fiber* f = Fiber::Create([] {});
  f->set_exit_handler([](Fiber* self) {
    ++g_exit_handler_calls;
    Fiber::ExitTo(g_exit_target,
                  [](Fiber* from, void*) { Fiber::Destroy(from); });
  });
  Fiber::SwitchTo(f);
  EXPECT_EQ(g_exit_handler_calls, 1);
}

TEST(FiberTest, ManyFibersInterleaveRoundRobin) {
  constexpr int kFibers = 1000;
  constexpr int kRounds = 20;
  std::vector<int> counters(kFibers, 0);
  std::vector<Fiber*> fibers;
  for (int i = 0; i < kFibers; ++i) {
    fibers.push_back(Fiber::Create([&counters, i] {
      for (int r = 0; r < kRounds; ++r) {
        ++counters[i];
        Fiber::Suspend();
      }
    }));
  }
  for (int r = 0; r < kRounds; ++r) {
    for (int i = 0; i < kFibers; ++i) {
      fibers[i]->Resume();
      EXPECT_EQ(counters[i], r + 1);
    }
  }
  for (Fiber* f : fibers) {
    f->Resume();  // returns from the last Suspend and finishes
    EXPECT_TRUE(f->finished());
    Fiber::Destroy(f);
  }
}

// Uses `depth` KiB of stack.
__attribute__((noinline)) int Recurse(int depth) {
  volatile char buf[1024];
  buf[0] = 1;
  if (depth == 0) return buf[0] - 1;
  return Recurse(depth - 1) + depth + (buf[0] - 1);
}

// Recursion whose frames are written all the way down (unlike Recurse,
// which writes one byte per KiB and could step over a canary).
__attribute__((noinline)) int RecurseWritingFrames(int depth) {
  volatile char buf[48];
  for (auto& c : buf) c = static_cast<char>(depth);
  if (depth == 0) return buf[0];
  return RecurseWritingFrames(depth - 1) + buf[47];
}

TEST(FiberTest, DeepRecursionWithinStackSize) {
  int result = -1;
  Fiber* f = Fiber::Create([&] { result = Recurse(150); });
  f->Resume();
  EXPECT_EQ(result, 150 * 151 / 2);
  Fiber::Destroy(f);
}

TEST(FiberTest, CustomStackSize) {
  Fiber::Options opts;
  opts.stack_size = 1024 * 1024;
  int result = -1;
  Fiber* f = Fiber::Create([&] { result = Recurse(800); }, opts);
  EXPECT_GE(f->stack().size(), opts.stack_size);
  f->Resume();
  EXPECT_EQ(result, 800 * 801 / 2);
  Fiber::Destroy(f);
}

// Callee-saved state, including floating-point control, is per fiber.
// Both ways the x86-64 switch restores MXCSR (exact, and merging the
// exception flags), whichever this CPU uses by default.
class FpEnvTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    saved_ = fiber_internal::MxcsrFlagMerging();
    fiber_internal::SetMxcsrFlagMerging(GetParam());
    std::feclearexcept(FE_ALL_EXCEPT);
  }
  void TearDown() override {
    fiber_internal::SetMxcsrFlagMerging(saved_);
    std::fesetround(FE_TONEAREST);
    std::feclearexcept(FE_ALL_EXCEPT);
  }
  bool saved_ = false;
};
INSTANTIATE_TEST_SUITE_P(Mxcsr, FpEnvTest, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "Merge" : "Exact";
                         });

volatile double g_three = 3.0;
volatile double g_zero = 0.0;

TEST_P(FpEnvTest, RoundingModeIsPerFiber) {
  int inside_after_switch = -1;
  Fiber* f = Fiber::Create([&] {
    std::fesetround(FE_UPWARD);
    Fiber::Suspend();
    inside_after_switch = std::fegetround();
  });
  f->Resume();
  EXPECT_EQ(std::fegetround(), FE_TONEAREST);
  std::fesetround(FE_DOWNWARD);
  f->Resume();
  EXPECT_EQ(inside_after_switch, FE_UPWARD);
  EXPECT_EQ(std::fegetround(), FE_DOWNWARD);
  Fiber::Destroy(f);
}

// A switch never clears a fiber's exception flags (C asks that of a call),
// while the other side clears and raises its own.
TEST_P(FpEnvTest, ExceptionFlagsSurviveSwitches) {
  int fiber_sees = -1;
  Fiber* f = Fiber::Create([&] {
    volatile double x = 1.0 / g_three;  // inexact
    (void)x;
    Fiber::Suspend();
    fiber_sees = std::fetestexcept(FE_INEXACT);
    std::fesetround(FE_UPWARD);  // and a control change on the way out
    Fiber::Suspend();
  });
  f->Resume();
  // Ours are clear, unless the switch merged the fiber's in (allowed).
  if (!GetParam()) {
    EXPECT_EQ(std::fetestexcept(FE_INEXACT), 0);
  }
  std::feclearexcept(FE_ALL_EXCEPT);
  volatile double y = g_three / g_zero;  // divide-by-zero
  (void)y;
  f->Resume();
  EXPECT_NE(fiber_sees, 0);
  // Our own flag and rounding survived the fiber's changes.
  EXPECT_NE(std::fetestexcept(FE_DIVBYZERO), 0);
  EXPECT_EQ(std::fegetround(), FE_TONEAREST);
  f->Resume();
  EXPECT_TRUE(f->finished());
  Fiber::Destroy(f);
}

TEST(FiberTest, ExceptionsCaughtInsideFiber) {
  std::string what;
  Fiber* f = Fiber::Create([&] {
    try {
      Fiber::Suspend();
      throw std::runtime_error("inside");
    } catch (const std::exception& e) {
      what = e.what();
    }
  });
  f->Resume();
  f->Resume();
  EXPECT_EQ(what, "inside");
  Fiber::Destroy(f);
}

// A fiber suspended inside a catch block keeps its exception while another
// fiber throws and catches its own, and can still rethrow it afterwards.
TEST(FiberTest, ExceptionStateIsPerFiber) {
  std::string a_rethrown, b_caught;
  int a_uncaught_in_dtor = -1;
  Fiber* a = Fiber::Create([&] {
    try {
      throw std::runtime_error("a");
    } catch (...) {
      Fiber::Suspend();
      try {
        throw;
      } catch (const std::exception& e) {
        a_rethrown = e.what();
      }
    }
    a_uncaught_in_dtor = std::uncaught_exceptions();
  });
  Fiber* b = Fiber::Create([&] {
    try {
      throw std::logic_error("b");
    } catch (const std::exception& e) {
      b_caught = e.what();
    }
  });
  a->Resume();
  EXPECT_EQ(std::current_exception(), nullptr);  // main has none in flight
  b->Resume();
  a->Resume();
  EXPECT_EQ(b_caught, "b");
  EXPECT_EQ(a_rethrown, "a");
  EXPECT_EQ(a_uncaught_in_dtor, 0);
  Fiber::Destroy(a);
  Fiber::Destroy(b);
}

// A thread-local read through a GORT_TLS_ACCESSOR function.
thread_local int t_thread_tag = 0;
GORT_TLS_ACCESSOR int ThreadTag() { return t_thread_tag; }

// The fiber migrates from this thread to another between two reads of the
// same accessor; the second read must see the new thread's value, and
// Fiber::Current() must still be the fiber.
TEST(FiberTest, MigratingFiberSeesNewThreadsThreadLocals) {
  t_thread_tag = 1;
  int before = 0, after = 0;
  Fiber* current_before = nullptr;
  Fiber* current_after = nullptr;
  Fiber* f = Fiber::Create([&] {
    before = ThreadTag();
    current_before = Fiber::Current();
    Fiber::Suspend();  // resumed on the other thread
    after = ThreadTag();
    current_after = Fiber::Current();
  });
  f->Resume();
  std::thread other([&] {
    t_thread_tag = 2;
    f->Resume();
    EXPECT_TRUE(Fiber::Current()->is_thread_fiber());
  });
  other.join();
  EXPECT_EQ(before, 1);
  EXPECT_EQ(after, 2);
  EXPECT_EQ(current_before, f);
  EXPECT_EQ(current_after, f);
  EXPECT_TRUE(f->finished());
  Fiber::Destroy(f);
}

// Ping-pong a fiber between two threads many times, handing it over with
// an atomic; each hop checks that the fiber runs on the thread that resumed
// it.
TEST(FiberTest, FiberPingPongsBetweenThreads) {
  constexpr int kHops = 2000;
  std::atomic<int> turn{0};
  std::atomic<bool> mismatch{false};
  thread_local int tid = 0;
  struct Tid {
    GORT_TLS_ACCESSOR static int Get() { return tid; }
  };
  Fiber* f = Fiber::Create([&] {
    for (int i = 0; i < kHops; ++i) {
      if (Tid::Get() != (i % 2) + 1) mismatch = true;
      Fiber::Suspend();
    }
  });
  auto worker = [&](int me) {
    tid = me + 1;
    for (int i = me; i < kHops; i += 2) {
      while (turn.load(std::memory_order_acquire) != i) {
      }
      f->Resume();
      turn.store(i + 1, std::memory_order_release);
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  EXPECT_FALSE(mismatch.load());
  f->Resume();
  EXPECT_TRUE(f->finished());
  Fiber::Destroy(f);
}

// A suspended fiber's frame chain can be walked from its saved frame
// pointer down to the entry frame, where it ends with a null link.
TEST(FiberTest, SuspendedFiberStackIsWalkable) {
  Fiber* f = Fiber::Create([] {
    Recurse(0);
    Fiber::Suspend();
  });
  EXPECT_EQ(f->SavedFramePointer(), nullptr);
  f->Resume();
  ASSERT_NE(f->SavedProgramCounter(), nullptr);
  auto lo = reinterpret_cast<std::uintptr_t>(f->stack().base());
  auto hi = reinterpret_cast<std::uintptr_t>(f->stack().top());
  auto* fp = static_cast<void**>(f->SavedFramePointer());
  int frames = 0;
  while (fp != nullptr) {
    auto addr = reinterpret_cast<std::uintptr_t>(fp);
    ASSERT_GE(addr, lo);
    ASSERT_LT(addr, hi);
    ASSERT_NE(fp[1], nullptr);  // a return address
    fp = static_cast<void**>(fp[0]);
    ASSERT_LT(++frames, 64);
  }
  EXPECT_GE(frames, 1);
  f->Resume();
  Fiber::Destroy(f);
}

// backtrace() `depth` calls deep (not tail calls: the frames stay).
__attribute__((noinline)) int BacktraceAtDepth(int depth, void** frames,
                                               int max) {
  if (depth == 0) return backtrace(frames, max);
  const int n = BacktraceAtDepth(depth - 1, frames, max);
  asm volatile("" ::: "memory");
  return n;
}

// The DWARF unwinder (glibc's backtrace(), through libgcc's
// _Unwind_Backtrace), called a few frames deep inside a fiber, walks up
// through the fiber's frames and stops at the entry trampoline, whose CFI
// marks the return address undefined: its last frame is the trampoline's
// call to the entry function, and the walk neither crashes nor runs on
// past the fiber's stack into whatever lies above it.
TEST(FiberTest, BacktraceInsideAFiberStopsAtTheTrampoline) {
  constexpr int kDepth = 5;
  constexpr int kMax = 256;
  void* frames[kMax] = {};
  int n = 0;
  Fiber* f = Fiber::Create([&] { n = BacktraceAtDepth(kDepth, frames, kMax); });
  f->Resume();
  EXPECT_TRUE(f->finished());
  Fiber::Destroy(f);
  // BacktraceAtDepth's kDepth + 1 frames, the lambda, the entry glue.
  EXPECT_GT(n, kDepth + 2);
  EXPECT_LT(n, 48);  // a walk that does not stop fills all kMax, or crashes
  ASSERT_GT(n, 0);
  // The trampoline's return address: a few bytes past its start.
  const auto trampoline =
      reinterpret_cast<std::uintptr_t>(&gort_fiber_trampoline);
  const auto last = reinterpret_cast<std::uintptr_t>(frames[n - 1]);
  EXPECT_GT(last, trampoline);
  EXPECT_LT(last, trampoline + 32);
}

// The callable is constructed in place in the control block: a copy that
// throws leaves no fiber and no stack behind, and the exception reaches
// the caller.
struct ThrowsOnCopy {
  ThrowsOnCopy() = default;
  ThrowsOnCopy(const ThrowsOnCopy&) { throw std::runtime_error("copy"); }
  void operator()() && {}
};

TEST(FiberTest, ACallableThatThrowsWhileStoredLeavesNothingBehind) {
  const std::size_t live_before = GetStackStats(false).live;
  const ThrowsOnCopy callable;
  EXPECT_THROW(Fiber::Create(callable), std::runtime_error);
  EXPECT_EQ(GetStackStats(false).live, live_before);
  // A move-only callable and a Function are stored without a copy.
  int runs = 0;
  auto owned = std::make_unique<int>(1);
  Fiber* f = Fiber::Create([&runs, p = std::move(owned)] { runs += *p; });
  f->Resume();
  Fiber::Destroy(f);
  Fiber::Function fn = [&runs] { ++runs; };
  f = Fiber::Create(std::move(fn));
  f->Resume();
  Fiber::Destroy(f);
  EXPECT_EQ(runs, 2);
}

TEST(FiberTest, CompactFiberRunsOnItsCompactStack) {
  Fiber::Options opts;
  opts.compact_stack = true;
  std::uintptr_t local = 0;
  int steps = 0;
  Fiber* f = Fiber::Create(
      [&] {
        int here = 0;
        local = reinterpret_cast<std::uintptr_t>(&here);
        for (int i = 0; i < 3; ++i) {
          ++steps;
          Fiber::Suspend();
        }
      },
      opts);
  ASSERT_TRUE(f->stack().is_compact());
  EXPECT_EQ(f->stack().size(), kCompactStackSize);
  // The control block is inside the stack, above the canary.
  const auto base = reinterpret_cast<std::uintptr_t>(f->stack().base());
  const auto top = reinterpret_cast<std::uintptr_t>(f->stack().top());
  const auto block = reinterpret_cast<std::uintptr_t>(f);
  EXPECT_GE(block, base + kStackCanaryBytes);
  EXPECT_LT(block, top);
  EXPECT_TRUE(f->stack().CanaryIntact());
  while (f->Resume(), !f->finished()) {
  }
  EXPECT_EQ(steps, 3);
#if !defined(__SANITIZE_ADDRESS__)  // ASan may put `here` on a fake stack
  EXPECT_GT(local, base + kStackCanaryBytes);
  EXPECT_LT(local, block);
#endif
  Fiber::Destroy(f);
}

TEST(FiberDeathTest, AnEmptyFunctionIsFatal) {
  EXPECT_DEATH(Fiber::Create(Fiber::Function()),
               "fatal: Fiber::Create: empty function");
}

TEST(FiberDeathTest, UncaughtExceptionNamesTheFiber) {
  EXPECT_DEATH(
      {
        Fiber::Options opts;
        opts.name = "doomed";
        Fiber* f =
            Fiber::Create([] { throw std::runtime_error("boom"); }, opts);
        f->Resume();
      },
      "fatal: uncaught exception in fiber [0-9]+ \\(doomed\\): .*boom");
}

TEST(FiberDeathTest, StackOverflowIsReported) {
  EXPECT_DEATH(
      {
        Fiber::Options opts;
        opts.stack_size = 64 * 1024;
        Fiber* f = Fiber::Create([] { Recurse(1 << 20); }, opts);
        f->Resume();
      },
      "fatal: fiber stack overflow: fiber [0-9]+");
}

// Runs fn on a new compact fiber called `name`, for the death tests below.
template <typename F>
void RunOnACompactFiber(F fn, const char* name = nullptr) {
  Fiber::Options opts;
  opts.compact_stack = true;
  opts.name = name;
  Fiber::Create(std::move(fn), opts)->Resume();
}

TEST(FiberDeathTest, AnOverrunCompactStackIsReportedAtTheNextSwitch) {
  EXPECT_DEATH(RunOnACompactFiber(
                   [] {
                     // What a frame too deep for the stack leaves behind.
                     std::memset(Fiber::Current()->stack().base(), 0, 16);
                     Fiber::Suspend();
                   },
                   "tiny"),
               "fatal: fiber stack overflow: fiber [0-9]+ \\(tiny\\) overran "
               "its compact stack \\[0x[0-9a-f]+, 0x[0-9a-f]+\\) \\([0-9]+ "
               "bytes\\)");
}

TEST(FiberDeathTest, AFatalErrorOnACompactFiberIsReportedInFull) {
  // Formatting takes more than a compact stack holds: Fatal moves to its
  // report stack.
  EXPECT_DEATH(RunOnACompactFiber([] {
                 fiber_internal::Fatal("a programming error, %d %s %.3f", 42,
                                       "in a compact fiber", 2.5);
               }),
               "fatal: a programming error, 42 in a compact fiber 2.500");
}

TEST(FiberDeathTest, ACompactFiberThatRecursesTooDeepIsCaught) {
  EXPECT_DEATH(RunOnACompactFiber(
                   [] { RecurseWritingFrames(2 * kCompactStackSize / 48); }),
               "fatal: fiber stack overflow: fiber [0-9]+");
}

TEST(FiberDeathTest, DestroyingSuspendedFiberIsFatal) {
  EXPECT_DEATH(
      {
        Fiber* f = Fiber::Create([] { Fiber::Suspend(); });
        f->Resume();
        Fiber::Destroy(f);
      },
      "fatal: Fiber::Destroy: fiber [0-9]+ is still running or suspended");
}

TEST(FiberDeathTest, SuspendWithoutResumeIsFatal) {
  EXPECT_DEATH(
      {
        Fiber* f = Fiber::Create([] { Fiber::Suspend(); });
        Fiber::SwitchTo(f);
      },
      "fatal: Fiber::Suspend: fiber [0-9]+ was not entered through Resume");
}

}  // namespace
}  // namespace gort
