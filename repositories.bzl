"""Declares gort's external dependencies.

A consumer workspace writes:

    local_repository(name = "gort", path = "...")   # or http_archive
    load("@gort//:repositories.bzl", "gort_dependencies")
    gort_dependencies()

and then depends on any single component, e.g. "@gort//fiber".

Every dependency is taken from the machine's Debian packages (tools/setup.sh
installs them) and exposed under upstream's repository name and labels, so a
networked user may switch any one of them to upstream's source archive by
declaring that repository before calling gort_dependencies(): a repository that
already exists is left alone.
"""

load(
    "//third_party/system:system_libs.bzl",
    "local_rules_cc",
    "local_stub_repository",
    "system_absl",
    "system_benchmark",
    "system_boost",
    "system_googletest",
    "system_gperftools",
)

def _maybe(rule, name, **kwargs):
    if name not in native.existing_rules():
        rule(name = name, **kwargs)

def gort_dependencies():
    """Declares every repository gort's BUILD files refer to."""

    # Bazel 4.2.3 would download these; they are provided locally instead.
    _maybe(local_rules_cc, "rules_cc")
    _maybe(
        native.local_repository,
        "rules_java",
        path = "/usr/share/bazel/rules/java",  # Debian's bazel-rules-java
    )
    _maybe(local_stub_repository, "remote_coverage_tools", build_file = Label("//third_party/remote_coverage_tools:BUILD.remote_coverage_tools"))

    # Libraries, from Debian's -dev packages.
    _maybe(system_absl, "com_google_absl")
    _maybe(system_googletest, "com_google_googletest")
    _maybe(system_benchmark, "com_github_google_benchmark")
    _maybe(system_gperftools, "com_github_gperftools_gperftools")
    _maybe(system_boost, "org_boost_boost")  # benchmarks only: the Boost.Context baseline
