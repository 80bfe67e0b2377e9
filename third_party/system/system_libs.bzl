"""Repository rules exposing Debian's -dev packages under upstream's names.

Headers live in /usr/include, which the compiler searches already, so each
target only names what to link. Static archives are imported with cc_import
(so link order is right); shared libraries are named with -l.
"""

_LIB_DIRS = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
]

def _lib_dir(rctx, probe):
    for d in _LIB_DIRS:
        if rctx.path(d + "/" + probe).exists:
            return d
    fail("%s not found in %s: run tools/setup.sh" % (probe, _LIB_DIRS))

def _symlink_static(rctx, libdir, name):
    rctx.symlink(libdir + "/lib" + name + ".a", "lib/lib" + name + ".a")

# --- @rules_cc and stubs -----------------------------------------------------

def _local_rules_cc_impl(rctx):
    rctx.file("WORKSPACE", 'workspace(name = "rules_cc")\n')
    rctx.symlink(rctx.attr._root_build, "BUILD.bazel")
    rctx.symlink(rctx.attr._cc_build, "cc/BUILD.bazel")
    rctx.symlink(rctx.attr._defs, "cc/defs.bzl")

local_rules_cc = repository_rule(
    implementation = _local_rules_cc_impl,
    attrs = {
        "_root_build": attr.label(default = Label("//third_party/rules_cc:root.BUILD")),
        "_cc_build": attr.label(default = Label("//third_party/rules_cc:cc.BUILD")),
        "_defs": attr.label(default = Label("//third_party/rules_cc:defs.bzl")),
    },
    doc = "A tiny @rules_cc that forwards to Bazel's native C++ rules.",
)

def _local_stub_repository_impl(rctx):
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.symlink(rctx.attr.build_file, "BUILD.bazel")

local_stub_repository = repository_rule(
    implementation = _local_stub_repository_impl,
    attrs = {"build_file": attr.label(mandatory = True)},
)

# --- Abseil --------------------------------------------------------------------

# Upstream packages and the targets in them that gort's users may need. Every
# target forwards to one library that links all of Debian's libabsl_*.so; the
# linker's --as-needed keeps only the ones a binary uses.
_ABSL_TARGETS = {
    "algorithm": ["algorithm", "container"],
    "base": ["base", "config", "core_headers", "dynamic_annotations", "log_severity", "prefetch", "raw_logging_internal"],
    "cleanup": ["cleanup"],
    "container": ["btree", "fixed_array", "flat_hash_map", "flat_hash_set", "inlined_vector", "node_hash_map", "node_hash_set"],
    "debugging": ["failure_signal_handler", "stacktrace", "symbolize"],
    "flags": ["flag", "parse"],
    "functional": ["any_invocable", "bind_front", "function_ref"],
    "hash": ["hash"],
    "memory": ["memory"],
    "meta": ["type_traits"],
    "numeric": ["bits", "int128"],
    "random": ["bit_gen_ref", "distributions", "random"],
    "status": ["status", "statusor"],
    "strings": ["cord", "str_format", "strings"],
    "synchronization": ["synchronization"],
    "time": ["time"],
    "types": ["optional", "span", "variant"],
    "utility": ["utility"],
}

# Targets whose libraries every binary that depends on them must load, even if
# the binary itself never calls them. Tests link their cc_library deps as
# shared objects (_solib_k8/lib*.so), and gold's --as-needed ignores the
# references those make: without this, a test of //sync (which uses
# absl::Status and absl::Now) that does not itself call Abseil fails to load
# ("symbol lookup error"). Each entry: package -> {target: [libraries]}; the
# libraries' own dependencies come with them (their DT_NEEDED entries).
_ABSL_ALWAYS_LOADED = {
    "status": {"status": ["absl_status"], "statusor": ["absl_status", "absl_statusor"]},
    "time": {"time": ["absl_time"]},
}

def _system_absl_impl(rctx):
    libdir = _lib_dir(rctx, "libabsl_base.so")
    libs = []
    for f in rctx.path(libdir).readdir():
        n = f.basename
        if n.startswith("libabsl_") and n.endswith(".so"):
            libs.append(n[len("lib"):-len(".so")])
    libs = sorted(libs)
    rctx.file("WORKSPACE", 'workspace(name = "com_google_absl")\n')
    rctx.file("BUILD.bazel", """
# Abseil from Debian's libabsl-dev (headers in /usr/include/absl).
cc_library(
    name = "absl",
    linkopts = ["-Wl,--as-needed"] + {libopts} + ["-lpthread"],
    visibility = ["//visibility:public"],
)
""".format(libopts = repr(["-l" + l for l in libs])))
    for pkg, targets in _ABSL_TARGETS.items():
        content = ['package(default_visibility = ["//visibility:public"])\n']
        forced = _ABSL_ALWAYS_LOADED.get(pkg, {})
        for t in targets:
            if t in forced:
                content.append(
                    'cc_library(name = "%s", deps = ["//:absl"], linkopts = %s)\n' %
                    (t, repr(["-Wl,--no-as-needed"] + ["-l" + l for l in forced[t]] + ["-Wl,--as-needed"])),
                )
            else:
                content.append('alias(name = "%s", actual = "//:absl")\n' % t)
        rctx.file("absl/%s/BUILD.bazel" % pkg, "\n".join(content))

