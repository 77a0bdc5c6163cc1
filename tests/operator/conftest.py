"""Cluster fixtures for the operator's tests: the real kube-apiserver from KUBECONFIG (written to
``.stack/env`` by ``make stack``), the CRDs applied once, a namespace per test, and the operator
itself run in-process by ``kopf.testing.KopfRunner`` with a fresh Kopf registry each time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from helpers.kube import CRDS, NO_PODS, kubectl, release_finalizers, running_operator
from kopf.testing import KopfRunner


@pytest.fixture(scope="session")
def kube() -> str:
    config = os.environ.get("KUBECONFIG")
    if not config:
        pytest.fail("KUBECONFIG is not set: run with 'make test' (make stack starts the cluster)")
    return config


@pytest.fixture(scope="session")
def crds(kube: str) -> None:
    kubectl("apply", "-f", str(CRDS))
    for name in ("alertrules", "analyticspipelines"):
        kubectl(
            "wait", "--for=condition=Established", f"crd/{name}.analytics.molam.io", "--timeout=30s"
        )


@pytest.fixture
def namespace(crds: None) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    # The operator is under test here, not the pods: they stay Pending on the stack's node too.
    kubectl("annotate", "namespace", name, NO_PODS)
    try:
        yield name
    finally:
        release_finalizers(name)
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPERATOR_METRICS_PORT", "0")  # several operators per test session
    monkeypatch.setenv("OPERATOR_RESYNC_SECONDS", "30")
    monkeypatch.setenv("OPERATOR_KAFKA_TIMEOUT_SECONDS", "3")


@pytest.fixture
def operator(namespace: str, operator_env: None) -> Iterator[KopfRunner]:
    with running_operator(namespace) as runner:
        yield runner
