"""Errors the command line turns into one human-readable line and a non-zero exit."""


class MolamError(Exception):
    """Base of errors that carry a message meant for an operator, not a traceback."""


class ConfigError(MolamError):
    """The environment or the command line is wrong."""


class ServiceUnavailable(MolamError):
    """PostgreSQL, Redis or Kafka cannot be reached."""