system_absl = repository_rule(
    implementation = _system_absl_impl,
    local = True,
    doc = "@com_google_absl from Debian's libabsl-dev.",
)

# --- GoogleTest ----------------------------------------------------------------

def _system_googletest_impl(rctx):
    libdir = _lib_dir(rctx, "libgtest.a")
    for n in ["gtest", "gtest_main", "gmock", "gmock_main"]:
        _symlink_static(rctx, libdir, n)
    rctx.file("WORKSPACE", 'workspace(name = "com_google_googletest")\n')
    rctx.file("BUILD.bazel", """
# GoogleTest/GoogleMock from Debian's googletest (headers in /usr/include).
package(default_visibility = ["//visibility:public"])

cc_import(name = "gtest_a", static_library = "lib/libgtest.a")
cc_import(name = "gtest_main_a", static_library = "lib/libgtest_main.a")
cc_import(name = "gmock_a", static_library = "lib/libgmock.a")
cc_import(name = "gmock_main_a", static_library = "lib/libgmock_main.a")

cc_library(name = "gtest", deps = [":gtest_a"], linkopts = ["-lpthread"])
cc_library(name = "gtest_main", deps = [":gtest_main_a", ":gtest"])
cc_library(name = "gmock", deps = [":gmock_a", ":gtest"])
cc_library(name = "gmock_main", deps = [":gmock_main_a", ":gmock"])
""")

system_googletest = repository_rule(
    implementation = _system_googletest_impl,
    local = True,
    doc = "@com_google_googletest from Debian's googletest.",
)

# --- Google Benchmark ------------------------------------------------------------

def _system_benchmark_impl(rctx):
    libdir = _lib_dir(rctx, "libbenchmark.so")
    _symlink_static(rctx, libdir, "benchmark_main")
    rctx.file("WORKSPACE", 'workspace(name = "com_github_google_benchmark")\n')
    rctx.file("BUILD.bazel", """
# Google Benchmark from Debian's libbenchmark-dev (headers in /usr/include).
package(default_visibility = ["//visibility:public"])

cc_library(name = "benchmark", linkopts = ["-lbenchmark", "-lpthread"])
cc_import(name = "benchmark_main_a", static_library = "lib/libbenchmark_main.a")
cc_library(name = "benchmark_main", deps = [":benchmark_main_a", ":benchmark"])
""")

system_benchmark = repository_rule(
    implementation = _system_benchmark_impl,
    local = True,
    doc = "@com_github_google_benchmark from Debian's libbenchmark-dev.",
)

# --- gperftools --------------------------------------------------------------------

def _system_gperftools_impl(rctx):
    _lib_dir(rctx, "libprofiler.so")
    rctx.file("WORKSPACE", 'workspace(name = "com_github_gperftools_gperftools")\n')
    rctx.file("BUILD.bazel", """
# gperftools from Debian's libgoogle-perftools-dev (headers in /usr/include/gperftools).
package(default_visibility = ["//visibility:public"])

# The CPU profiler. Linked whole (--no-as-needed): it starts itself when the
# CPUPROFILE environment variable names an output file.
cc_library(
    name = "profiler",
    linkopts = ["-Wl,--no-as-needed", "-lprofiler", "-Wl,--as-needed"],
)

# tcmalloc. Never link it together with ASan or TSan: both replace malloc.
cc_library(
    name = "tcmalloc",
    linkopts = ["-Wl,--no-as-needed", "-ltcmalloc", "-Wl,--as-needed"],
)
""")

system_gperftools = repository_rule(
    implementation = _system_gperftools_impl,
    local = True,
    doc = "@com_github_gperftools_gperftools from Debian's libgoogle-perftools-dev.",
)

# --- Boost (benchmark baselines only) ------------------------------------------------

def _system_boost_impl(rctx):
    rctx.file("WORKSPACE", 'workspace(name = "org_boost_boost")\n')
    has_context = False
    has_fiber = False
    for d in _LIB_DIRS:
        if rctx.path(d + "/libboost_context.so").exists:
            has_context = True
        if rctx.path(d + "/libboost_fiber.so").exists:
            has_fiber = True
    rctx.file("BUILD.bazel", """
# Boost.Context and Boost.Fiber from Debian (libboost-context-dev,
# libboost-fiber-dev): the baselines gort's benchmarks compare against. Never a
# dependency of a library target. A missing package leaves its target empty and
# the config_setting-free flag `available` false (see tools/setup.sh --bench).
package(default_visibility = ["//visibility:public"])

cc_library(name = "context", linkopts = {ctx}, defines = {ctx_def})
cc_library(name = "fiber", linkopts = {fib}, deps = [":context"], defines = {fib_def})
""".format(
        ctx = repr(["-lboost_context"] if has_context else []),
        ctx_def = repr(["GORT_HAVE_BOOST_CONTEXT=1"] if has_context else []),
        fib = repr(["-lboost_fiber"] if has_fiber else []),
        fib_def = repr(["GORT_HAVE_BOOST_FIBER=1"] if has_fiber else []),
    ))

system_boost = repository_rule(
    implementation = _system_boost_impl,
    local = True,
    doc = "@org_boost_boost's context and fiber libraries from Debian.",
)
