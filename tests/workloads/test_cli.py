"""The command-line contract: every command prints --help, and bad configuration or
an unreachable service ends it with exit 3 (bad configuration: 2) and one readable ``error:``
line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from molam_workloads.cli import COMMANDS
from molam_workloads.core.errors import ExitCode

CLI = str(Path(sys.executable).with_name("molam-analytics"))
CLOSED = "127.0.0.1:1"  # nothing listens on port 1
UNREACHABLE = {
    "DATABASE_URL": f"postgresql://analytics@{CLOSED}/analytics",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "KAFKA_BOOTSTRAP_SERVERS": CLOSED,
    "ANALYTICS_JWT_SECRET": "a-test-secret-of-at-least-thirty-two-bytes",
    "LOG_LEVEL": "CRITICAL",  # library log lines aside: the contract is the CLI's own line
}


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_help(command: str) -> None:
    out = run(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: molam-analytics {command}")


@pytest.mark.parametrize(
    ("args", "service"),
    [
        (["migrate"], "PostgreSQL"),
        (["api", "--port", "0"], "PostgreSQL"),
        (["consume"], "PostgreSQL"),
        (["alerts", "--once"], "PostgreSQL"),
        (["refresh-views"], "PostgreSQL"),
        (["backfill", "--from", "2025-01-01", "--to", "2025-01-02"], "PostgreSQL"),
        (["lag"], "Kafka"),
        (["simulate", "--count", "1"], "Kafka"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_an_unreachable_service_is_one_line_and_exit_3(args: list[str], service: str) -> None:
    out = run(*args, **UNREACHABLE)
    assert out.returncode == ExitCode.UNAVAILABLE == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"molam-analytics {args[0]}: error: {service} at ")
    assert "unreachable" in lines[0]


def test_bad_configuration_names_the_variable() -> None:
    out = run("migrate", DATABASE_URL="mysql://analytics@localhost/analytics")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "molam-analytics migrate: error: bad configuration: DATABASE_URL: Value error, must "
        "start with postgresql:// (e.g. postgresql://user@host:5432/db)"
    )


def test_unknown_command() -> None:
    out = run("frobnicate")
    assert out.returncode == 2
    assert "unknown command 'frobnicate'" in out.stderr


def test_asyncpg_pool_retries_are_one_line_each() -> None:
    """asyncpg logs a traceback at each failed reconnection of its pool (every 1 … 60 s while
    PostgreSQL is down): the command line's logging keeps the line and the error, not the
    traceback."""
    code = (
        "import logging, sys\n"
        "from molam_workloads import cli\n"
        "cli._configure_logging()\n"
        "try:\n"
        "    raise ConnectionRefusedError(111, 'Connect call failed')\n"
        "except OSError:\n"
        "    logging.getLogger('asyncpg.pool').warning('Failed to restore the pool connection"
        " floor; retrying', exc_info=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    (line,) = out.stderr.strip().splitlines()
    assert line.endswith(
        "WARNING asyncpg.pool Failed to restore the pool connection floor; retrying: "
        "ConnectionRefusedError: [Errno 111] Connect call failed"
    ), out.stderr
