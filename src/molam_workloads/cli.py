"""``molam-analytics <command>``: one console script for every role of the one image.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``async run(args) -> int | None`` (and optionally ``loop_factory``, the event loop to run it on).
Only the chosen command's module is imported, so
``molam-analytics lag`` does not pay for FastAPI or Kopf. Errors meant for an operator
(``MolamError``: bad configuration, a service that cannot be reached) print one line and exit
with the error's code (``core.errors.ExitCode``: 2 configuration, 3 unreachable service).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from typing import Protocol, cast

from molam_workloads.core.errors import ExitCode, MolamError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("molam_workloads.jobs.migrate", "create or upgrade the schema (idempotent)"),
    "api": ("molam_workloads.api.command", "serve the REST API, /health, /metrics, dashboard"),
    "consume": ("molam_workloads.ingest.command", "run the Kafka consumer"),
    "alerts": ("molam_workloads.alerts.command", "run the alerts evaluator loop (or --once)"),
    "refresh-views": (
        "molam_workloads.jobs.refresh_views",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY mv_txn_daily_agg",
    ),
    "backfill": ("molam_workloads.jobs.backfill", "rebuild txn_hourly_agg for a date range"),
    "lag": ("molam_workloads.jobs.lag", "print the consumer group's lag per partition"),
    "simulate": ("molam_workloads.jobs.simulate", "publish synthetic transaction events"),
    "fx": ("molam_workloads.jobs.fx", "FX rates: fx load FILE"),
    "operator": ("molam_operator.command", "run the Kopf operator"),
    "delete-pipelines": (
        "molam_operator.uninstall",
        "delete AnalyticsPipelines and wait until the operator lets them go",
    ),
}


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    async def run(self, args: argparse.Namespace) -> int | None: ...


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: molam-analytics <command> [options]\n\n"
        "Real-time payments analytics. Configuration comes from the environment\n"
        "(DATABASE_URL, REDIS_URL, KAFKA_BOOTSTRAP_SERVERS, ...; see the README).\n\n"
        "commands:\n" + "\n".join(lines) + "\n\n"
        "Run 'molam-analytics <command> --help' for a command's options.\n"
    )


class _OneLineRetries(logging.Filter):
    """asyncpg's pool logs a full traceback each time it fails to restore its minimum of
    connections (after 1, 2, 4 … 60 s while PostgreSQL is down): kept, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncpg.pool").addFilter(_OneLineRetries())
    # Imported here: the core's service clients load only for a command that runs.
    from molam_workloads.core.faults import quiet_kafka_reconnects

    quiet_kafka_reconnects()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(), end="")
        return ExitCode.OK if argv else ExitCode.CONFIG
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"molam-analytics: unknown command {name!r}\n\n{_usage()}", end="", file=sys.stderr)
        return ExitCode.CONFIG
    module_name, help_ = COMMANDS[name]
    command = cast(Command, importlib.import_module(module_name))
    parser = argparse.ArgumentParser(prog=f"molam-analytics {name}", description=help_)
    command.add_arguments(parser)
    args = parser.parse_args(rest)
    _configure_logging()
    # A command may name the event loop it runs on (``loop_factory``; the API: uvloop).
    loop_factory = getattr(command, "loop_factory", None)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            code = runner.run(command.run(args))
    except MolamError as exc:
        print(f"molam-analytics {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
