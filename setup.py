"""Builds the consumer's compiled batch summary (``src/molam_workloads/ingest/_summary.c``).
Everything else is in pyproject.toml; this file only lists what a static table cannot: the
extension."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "molam_workloads.ingest._summary",
            ["src/molam_workloads/ingest/_summary.c"],
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
        )
    ],
)
