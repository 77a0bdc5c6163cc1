"""stack/image.sh's wheel cache, without Docker: it hashes exactly what an image build copies,
and its keys change with the code and only with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_dockerfile import _dockerignore, in_context

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the repo's tracked build inputs and stack/image.sh, plus what a working tree
    also holds and an image build leaves out."""
    files = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "setup.py", "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in [*files, "stack/image.sh", ".dockerignore"]:
        if (ROOT / f).is_file():
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tmp_path / f)
    for junk in (
        "src/molam_workloads/__pycache__/cli.cpython-311.pyc",
        "src/molam_workloads/ingest/_summary.cpython-311-x86_64-linux-gnu.so",
        "molam_analytics.egg-info/PKG-INFO",
        "src/molam_operator.egg-info/PKG-INFO",
        "tests/conftest.py",
        ".venv/bin/python",
    ):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_text("junk")
    return tmp_path


def _sh(tree: Path, function: str) -> list[str]:
    proc = subprocess.run(
        ["bash", "-c", f". stack/image.sh && {function}"],
        cwd=tree,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_hashes_what_the_image_build_copies(tree: Path) -> None:
    patterns = _dockerignore()
    every = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    sent = [f for f in every if in_context(f, patterns) and f != ".dockerignore"]
    assert "src/molam_workloads/cli.py" in sent
    assert _sh(tree, "sources") == sorted(sent)


def test_keys_follow_the_code(tree: Path) -> None:
    deps, project = _sh(tree, "wheel_keys")
    assert _sh(tree, "wheel_keys") == [deps, project]

    os.utime(tree / "src" / "molam_workloads" / "cli.py")  # a newer time alone rebuilds nothing
    (tree / "src" / "molam_workloads" / "__pycache__" / "new.cpython-311.pyc").write_text("x")
    assert _sh(tree, "wheel_keys") == [deps, project]

    cli = tree / "src" / "molam_workloads" / "cli.py"
    cli.write_text(cli.read_text() + "\n# changed\n")
    changed = _sh(tree, "wheel_keys")
    assert changed[0] == deps and changed[1] != project  # only the project's wheel

    cli.rename(tree / "src" / "molam_workloads" / "cli2.py")
    renamed = _sh(tree, "wheel_keys")
    assert renamed[0] == deps and renamed[1] not in (project, changed[1])

    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n")
    after = _sh(tree, "wheel_keys")
    assert after[0] != deps and after[1] != renamed[1]  # dependencies may differ: both
