"""The image itself: built (or reused) by ``make image``, which starts Docker where it is not
running, then run: every command's ``--help``, the user it runs as, what it leaves out, and the
API serving ``/health`` against the local stack.

Docker is required. Where it cannot run (no root, no apt), ``make image`` fails and so do these
tests, with its message: a CI machine without Docker must not pass them by skipping.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from molam_workloads.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
UID = 10001
# Cold, `make image` may install docker.io, debootstrap the base and build every wheel.
pytestmark = pytest.mark.timeout(1800)


@dataclass(frozen=True)
class Image:
    docker: str  # the CLI stack/image.sh builds with (Debian's, which talks the daemon's API)
    name: str

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.docker, "run", "--rm", "--network", "none", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def image() -> Image:
    try:
        proc = subprocess.run(
            ["make", "--no-print-directory", "image"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1500,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"make image did not finish within {exc.timeout} s")
    if proc.returncode != 0:
        pytest.fail(
            "make image failed; these tests need Docker, which stack/docker.sh installs and "
            "starts as root:\n" + "\n".join(proc.stderr.splitlines()[-30:])
        )
    docker = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")
    assert docker, "make image succeeded but no docker CLI is on this machine"
    return Image(docker, f"molam-analytics:{VERSION}")


def _make_image() -> tuple[str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr, time.monotonic() - started


def test_nothing_changed_nothing_rebuilt(image: Image) -> None:
    """Run again at once (the sources unchanged in between), `make image` builds no wheel and
    reuses every layer: the same image, in a few seconds."""
    _make_image()
    log, seconds = _make_image()
    assert "wheel on the host" not in log and "wheels on the host" not in log, log
    steps = [line for line in log.splitlines() if re.match(r"#\d+ \[runtime \d+/\d+\] RUN", line)]
    assert steps, log
    for step in steps:
        number = step.split()[0]
        assert f"{number} CACHED" in log, f"rebuilt: {step}"
    assert seconds < 20, f"make image took {seconds:.1f} s with nothing changed"


def test_tagged_with_the_version_and_dev(image: Image) -> None:
    ids = []
    for tag in (VERSION, "dev"):
        proc = subprocess.run(
            [image.docker, "image", "inspect", f"molam-analytics:{tag}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        (info,) = json.loads(proc.stdout)
        ids.append(info["Id"])
        assert info["Config"]["User"] == f"{UID}:{UID}"
        assert info["Config"]["Entrypoint"] == ["molam-analytics"]
    assert ids[0] == ids[1], "molam-analytics:dev is not the image just built"


def test_top_level_help_lists_every_command(image: Image) -> None:
    proc = image.run(image.name, "--help")
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert f"\n  {command} " in proc.stdout, command


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help(image: Image, command: str) -> None:
    """Each command's module imports in the image (its dependencies are installed) and
    parses its options, offline."""
    proc = image.run(image.name, command, "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"usage: molam-analytics {command}"), proc.stdout


def test_runs_as_the_fixed_non_root_user(image: Image) -> None:
    proc = image.run("--entrypoint", "sh", image.name, "-c", "id -u; id -g; test -w /opt/molam")
    uid, gid = proc.stdout.split()
    assert (int(uid), int(gid)) == (UID, UID), proc.stdout
    assert proc.returncode != 0, "the user can write to the installed application"


def test_compiled_extension_loads(image: Image) -> None:
    """The consumer's C extension, compiled where the wheels were built, loads with the image's
    Python and C library."""
    code = "import molam_workloads.ingest._summary as s; print(s.__file__)"
    proc = image.run("--entrypoint", "python", image.name, "-c", code)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert path.startswith("/opt/molam/") and path.endswith(".so"), path


def test_no_compilers_caches_or_sources(image: Image) -> None:
    script = (
        "for c in gcc cc c99 clang g++ make; do command -v $c; done; "
        "for d in /root/.cache/pip /wheels /src /app/workloads; do test -e $d && echo $d; done; "
        "true"
    )
    proc = image.run("--user", "0", "--entrypoint", "sh", image.name, "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"found in the image: {proc.stdout.split()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _docker(docker: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        docker, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return int(proc.returncode or 0), out.decode(errors="replace")


async def test_api_serves_health_against_the_stack(
    image: Image, database_url: str, redis_url: str, kafka_bootstrap: str
) -> None:
    """`molam-analytics api` in the image, on the host's network (loopback only), against the
    stack's PostgreSQL (a fresh migrated database), Redis and broker: /health is 200 with every
    dependency up, the dashboard is served, and the process runs as the image's user."""
    port = _free_port()
    name = f"molam-image-test-{uuid.uuid4().hex[:10]}"
    # Values go through the environment of the docker CLI (`-e NAME`), not its arguments.
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith("KAFKA_")},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ANALYTICS_JWT_SECRET": secrets.token_urlsafe(32),
    }
    volumes = []
    # A server reached over a Unix socket (e.g. ?host=/path): the socket's folder goes in too.
    for url in (database_url, redis_url):
        for host in parse_qs(urlparse(url).query).get("host", []):
            if host.startswith("/"):
                volumes += ["-v", f"{host}:{host}"]
    args = ["run", "-d", "--name", name, "--network", "host", *volumes]
    for key in env:
        args += ["-e", key]
    args += [image.name, "api", "--host", "127.0.0.1", "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(
        image.docker,
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = None
            for _ in range(120):  # 60 s
                try:
                    response = await client.get("/health")
                    break
                except httpx.TransportError:
                    _, state = await _docker(
                        image.docker, "inspect", "-f", "{{.State.Running}}", name
                    )
                    if state.strip() != "true":
                        break
                    await asyncio.sleep(0.5)
            if response is None:
                _, logs = await _docker(image.docker, "logs", "--tail", "40", name)
                pytest.fail(f"the API in the image did not answer:\n{logs}")
            assert response.status_code == 200, response.text
            checks = response.json()["checks"]
            assert {k: c["status"] for k, c in checks.items()} == {
                "postgresql": "up",
                "redis": "up",
                "kafka": "up",
            }
            dashboard = await client.get("/")
            assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
        code, uid = await _docker(image.docker, "exec", name, "id", "-u")
        assert (code, uid.strip()) == (0, str(UID))
    finally:
        await _docker(image.docker, "rm", "-f", name)
