#!/usr/bin/env python3
"""Runs the "million goroutines" demo (//examples:million_fibers, optimised)
and Go's bench/go/sleepers alternately and prints wall time, peak RSS and
the ratios gort/Go, pair by pair, then their medians and ranges.

    bench/compare_demo.py [--reps 5] [--compact] [--procs 2] [--fibers N]

Both programs start N fibers (goroutines) that each sleep 100 ms and signal
a WaitGroup; each reports its wall time and its peak RSS. Go prints MiB
(ru_maxrss / 1024) and the demo prints decimal units: both are converted
to bytes before any ratio is taken. The demo also reports how many fibers
were alive at its peak, which sets its peak RSS (docs/sched.md).

Needs Go (tools/setup.sh --bench installs Debian's golang-go). Every number
it prints is measured in this run; nothing is remembered between runs.
"""
import argparse
import os
import re
import statistics
import sys
import tempfile

from benchlib import build_go, build_gort, run

UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def gort_demo(binary, procs, fibers, compact):
    """One demo run: (wall s, peak RSS bytes, fibers alive at the peak)."""
    env = dict(os.environ, GORT_MAXPROCS=str(procs))
    out = run([binary, "--threads=0", "--fibers=%d" % fibers,
               "--compact=%d" % (1 if compact else 0)], env=env).stdout
    m = re.search(r"wall ([0-9.]+) s, peak RSS ([0-9.]+) ([KMGT]?B) .*?"
                  r"; ([0-9,]+) alive at peak", out)
    if m is None:
        raise RuntimeError("unexpected demo output:\n" + out)
    return (float(m.group(1)), float(m.group(2)) * UNITS[m.group(3)],
            int(m.group(4).replace(",", "")))


def go_sleepers(binary, procs, fibers):
    """One Go run: (wall s, peak RSS bytes)."""
    out = run([binary, "-procs=%d" % procs, "-n=%d" % fibers]).stdout
    m = re.search(r"wall_ms ([0-9.]+) peak_rss_mb ([0-9.]+)", out)
    if m is None:
        raise RuntimeError("unexpected sleepers output:\n" + out)
    return float(m.group(1)) / 1e3, float(m.group(2)) * 1024 * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--fibers", type=int, default=1000000)
    ap.add_argument("--compact", action="store_true",
                    help="run the demo's fibers on compact 2 KiB stacks")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")

    bin_dir = build_gort(["//examples:million_fibers"])
    demo = os.path.join(bin_dir, "examples", "million_fibers")
    with tempfile.TemporaryDirectory() as tmp:
        sleepers = build_go(["sleepers"], tmp)["sleepers"]
        print("%d fibers sleeping 100 ms at %d Ps%s; gort and Go alternate"
              % (args.fibers, args.procs,
                 ", compact stacks" if args.compact else ""))
        print("%4s %9s %9s %7s %10s %10s %7s %10s" % (
            "pair", "gort s", "Go s", "wall", "gort MiB", "Go MiB", "RSS",
            "alive"))
        walls, rsss = [], []
        for i in range(args.reps):
            gw, gr, alive = gort_demo(demo, args.procs, args.fibers,
                                      args.compact)
            ow, orss = go_sleepers(sleepers, args.procs, args.fibers)
            walls.append(gw / ow)
            rsss.append(gr / orss)
            print("%4d %9.2f %9.2f %7.2f %10.0f %10.0f %7.2f %10d" % (
                i + 1, gw, ow, gw / ow, gr / 2**20, orss / 2**20, gr / orss,
                alive))
        print("gort/Go wall: median %.2f (%.2f-%.2f); peak RSS: median %.2f "
              "(%.2f-%.2f)" % (statistics.median(walls), min(walls),
                               max(walls), statistics.median(rsss), min(rsss),
                               max(rsss)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
