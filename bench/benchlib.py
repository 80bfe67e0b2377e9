"""What bench/compare_*.py share: building gort's benchmarks and the Go
programs of bench/go, and running them. Every number comes from the run
that asks for it; nothing is remembered between runs."""
import os
import re
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
