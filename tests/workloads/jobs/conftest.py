"""The job tests reuse the ingestion tests' stack fixture (topics, group, fast timeouts)."""

from ingest.conftest import stack

__all__ = ["stack"]
