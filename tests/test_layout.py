"""The repository's layout: nothing in its root shadows the standard library, so any Python
started there works without settings (the code lives under ``src/``, each package in the folder
of its import name)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
# Only what a login shell has: no PYTHON* variables, no stack settings.
BARE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no Debian python3 on this machine")
def test_debian_python_in_the_root_imports_the_standard_library() -> None:
    """Debian's python3 imports little at start-up, so a shadowing folder would show here."""
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import operator, collections; operator.eq; print('ok')"],
        cwd=ROOT,
        env=BARE_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_pytest_collects_from_the_root_without_settings() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=BARE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " tests collected" in proc.stdout or "tests collected" in proc.stdout


def test_each_package_sits_in_the_folder_of_its_import_name() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "package-dir" not in project["tool"].get("setuptools", {})
    for name in project["tool"]["importlinter"]["root_packages"]:
        assert (ROOT / "src" / name / "__init__.py").is_file(), name
    # No top-level folder is a Python package: none can shadow a module, now or later.
    packages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()]
    assert packages == []
    # The workaround the old layout needed is gone everywhere but here.
    setting = "PYTHONSAFEPATH"
    tracked = subprocess.run(
        ["git", "grep", "-l", setting, "--", ":!tests/test_layout.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert tracked.stdout == "", f"still needs {setting}: {tracked.stdout}"


def _local_names(tests: Path) -> set[str]:
    """Every name a test file or folder could be imported by, were its folder on sys.path."""
    names = {p.stem for p in tests.rglob("*.py")} | {p.name for p in tests.rglob("*") if p.is_dir()}
    return names - set(sys.stdlib_module_names) - {"__init__", "__pycache__", "helpers"}


def test_test_packages_share_code_only_through_helpers() -> None:
    """A test module imports the code, libraries, ``helpers.<module>`` and modules of its own
    package (relative imports): never another test folder's module by a bare name, which works
    only while pytest happens to have put that folder on sys.path."""
    tests = ROOT / "tests"
    local = _local_names(tests)
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] in local]  # fmt: skip
    assert wrong == []
