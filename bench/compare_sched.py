#!/usr/bin/env python3
"""Runs //sched:sched_bench and the matching Go programs (bench/go) in one
go and prints medians and ratios gort/Go.

    bench/compare_sched.py [--reps 3] [--filter REGEX] [--paired]

--paired runs gort and Go alternately, one fresh process each per
repetition, and reports the median of the per-pair ratios (and their
range), as bench/compare_chan.py --paired does.

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

# gort benchmark name -> (Go program, its flags)
PAIRS = [
    ("BM_Sched_Spawn/1/real_time", "spawn", ["-procs=1"]),
    ("BM_Sched_Spawn/2/real_time", "spawn", ["-procs=2"]),
    ("BM_Sched_Yield/real_time", "yield", []),
    ("BM_Sched_ParkUnparkPingPong/1/real_time", "pingpong", ["-procs=1"]),
    ("BM_Sched_ParkUnparkPingPong/2/real_time", "pingpong", ["-procs=2"]),
    ("BM_Sched_SkewedLoad/1/real_time", "skewed", ["-procs=1"]),
    ("BM_Sched_SkewedLoad/2/real_time", "skewed", ["-procs=2"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--filter", default="Spawn|Yield|PingPong|Skewed")
    ap.add_argument("--paired", action="store_true",
                    help="alternate gort and Go processes; median of pair ratios")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")

    bin_dir = build_gort(["//sched:sched_bench"])
    with tempfile.TemporaryDirectory() as tmp:
        gobin = build_go([p for _, p, _ in PAIRS], tmp)

        bench = os.path.join(bin_dir, "sched", "sched_bench")
        if args.paired:
            report_paired(bench, [
                (name, lambda prog=prog, flags=flags:
                 go_value(gobin[prog], flags))
                for name, prog, flags in PAIRS if re.search(args.filter, name)
            ], args.reps)
            return 0

        res = run([bench,
                   "--benchmark_filter=" + args.filter,
                   "--benchmark_repetitions=%d" % args.reps,
                   "--benchmark_format=json"])
        rows = per_op_rows(json.loads(res.stdout)["benchmarks"], args.reps)
        gort = {name: b["ops"] * 1e9 for name, b in rows.items()}  # s -> ns

        rows = []
        for name, prog, flags in PAIRS:
            if name not in gort or not re.search(args.filter, name):
                continue
            go = statistics.median(go_value(gobin[prog], flags) for _ in range(args.reps))
            rows.append((name, gort[name], go, gort[name] / go))

        print("%-44s %12s %12s %8s" % ("benchmark (medians of %d)" % args.reps, "gort ns/op", "Go ns/op", "gort/Go"))
        for name, g, go, r in rows:
            print("%-44s %12.1f %12.1f %8.2f" % (name, g, go, r))
        sk = {n: g for n, g, _, _ in rows if "Skewed" in n}
        if len(sk) == 2:
            print("skewed load speed-up 1 P -> 2 Ps: gort %.2fx" %
                  (sk["BM_Sched_SkewedLoad/1/real_time"] / sk["BM_Sched_SkewedLoad/2/real_time"]))


if __name__ == "__main__":
    sys.exit(main())
