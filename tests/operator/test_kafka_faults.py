"""The operator against a pipeline broker the test owns, stopped for 30 s and started again
(empty, as a memory broker restarts) at the same address. While the lag is unknown the consumer
keeps its replicas (not scaled to the minimum), the LagProbe condition and
``analytics_waiting_for`` say what the operator waits for, its log reports the wait once per
interval rather than once per poll, and once the broker is back the lag is measured again and
scaling resumes by itself."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from helpers.broker import OwnedBroker, owned_broker
from helpers.kube import apply, condition, eventually, kubectl, kubectl_json, pipeline_with_db
from prometheus_client import REGISTRY

from molam_operator.main import waiting_for
from molam_workloads.core.faults import LOG_EVERY_SECONDS

pytestmark = pytest.mark.kube

DOWN_SECONDS = 30
TOPIC = "wallet"
PARTITIONS = 4
# More CPU than any node offers: the pods stay Pending; the operator is under test.
UNSCHEDULABLE = {"requests": {"cpu": "64"}, "limits": {"memory": "512Mi"}}


@pytest.fixture
async def broker() -> AsyncIterator[OwnedBroker]:
    async with owned_broker() as owned:
        yield owned


def _pipeline(namespace: str, bootstrap: str, database_url: str) -> list[dict[str, Any]]:
    return pipeline_with_db(
        namespace,
        database_url,
        kafka={"bootstrapServers": bootstrap, "topic": TOPIC, "consumerGroup": "g"},
        consumer={
            "minReplicas": 1,
            "maxReplicas": PARTITIONS,
            "lagThreshold": 10,
            "pollSeconds": 1,
            "scaleDownStabilizationSeconds": 3,
            "resources": UNSCHEDULABLE,
        },
        api={"resources": UNSCHEDULABLE},
        alerts={"resources": UNSCHEDULABLE},
    )


async def _backlog(broker: OwnedBroker, per_partition: int) -> None:
    """The topic created, ``per_partition`` records on each partition (one per batch: Tansu's
    end offsets, LOCAL-STACK.md); the group has committed nothing, so all of it is lag."""
    await broker.create_topic(TOPIC, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    try:
        for p in range(PARTITIONS):
            for _ in range(per_partition):
                await producer.send_and_wait(TOPIC, b"{}", partition=p)
    finally:
        await producer.stop()


def _replicas(namespace: str) -> int | None:
    dep = kubectl_json("get", "deployment", "analytics-consumer", "-n", namespace)
    return None if dep is None else int(dep["spec"].get("replicas", 0))


def _condition(namespace: str, type_: str) -> dict[str, Any]:
    return condition(namespace, "analyticspipeline", "analytics", type_)


@pytest.mark.timeout(180)
async def test_the_operator_holds_replicas_through_30s_without_the_broker(
    broker: OwnedBroker, operator: Any, namespace: str, database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    service = f"kafka {namespace}/pipeline/analytics"
    labels = {"component": "operator", "service": service}
    caplog.set_level(logging.INFO)
    await _backlog(broker, 5)  # lag 20 over a threshold of 10: 2 replicas
    apply(_pipeline(namespace, broker.bootstrap, database_url))
    await eventually("scaled on the lag", lambda: _replicas(namespace) == 2, timeout=30)

    await broker.down()
    down_at = time.monotonic()
    await eventually(
        "BrokerUnreachable",
        lambda: _condition(namespace, "LagProbe").get("reason") == "BrokerUnreachable",
        timeout=20,
    )
    await eventually("waiting", lambda: service in waiting_for(), timeout=10)
    assert REGISTRY.get_sample_value("analytics_waiting_for", labels) == 1
    while time.monotonic() - down_at < DOWN_SECONDS:
        assert operator._thread.is_alive()  # the operator goes on (Kopf's runner thread)
        assert _replicas(namespace) == 2  # the lag is unknown: kept, not scaled to min
        await asyncio.sleep(1)
    assert _condition(namespace, "Scaling")["reason"] == "HoldingReplicas"

    await broker.up()  # empty: the topic is made again, with a larger backlog
    await _backlog(broker, 10)  # lag 40: 4 replicas
    await eventually("scaling resumed", lambda: _replicas(namespace) == 4, timeout=30)
    assert _condition(namespace, "LagProbe")["status"] == "True"
    assert service not in waiting_for()
    assert REGISTRY.get_sample_value("analytics_waiting_for", labels) == 0
    waits = [m for r in caplog.records if service in (m := r.getMessage())
             and m.startswith("operator: ")]  # fmt: skip
    # A line as the wait began, one per interval, one as it ended; not one per poll (~35).
    assert 2 <= len(waits) <= 2 + DOWN_SECONDS / LOG_EVERY_SECONDS + 1, waits
    assert f"{service} is back after" in waits[-1], waits
    # aiokafka's own line per failed connection (~56 in 30 s of 1 s polls) is folded the same
    # way: the first for an address, then one per interval (core.faults.QuietReconnects).
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")]
    assert len(noise) <= 3 * (DOWN_SECONDS / LOG_EVERY_SECONDS + 1), noise

    # A pipeline deleted while its broker is away: the wait goes with it (not left in /healthz).
    await broker.down()
    await eventually("waiting again", lambda: service in waiting_for(), timeout=20)
    kubectl("delete", "analyticspipeline", "analytics", "-n", namespace, "--wait=false")
    await eventually("forgotten", lambda: service not in waiting_for(), timeout=30)
    assert REGISTRY.get_sample_value("analytics_waiting_for", labels) is None
