// A Fibonacci generator on a gort fiber: the smallest use of @gort//fiber.
#include <cstdio>

#include "fiber/fiber.h"

int main() {
  long value = 0;
  gort::Fiber* fib = gort::Fiber::Create([&value] {
    long a = 0, b = 1;
    for (int i = 0; i < 10; ++i) {
      value = a;
      gort::Fiber::Suspend();
      long next = a + b;
      a = b;
      b = next;
    }
  });
  for (fib->Resume(); !fib->finished(); fib->Resume()) {
    std::printf("%ld ", value);
  }
  std::printf("\n");
  gort::Fiber::Destroy(fib);
  return 0;
}
