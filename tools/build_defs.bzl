"""Common build settings for gort's targets: copts, sanitizer handling, tests
and benchmarks. Every BUILD file uses these macros instead of repeating flags."""

GORT_COPTS = [
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
]

# Defines telling the code which sanitizer it is built with (gcc has no
# __has_feature; it defines __SANITIZE_ADDRESS__ and __SANITIZE_THREAD__, which
# the code uses too). GORT_SANITIZED lets tests scale heavy stress loops down.
_SANITIZER_DEFINES = select({
    "@gort//tools:asan": ["GORT_SANITIZED=1"],
    "@gort//tools:tsan": ["GORT_SANITIZED=1"],
    "//conditions:default": [],
})

# The CPU profiler and ASan/TSan must not be linked together.
_PROFILER = select({
    "@gort//tools:asan": [],
    "@gort//tools:tsan": [],
    "//conditions:default": ["@com_github_gperftools_gperftools//:profiler"],
})

def gort_cc_library(name, copts = [], **kwargs):
    native.cc_library(
        name = name,
        copts = GORT_COPTS + copts,
        **kwargs
    )

def gort_cc_test(name, deps = [], copts = [], local_defines = [], size = "small", **kwargs):
    native.cc_test(
        name = name,
        copts = GORT_COPTS + copts,
        local_defines = local_defines + _SANITIZER_DEFINES,
        size = size,
        deps = deps + ["@com_google_googletest//:gtest_main"],
        **kwargs
    )

def gort_cc_bench(name, deps = [], copts = [], tags = [], visibility = None, **kwargs):
    """A Google Benchmark binary. Writes a gperftools CPU profile to $CPUPROFILE.

    Visible to //tools, whose bench_profile_test checks that profile."""
    if visibility == None or visibility == ["//visibility:private"]:
        visibility = ["//tools:__pkg__"]
    elif "//visibility:public" not in visibility:
        visibility = visibility + ["//tools:__pkg__"]
    native.cc_binary(
        name = name,
        testonly = 1,
        copts = GORT_COPTS + copts,
        tags = tags + ["benchmark"],
        visibility = visibility,
        deps = deps + ["@com_github_google_benchmark//:benchmark_main"] + _PROFILER,
        **kwargs
    )
