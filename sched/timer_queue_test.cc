// Tests for sched/internal/timer_queue.h: the run (deadlines added in
// order), the heap (the others), removal from anywhere, and a randomized
// comparison with a std::multimap.

#include "sched/internal/timer_queue.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace gort {
namespace sched_internal {
namespace {

struct T {
  std::int64_t when = 0;
  int index = -1;
};

std::vector<std::unique_ptr<T>> Make(const std::vector<std::int64_t>& whens) {
  std::vector<std::unique_ptr<T>> v;
  for (std::int64_t w : whens) {
    v.push_back(std::make_unique<T>());
    v.back()->when = w;
  }
  return v;
}

// n timers due at 0, 1, ..., n - 1, added to q in that order.
std::vector<std::unique_ptr<T>> AddInOrder(TimerQueue<T>& q, int n) {
  std::vector<std::int64_t> whens;
  for (int i = 0; i < n; ++i) whens.push_back(i);
  auto ts = Make(whens);
  for (auto& t : ts) q.Add(t.get());
  return ts;
}

// Takes every timer out, earliest first; returns their deadlines.
std::vector<std::int64_t> Drain(TimerQueue<T>& q) {
  std::vector<std::int64_t> out;
  while (!q.empty()) {
    T* t = q.Earliest();
    EXPECT_EQ(t->when, q.EarliestWhen());
    q.Remove(t);
    EXPECT_EQ(t->index, -1);
    out.push_back(t->when);
  }
  EXPECT_EQ(q.EarliestWhen(), TimerQueue<T>::kNone);
  return out;
}

TEST(TimerQueueTest, DeadlinesInOrderGoToTheRun) {
  TimerQueue<T> q;
  auto ts = Make({10, 20, 20, 30, 40});
  for (auto& t : ts) q.Add(t.get());
  EXPECT_EQ(q.run_size(), 5u);  // equal deadlines too
  EXPECT_EQ(q.heap_size(), 0u);
  EXPECT_EQ(q.size(), 5u);
  EXPECT_EQ(Drain(q), (std::vector<std::int64_t>{10, 20, 20, 30, 40}));
}

TEST(TimerQueueTest, DeadlinesOutOfOrderGoToTheHeap) {
  TimerQueue<T> q;
  auto ts = Make({50, 40, 60, 10, 55, 70});
  for (auto& t : ts) q.Add(t.get());
  // 50 starts the run; 40 and 10 are earlier than its last, and so is 55
  // (after 60).
  EXPECT_EQ(q.run_size(), 3u);
  EXPECT_EQ(q.heap_size(), 3u);
  EXPECT_EQ(Drain(q), (std::vector<std::int64_t>{10, 40, 50, 55, 60, 70}));
}

// An earlier deadline moves up to four later ones from the run's end to
// the heap, so that one far deadline does not keep later sleeps out of the
// run until it fires.
TEST(TimerQueueTest, AnEarlierDeadlineDisplacesAFewLaterOnes) {
  TimerQueue<T> q;
  auto ts = Make({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 5, 1});
  for (int i = 0; i < 10; ++i) q.Add(ts[i].get());
  q.Add(ts[10].get());  // 9, 8, 7, 6 to the heap; 5 joins the run
  EXPECT_EQ(q.heap_size(), 4u);
  EXPECT_EQ(q.run_size(), 7u);
  q.Add(ts[11].get());  // 5, 5, 4, 3 to the heap; 1 is still early: heap
  EXPECT_EQ(q.heap_size(), 9u);
  EXPECT_EQ(q.run_size(), 3u);
  EXPECT_EQ(Drain(q),
            (std::vector<std::int64_t>{0, 1, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9}));
}

TEST(TimerQueueTest, AFarDeadlineDoesNotKeepLaterSleepsOutOfTheRun) {
  TimerQueue<T> q;
  std::vector<std::int64_t> whens = {1'000'000};  // a long timeout
  for (int i = 0; i < 1000; ++i) whens.push_back(100 + i);
  auto ts = Make(whens);
  for (auto& t : ts) q.Add(t.get());
  EXPECT_EQ(q.heap_size(), 1u);
  EXPECT_EQ(q.run_size(), 1000u);
  const std::vector<std::int64_t> out = Drain(q);
  EXPECT_TRUE(std::is_sorted(out.begin(), out.end()));
  EXPECT_EQ(out.back(), 1'000'000);
}

TEST(TimerQueueTest, RemovingTheRunsEndsTakesTheRemovedEntriesBesideThem) {
  TimerQueue<T> q;
  auto ts = AddInOrder(q, 10);
  q.Remove(ts[1].get());  // from the middle: left behind, removed
  q.Remove(ts[2].get());
  q.Remove(ts[8].get());
  EXPECT_EQ(q.run_dead(), 3u);
  EXPECT_EQ(q.size(), 7u);
  q.Remove(ts[0].get());  // the first: 1 and 2 go with it
  EXPECT_EQ(q.run_dead(), 1u);
  EXPECT_EQ(q.run_size(), 7u);
  q.Remove(ts[9].get());  // the last: 8 goes with it
  EXPECT_EQ(q.run_dead(), 0u);
  EXPECT_EQ(q.run_size(), 5u);
  EXPECT_EQ(q.EarliestWhen(), 3);
  EXPECT_EQ(Drain(q), (std::vector<std::int64_t>{3, 4, 5, 6, 7}));
}

TEST(TimerQueueTest, RemovedEntriesNeverOutnumberTheLiveOnesForLong) {
  TimerQueue<T> q;
  auto ts = AddInOrder(q, 1000);
  // Every timer but the first and the last, from the middle.
  for (int i = 1; i < 999; ++i) {
    q.Remove(ts[i].get());
    EXPECT_LE(q.run_dead(), std::max<std::size_t>(64, q.size()) + 1);
  }
  EXPECT_EQ(q.size(), 2u);
  EXPECT_LE(q.run_size(), 2u + 65u);
  // Renumbered by the rebuilds: both still found.
  q.Remove(ts[999].get());
  EXPECT_EQ(Drain(q), (std::vector<std::int64_t>{0}));
  EXPECT_EQ(q.run_size(), 0u);
}

// Positions are counted modulo 2^30 in indices and modulo 2^32 in the
// head: both wraps.
class TimerQueueWrapTest : public ::testing::TestWithParam<std::uint32_t> {};

TEST_P(TimerQueueWrapTest, RunPositionsWrapAround) {
  TimerQueue<T> q;
  q.StartRunAtForTesting(GetParam());
  auto ts = AddInOrder(q, 200);
  for (int i = 2; i < 200; i += 3) q.Remove(ts[i].get());
  // Then three of every four others from the middle: enough removed
  // entries to rebuild the run across the wrap.
  std::vector<std::int64_t> want;
  for (int i = 0; i < 200; ++i) {
    if (i >= 2 && (i - 2) % 3 == 0) continue;
    if (i > 0 && i < 199 && i % 4 != 0) {
      q.Remove(ts[i].get());
      continue;
    }
    want.push_back(i);
  }
  EXPECT_LT(q.run_size(), 150u);  // rebuilt: 200 entries otherwise
  EXPECT_EQ(Drain(q), want);
}

INSTANTIATE_TEST_SUITE_P(Heads, TimerQueueWrapTest,
                         ::testing::Values((1u << 30) - 5, 0xFFFFFFF0u));

// Random adds (mostly in order, as a P's sleeps are; one in
// `out_of_order_one_in` not), removals of random queued timers, and takes
// of the earliest, checked against a multimap after every step. Reports
// the most timers the heap held and the most removed entries in the run.
struct ModelRun {
  std::size_t max_heap = 0;
  std::size_t max_dead = 0;
};
void RunAgainstAMultimap(std::uint64_t seed, int out_of_order_one_in,
                         ModelRun* out) {
  ModelRun& r = *out;
  std::mt19937_64 rng(seed);
  constexpr int kTimers = 4096;
  std::vector<T> pool(kTimers);
  std::vector<int> idle, queued;
  for (int i = 0; i < kTimers; ++i) idle.push_back(i);
  std::multimap<std::int64_t, int> model;
  TimerQueue<T> q;
  std::int64_t clock = 0;
  for (int step = 0; step < 300'000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 5 && !idle.empty()) {
      const std::size_t k = rng() % idle.size();
      const int i = idle[k];
      idle[k] = idle.back();
      idle.pop_back();
      clock += static_cast<std::int64_t>(rng() % 3);
      pool[i].when = rng() % out_of_order_one_in == 0
                         ? clock + static_cast<std::int64_t>(rng() % 1000)
                         : clock + 1000;
      q.Add(&pool[i]);
      model.emplace(pool[i].when, i);
      queued.push_back(i);
    } else if (op < 8 && !queued.empty()) {
      const std::size_t k = rng() % queued.size();
      const int i = queued[k];
      queued[k] = queued.back();
      queued.pop_back();
      q.Remove(&pool[i]);
      ASSERT_EQ(pool[i].index, -1);
      auto [lo, hi] = model.equal_range(pool[i].when);
      for (auto it = lo; it != hi; ++it) {
        if (it->second == i) {
          model.erase(it);
          break;
        }
      }
      idle.push_back(i);
    } else if (!queued.empty()) {
      T* t = q.Earliest();
      ASSERT_EQ(t->when, model.begin()->first);
      const int i = static_cast<int>(t - pool.data());
      q.Remove(t);
      auto [lo, hi] = model.equal_range(t->when);
      for (auto it = lo; it != hi; ++it) {
        if (it->second == i) {
          model.erase(it);
          break;
        }
      }
      std::erase(queued, i);
      idle.push_back(i);
    }
    r.max_heap = std::max(r.max_heap, q.heap_size());
    r.max_dead = std::max(r.max_dead, q.run_dead());
    ASSERT_EQ(q.size(), model.size());
    ASSERT_EQ(q.EarliestWhen(),
              model.empty() ? TimerQueue<T>::kNone : model.begin()->first);
  }
  EXPECT_GT(q.run_size(), 0u);
}

// Both structures, and removed entries enough to rebuild the run, are
// exercised: the heap with many deadlines out of order, the rebuild with
// few (each one moves up to four from the run to the heap).
TEST(TimerQueueTest, AgreesWithAMultimap) {
  ModelRun many, few;
  RunAgainstAMultimap(20261128, 3, &many);
  ASSERT_FALSE(HasFatalFailure());
  RunAgainstAMultimap(20261129, 200, &few);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_GT(many.max_heap, 100u);
  EXPECT_GT(few.max_dead, 64u);
}

}  // namespace
}  // namespace sched_internal
}  // namespace gort
