"""Maps the folders ``workloads/`` and ``operator/`` to the import names ``molam_workloads`` and
``molam_operator`` (``operator`` is a standard-library module). Everything else is in
pyproject.toml; this file only lists the packages, which a static table cannot derive."""

from setuptools import find_packages, setup


def mapped(name: str, folder: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(packages=mapped("molam_workloads", "workloads") + mapped("molam_operator", "operator"))
