"""What bench/compare_*.py share: building gort's benchmarks and the Go
programs of bench/go, and running them. Every number comes from the run
that asks for it; nothing is remembered between runs."""
import json
import os
import re
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GO_DIR = os.path.join(ROOT, "bench", "go")


def run(cmd, **kw):
    """Runs cmd; raises if it fails; returns the CompletedProcess (text)."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def build_gort(targets):
    """bazel build --config=opt `targets`; returns the bazel-bin directory."""
    run(["bazel", "build", "--config=opt"] + list(targets), cwd=ROOT)
    return run(["bazel", "info", "--config=opt", "bazel-bin"], cwd=ROOT).stdout.strip()


def build_go(programs, out_dir):
    """go build each bench/go/<program> into out_dir; returns {program: path}."""
    paths = {}
    for prog in sorted(set(programs)):
        out = os.path.join(out_dir, prog)
        run(["go", "build", "-o", out, "./" + prog], cwd=GO_DIR)
        paths[prog] = out
    return paths


def go_value(binary, flags, key="ns_per_op"):
    """Runs a Go program once and returns the number it prints after `key`."""
    out = run([binary] + list(flags)).stdout
    return float(re.search(r"^" + key + r" ([0-9.]+)", out, re.M).group(1))


def per_op_rows(benchmarks, reps):
    """{run_name: entry}: the median row of each benchmark, or, with one
    repetition (Google Benchmark then emits no aggregates), its single row."""
    rows = {}
    for b in benchmarks:
        if reps > 1:
            if b.get("aggregate_name") == "median":
                rows[b["run_name"]] = b
        elif "aggregate_name" not in b:
            rows[b["run_name"]] = b
    return rows


def gort_one(bench, run_name):
    """Runs one gort benchmark (its full run name, e.g.
    "BM_Chan_PingPong/1/real_time") alone in a fresh process, once; returns
    its ns per operation (the "ops" counter)."""
    base = run_name[:-len("/real_time")] if run_name.endswith("/real_time") else run_name
    out = run([bench, "--benchmark_filter=^" + re.escape(base) + "(/real_time)?$",
               "--benchmark_format=json"]).stdout
    rows = per_op_rows(json.loads(out)["benchmarks"], 1)
    return rows[run_name]["ops"] * 1e9


def paired(gort_fn, go_fn, reps):
    """Runs gort_fn() and go_fn() alternately, reps times each, so that each
    pair shares the host's state of the moment (this shared machine has slow
    spells of seconds that hit whichever runs then). Returns (median gort,
    median Go, median of the per-pair ratios, lowest ratio, highest ratio)."""
    g, o, r = [], [], []
    for _ in range(reps):
        a = gort_fn()
        b = go_fn()
        g.append(a)
        o.append(b)
        r.append(a / b)
    return (statistics.median(g), statistics.median(o), statistics.median(r),
            min(r), max(r))


def report_paired(bench, pairs, reps):
    """Prints, for each (gort run name, function returning Go's number) in
    `pairs`, the result of paired() over `reps` alternating processes."""
    print("%-46s %10s %10s %8s %12s" % (
        "benchmark (%d alternating pairs)" % reps, "gort", "Go", "gort/Go",
        "pair range"))
    for name, go_fn in pairs:
        g, o, ratio, lo, hi = paired(lambda: gort_one(bench, name), go_fn, reps)
        print("%-46s %10.1f %10.1f %8.2f %5.2f-%.2f" % (name, g, o, ratio, lo, hi))
