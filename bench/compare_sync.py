#!/usr/bin/env python3
"""Runs //sync:mutex_bench and //sync:wait_group_bench and the matching Go
programs (bench/go/{mutex,rwmutex,waitgroup}) in one go and prints medians,
ratios gort/Go, ratios against the C++ baselines measured in the same run,
and whether the goals of issue #5 are met.

    bench/compare_sync.py [--reps 3]

Each round runs every gort benchmark once and every Go program once, so a
slow spell on a shared machine hits both sides; medians over the rounds.
Needs Go (tools/setup.sh --bench installs Debian's golang-go). Every number
it prints is measured in this run; nothing is remembered between runs.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

from benchlib import build_go, build_gort, go_value, run

# (label, gort binary, gort benchmark run name, gort counter, Go program, Go flags)
# The counters are seconds of wall time per operation (kIsRate | kInvert).
GO_PAIRS = [
    ("W7 mutex, 8 tasks x 1e6 increments, 2 Ps", "mutex_bench",
     "BM_Mutex_Contended/2/real_time", "ops", "mutex", ["-procs=2"]),
    ("RWMutex 90% reads, 8 tasks x 1e6 ops, 2 Ps", "mutex_bench",
     "BM_RWMutex_90Read/2/real_time", "ops", "rwmutex", ["-procs=2"]),
    ("WaitGroup fan-out/in of 100,000, 1 P", "wait_group_bench",
     "BM_WaitGroup_FanOutFanIn/100000/1/real_time", "per_fiber", "waitgroup",
     ["-procs=1"]),
    ("WaitGroup fan-out/in of 100,000, 2 Ps", "wait_group_bench",
     "BM_WaitGroup_FanOutFanIn/100000/2/real_time", "per_fiber", "waitgroup",
     ["-procs=2"]),
]

# (label, gort run name, C++ baseline run name), all in mutex_bench.
CXX_PAIRS = [
    ("W7 contended: fibers+gort::Mutex / threads+std::mutex",
     "BM_Mutex_Contended/2/real_time", "BM_StdMutex_ContendedThreads/real_time"),
    ("W7 contended: threads+gort::Mutex / threads+std::mutex",
     "BM_Mutex_ContendedThreads/real_time", "BM_StdMutex_ContendedThreads/real_time"),
    ("uncontended Lock/Unlock: gort::Mutex / std::mutex",
     "BM_Mutex_Uncontended", "BM_StdMutex_Uncontended"),
    ("RWMutex 90% reads: fibers+gort / threads+std::shared_mutex",
     "BM_RWMutex_90Read/2/real_time", "BM_StdSharedMutex_90ReadThreads/real_time"),
]

# Goals of issue #5: (label, kind, name(s), bound on the ratio).
GOALS = [
    ("contended mutex <= 0.7x Go", "go", "BM_Mutex_Contended/2/real_time", 0.7),
    ("uncontended Lock/Unlock <= std::mutex", "cxx", "BM_Mutex_Uncontended", 1.0),
    ("WaitGroup fan-out/in of 100,000 <= 0.5x Go (2 Ps)", "go",
     "BM_WaitGroup_FanOutFanIn/100000/2/real_time", 0.5),
    ("RWMutex 90% readers on 2 Ps <= Go", "go", "BM_RWMutex_90Read/2/real_time", 1.0),
]


def gort_once(binary, bench_filter):
    """{run_name: benchmark entry} from one run of a benchmark binary."""
    res = run([binary, "--benchmark_filter=" + bench_filter, "--benchmark_format=json"])
    return {b["run_name"]: b for b in json.loads(res.stdout)["benchmarks"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    load_before = os.getloadavg()[0]

    bin_dir = build_gort(["//sync:mutex_bench", "//sync:wait_group_bench"])
    with tempfile.TemporaryDirectory() as tmp:
        gobin = build_go([p[4] for p in GO_PAIRS], tmp)

        # One repetition of everything per round, gort and Go interleaved, so
        # that a slow spell of a shared machine hits both sides alike; the
        # medians are taken over the rounds.
        gort_samples = {}  # (run name, counter) -> [seconds per op]
        go_samples = {}    # (program, flags) -> [ns per op]
        for _ in range(args.reps):
            for binary, flt in (("mutex_bench", "."), ("wait_group_bench", "FanOutFanIn")):
                for name, b in gort_once(os.path.join(bin_dir, "sync", binary), flt).items():
                    for counter in ("ops", "per_fiber"):
                        if counter in b:
                            gort_samples.setdefault((name, counter), []).append(b[counter])
            for _, _, _, _, prog, flags in GO_PAIRS:
                go_samples.setdefault((prog, tuple(flags)), []).append(
                    go_value(gobin[prog], flags))

        def ns(name, counter="ops"):
            # seconds/op -> ns/op
            return statistics.median(gort_samples[(name, counter)]) * 1e9

        go_rows = []
        for label, _, name, counter, prog, flags in GO_PAIRS:
            go = statistics.median(go_samples[(prog, tuple(flags))])
            go_rows.append((label, name, ns(name, counter), go, ns(name, counter) / go))

        print("gort beside Go %s (medians of %d rounds; ns per operation; "
              "load average before: %.2f)" %
              (run(["go", "version"]).stdout.split()[2], args.reps, load_before))
        print("%-46s %10s %10s %8s" % ("workload", "gort", "Go", "gort/Go"))
        for label, _, g, go, r in go_rows:
            print("%-46s %10.1f %10.1f %8.2f" % (label, g, go, r))
        print()
        print("gort beside C++ baselines, same run (ns per operation)")
        print("%-60s %8s %8s %6s" % ("comparison", "gort", "base", "ratio"))
        cxx = {}
        for label, a, b in CXX_PAIRS:
            ga, gb = ns(a), ns(b)
            cxx[a] = ga / gb
            print("%-60s %8.1f %8.1f %6.2f" % (label, ga, gb, ga / gb))
        print("%-60s %8.1f" % ("uncontended Lock/Unlock in a fiber",
                               ns("BM_Mutex_UncontendedInFiber/real_time")))
        print("%-60s %8.1f" % ("uncontended RLock/RUnlock", ns("BM_RWMutex_ReadUncontended")))
        print("%-60s %8.1f" % ("contended, 2 fibers on 2 Ps",
                               ns("BM_Mutex_ContendedTwoFibers/real_time")))
        print()
        go_ratio = {name: r for _, name, _, _, r in go_rows}
        print("goals (issue #5)")
        for label, kind, name, bound in GOALS:
            r = go_ratio[name] if kind == "go" else cxx[name]
            print("  %-52s ratio %5.2f  %s" % (label, r, "met" if r <= bound else "NOT met"))


if __name__ == "__main__":
    sys.exit(main())
