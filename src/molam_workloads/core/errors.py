"""Errors the command line turns into one human-readable line, and every exit code, in one place.

A process exits only where a restart is the right answer (Kubernetes restarts the pod, an
operator reads the one line); everything a restart would not cure (a service that went away
for a while) is waited for instead. docs/faults.md lists each fault and what it does.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit status of ``molam-analytics <command>``: one code per kind of reason."""

    OK = 0
    # An unexpected error: Python's own status, with a traceback (a bug).
    INTERNAL = 1
    # Bad configuration or command line (argparse's own status too): a restart cannot cure it.
    CONFIG = 2
    # A backing service could not be reached, or refused the credentials, at start.
    UNAVAILABLE = 3
    # The consumer's stored offsets disagree with the broker's log (past its end, or the topic
    # was re-created) and the policy says stop rather than reset.
    OFFSETS_INCONSISTENT = 4
    # SIGINT (the shell's convention, 128 + 2).
    INTERRUPTED = 130


class MolamError(Exception):
    """Base of errors that carry a message meant for an operator, not a traceback."""

    exit_code: ExitCode = ExitCode.CONFIG


class ConfigError(MolamError):
    """The environment or the command line is wrong."""

    exit_code = ExitCode.CONFIG


class ServiceUnavailable(MolamError):
    """PostgreSQL, Redis or Kafka cannot be reached."""

    exit_code = ExitCode.UNAVAILABLE
