#!/usr/bin/env python3
"""Runs //chan:chan_bench and the matching Go programs (bench/go/chan_*) in
one go and prints medians and ratios gort/Go.

    bench/compare_chan.py [--reps 3] [--filter REGEX] [--paired]

--paired runs gort and Go alternately, one fresh process each per
repetition, and reports the median of the per-pair ratios (and their
range): the host's slow spells then hit both sides of a pair alike.

Needs Go (tools/setup.sh --bench installs Debian's golang-go). Every number
it prints is measured in this run; nothing is remembered between runs.
"""
import argparse
import json
import os
import re
import statistics
import sys
import tempfile

from benchlib import build_go, build_gort, go_value, per_op_rows, report_paired, run

# gort benchmark name -> (Go program, its flags, the number Go prints)
PAIRS = [
    ("BM_Chan_PingPong/1/real_time", "chan_pingpong", ["-procs=1"], "ns_per_op"),
    ("BM_Chan_PingPong/2/real_time", "chan_pingpong", ["-procs=2"], "ns_per_op"),
    ("BM_Chan_Buffered/1/real_time", "chan_buffered", ["-producers=1"], "ns_per_op"),
    ("BM_Chan_Buffered/4/real_time", "chan_buffered", ["-producers=4"], "ns_per_op"),
    ("BM_Chan_Select/real_time", "chan_select", [], "ns_per_op"),
    ("BM_Chan_ParkedMemory/iterations:1/real_time", "chan_parked", [], "rss_per_task_bytes"),
]
# Counters other than the per-op time, by benchmark name.
COUNTER = {"BM_Chan_ParkedMemory/iterations:1/real_time": "rss_per_fiber_bytes"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--filter", default=".")
    ap.add_argument("--paired", action="store_true",
                    help="alternate gort and Go processes; median of pair ratios")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")

    bin_dir = build_gort(["//chan:chan_bench"])
    with tempfile.TemporaryDirectory() as tmp:
        gobin = build_go([p for _, p, _, _ in PAIRS], tmp)

        bench = os.path.join(bin_dir, "chan", "chan_bench")
        if args.paired:
            report_paired(bench, [
                (name, lambda prog=prog, flags=flags, key=key:
                 go_value(gobin[prog], flags, key))
                for name, prog, flags, key in PAIRS
                if name not in COUNTER and re.search(args.filter, name)
            ], args.reps)
            return 0
        res = run([bench, "--benchmark_filter=" + args.filter,
                   "--benchmark_repetitions=%d" % args.reps,
                   "--benchmark_format=json"])
        gort = {}
        rows = per_op_rows(json.loads(res.stdout)["benchmarks"], args.reps)
        for name, b in rows.items():
            if name not in COUNTER and "ops" in b:
                gort[name] = b["ops"] * 1e9
        # Memory is measured in a fresh process each time: in the shared run,
        # stacks and pages left resident by earlier benchmarks would be
        # reused and hide the real cost per parked fiber.
        for name, counter in COUNTER.items():
            if not re.search(args.filter, name):
                continue
            samples = []
            for _ in range(args.reps):
                out = run([bench, "--benchmark_filter=^" + re.escape(name.split("/")[0]) + "/",
                           "--benchmark_format=json"]).stdout
                samples.append(json.loads(out)["benchmarks"][0][counter])
            gort[name] = statistics.median(samples)

        print("%-46s %12s %12s %8s" % ("benchmark (medians of %d)" % args.reps, "gort", "Go", "gort/Go"))
        for name, prog, flags, key in PAIRS:
            if name not in gort:
                continue
            go = statistics.median(go_value(gobin[prog], flags, key) for _ in range(args.reps))
            print("%-46s %12.1f %12.1f %8.2f" % (name, gort[name], go, gort[name] / go))
        # Baselines with no Go counterpart: Boost.Fiber (when installed) and
        # the thread ping-pong pair (gort channels vs mutex + condvar).
        for name in sorted(gort):
            if "Thread" in name or "Boost" in name:
                print("%-46s %12.1f" % (name, gort[name]))


if __name__ == "__main__":
    sys.exit(main())
