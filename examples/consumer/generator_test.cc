#include <vector>

#include "fiber/fiber.h"
#include "gtest/gtest.h"

TEST(ConsumerTest, FibonacciGenerator) {
  long value = 0;
  gort::Fiber* fib = gort::Fiber::Create([&value] {
    long a = 0, b = 1;
    for (int i = 0; i < 8; ++i) {
      value = a;
      gort::Fiber::Suspend();
      long next = a + b;
      a = b;
      b = next;
    }
  });
  std::vector<long> seen;
  for (fib->Resume(); !fib->finished(); fib->Resume()) seen.push_back(value);
  EXPECT_EQ(seen, (std::vector<long>{0, 1, 1, 2, 3, 5, 8, 13}));
  gort::Fiber::Destroy(fib);
}
