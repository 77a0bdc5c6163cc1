"""Maps the folders ``workloads/`` and ``operator/`` to the import names ``molam_workloads`` and
``molam_operator`` (``operator`` is a standard-library module), and builds the consumer's
compiled batch summary (``workloads/ingest/_summary.c``). Everything else is in pyproject.toml;
this file only lists what a static table cannot: the packages and the extension."""

from setuptools import Extension, find_packages, setup


def mapped(name: str, folder: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(
    packages=mapped("molam_workloads", "workloads") + mapped("molam_operator", "operator"),
    ext_modules=[
        Extension(
            "molam_workloads.ingest._summary",
            ["workloads/ingest/_summary.c"],
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
