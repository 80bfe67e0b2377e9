// Stack overflow reports, and chaining of faults that are not ours.
//
// This binary installs its own SIGSEGV handler before main() (before the pool
// installs its handler), so the overflow handler has a previous handler to
// chain to.

#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "stack/internal/test_util.h"
#include "stack/stack.h"

namespace gort {
namespace {

using stack_internal::OverflowMessageRegex;
using stack_internal::RecurseForever;
using stack_internal::RunOnStack;

constexpr char kPreviousHandlerMessage[] = "previous SIGSEGV handler called\n";
constexpr int kPreviousHandlerExitCode = 3;

void PreviousHandler(int, siginfo_t*, void*) {
  const ssize_t unused = write(STDERR_FILENO, kPreviousHandlerMessage,
                               sizeof(kPreviousHandlerMessage) - 1);
  (void)unused;
  _exit(kPreviousHandlerExitCode);
}

const bool kPreviousHandlerInstalled = [] {
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_sigaction = PreviousHandler;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  return sigaction(SIGSEGV, &action, nullptr) == 0;
}();

TEST(StackOverflowDeathTest, GuardHitIsReportedWithOwnerAndBounds) {
  ASSERT_TRUE(kPreviousHandlerInstalled);
  Stack stack = Stack::Allocate();
  stack.SetOwnerId(42);
  // "fast" death tests fork: the child runs on this very stack, so the
  // message can be matched exactly.
  EXPECT_EXIT(RunOnStack(stack, RecurseForever, nullptr),
              testing::KilledBySignal(SIGABRT),
              OverflowMessageRegex(stack, 42));
}

TEST(StackOverflowDeathTest, NonDefaultSizeAndReusedStack) {
  constexpr std::size_t kSize = 32 * 1024;
  void* top;
  {
    Stack first = Stack::Allocate(kSize);
    top = first.top();
    std::memset(first.base(), 1, first.size());
  }
  Stack stack = Stack::Allocate(kSize);
  ASSERT_EQ(stack.top(), top);  // reused: the guard is still in place
  stack.SetOwnerId(7);
  EXPECT_EXIT(RunOnStack(stack, RecurseForever, nullptr),
              testing::KilledBySignal(SIGABRT), OverflowMessageRegex(stack, 7));
}

TEST(StackOverflowDeathTest, GuardSurvivesTrimming) {
  void* top;
  {
    Stack first = Stack::Allocate();
    top = first.top();
    std::memset(first.base(), 1, first.size());
  }
  ReleaseStackCache();  // MADV_DONTNEED over the stack (and guard markers)
  Stack stack = Stack::Allocate();
  ASSERT_EQ(stack.top(), top);
  stack.SetOwnerId(99);
  EXPECT_EXIT(RunOnStack(stack, RecurseForever, nullptr),
              testing::KilledBySignal(SIGABRT),
              OverflowMessageRegex(stack, 99));
}

TEST(StackOverflowDeathTest, OverflowOnAnotherThread) {
  // A thread that allocates its own stack gets an alternate signal stack from
  // Allocate(); without one the kernel could not run the handler.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        std::thread([] {
          Stack stack = Stack::Allocate();
          stack.SetOwnerId(5);
          RunOnStack(stack, RecurseForever, nullptr);
        }).join();
      },
      testing::KilledBySignal(SIGABRT),
      "fatal: fiber stack overflow: fiber 5, stack \\[0x[0-9a-f]+, "
      "0x[0-9a-f]+\\) \\(262144 bytes\\), fault at 0x[0-9a-f]+");
  GTEST_FLAG_SET(death_test_style, "fast");
}

TEST(StackOverflowDeathTest, OtherFaultsGoToThePreviousHandler) {
  Stack stack = Stack::Allocate();  // the overflow handler is installed
  EXPECT_EXIT(
      {
        volatile std::uintptr_t address = 16;  // opaque to the optimizer
        *reinterpret_cast<volatile int*>(address) = 1;
      },
      testing::ExitedWithCode(kPreviousHandlerExitCode),
      "previous SIGSEGV handler called");
}

TEST(StackOverflowDeathTest, WritingIntoTheGuardFromOutsideIsAlsoCaught) {
  Stack stack = Stack::Allocate();
  stack.SetOwnerId(3);
  char* guard_top = static_cast<char*>(stack.base()) - 1;
  EXPECT_EXIT(*reinterpret_cast<volatile char*>(guard_top) = 1,
              testing::KilledBySignal(SIGABRT), OverflowMessageRegex(stack, 3));
}

}  // namespace
}  // namespace gort
