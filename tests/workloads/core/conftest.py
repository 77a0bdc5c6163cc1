"""Fixtures of the core tests."""

from __future__ import annotations

import pytest
from kafka_tls import TlsFiles, make_tls_files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and another CA."""
    return make_tls_files(tmp_path_factory.mktemp("kafka-tls"))
