"""No data is its own state (issue 15, item 5), against real PostgreSQL and the stack's broker.

A rate without denominator, or a stale ingestion (no batch for ALERTS_STALE_INGESTION_MINUTES
while the topic has lag), is no data; the rule's noDataState says what it means (nodata: the
state NoData; ok; alerting), it shows in the rule's status (and the API:
tests/workloads/api/test_rule_status.py), and it never fires by accident.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from helpers.ingest import publish

from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.freshness import ingestion_stale
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.rules import RuleStatus, rule_status

from .conftest import T0, add_minutes, add_rule

M = timedelta(minutes=1)
RATE = {"metric": "failure_rate", "comparison": "gt", "threshold": 0.2, "windowMinutes": 5}
QUIET = {"metric": "tx_count", "comparison": "lt", "threshold": 1, "windowMinutes": 5}


async def _state(db: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT s.state, s.last_value, s.no_data_reason, s.pending_since FROM "
        "analytics_alert_rule_state s JOIN analytics_alert_rules r ON r.id = s.rule_id "
        "WHERE r.name = $1",
        name,
    )
    assert row is not None
    return row


async def _alerts(db: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT state, value FROM analytics_alerts WHERE rule_name = $1 ORDER BY id", name
        )
    )


async def test_a_rate_without_denominator_is_nodata_and_never_fires(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    # Only refunds in the window: failure_rate's denominator (succeeded + failed) is 0.
    await add_minutes(db, T0 - 5 * M, 5, succeeded=0, failed=0, payment_count=0)
    await add_rule(db, "rate-nodata", **RATE)  # noDataState defaults to nodata
    await add_rule(db, "rate-ok", noDataState="ok", **RATE)
    await add_rule(db, "rate-alerting", noDataState="alerting", **RATE)
    report = await run_cycle(pool, settings, T0, stale=False)
    assert report.no_data == 3
    st = await _state(db, "rate-nodata")
    assert (st["state"], st["last_value"], st["no_data_reason"]) == (
        "nodata",
        None,
        "no_denominator",
    )
    st = await _state(db, "rate-ok")
    assert (st["state"], st["no_data_reason"]) == ("inactive", "no_denominator")
    st = await _state(db, "rate-alerting")
    assert (st["state"], st["no_data_reason"]) == ("firing", "no_denominator")
    assert await _alerts(db, "rate-nodata") == [] and await _alerts(db, "rate-ok") == []
    [alert] = await _alerts(db, "rate-alerting")
    assert (alert["state"], alert["value"]) == ("firing", None)
    assert report.fired == [await db.fetchval("SELECT max(id) FROM analytics_alerts")]

    status = await rule_status(db, "rate-nodata")
    assert status is not None and (status.state, status.no_data_reason) == (
        "NoData",
        "no_denominator",
    )


def test_the_status_spells_nodata_as_the_crd_does() -> None:
    """The operator builds its RuleStatus from the state column capitalized ("Nodata"); the
    CRD's status.state enum says NoData, which a status patch must match."""
    for given in ("nodata", "Nodata", "NoData"):
        assert RuleStatus(given, None, None, None, None).state == "NoData"
    assert RuleStatus("firing", None, None, None, None).state == "Firing"


async def test_data_coming_back_and_going_again(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    """From NoData a rule starts over with data; a firing alert is resolved when data goes
    (nodata), and a held one stays firing (alerting)."""
    await add_rule(db, "back", **RATE)
    await add_rule(db, "held", noDataState="alerting", **RATE)
    await run_cycle(pool, settings, T0, stale=False)
    assert (await _state(db, "back"))["state"] == "nodata"
    await add_minutes(db, T0, 5, succeeded=5, failed=5)  # failure rate 0.5 from T0
    await run_cycle(pool, settings, T0 + 5 * M, stale=False)
    st = await _state(db, "back")
    assert (st["state"], st["last_value"], st["no_data_reason"]) == ("firing", 0.5, None)
    # Then nothing settles for the whole window: no data again.
    await run_cycle(pool, settings, T0 + 11 * M, stale=False)
    assert (await _state(db, "back"))["state"] == "nodata"
    assert [a["state"] for a in await _alerts(db, "back")] == ["resolved"]
    assert (await _state(db, "held"))["state"] == "firing"
    assert [a["state"] for a in await _alerts(db, "held")] == ["firing"]


# --- a stale ingestion ---------------------------------------------------------------------------


@pytest.fixture
async def pipeline(
    kafka_bootstrap: str, create_topic: Any, settings: AlertsSettings
) -> AlertsSettings:
    """A topic holding 3 records, and settings naming it and a consumer group of its own."""
    topic = await create_topic("wallet")
    # One record per batch (Tansu's end offsets, LOCAL-STACK.md).
    await publish(kafka_bootstrap, topic, [b"{}"] * 3, one_per_batch=True)
    return settings.model_copy(
        update={
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_topic": topic,
            "kafka_consumer_group": f"g-{uuid.uuid4().hex[:8]}",
            "alerts_stale_ingestion_minutes": 10.0,
        }
    )


async def _last_batch(db: asyncpg.Connection, s: AlertsSettings, minutes_ago: float) -> None:
    await db.execute(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, updated_at) "
        "VALUES ($1, $2, 0, 0, now() - make_interval(secs => $3)) "
        "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET updated_at = "
        "excluded.updated_at",
        s.kafka_consumer_group,
        s.kafka_topic,
        minutes_ago * 60,
    )


async def test_a_stale_ingestion_is_nodata_and_never_fires(
    db: asyncpg.Connection, pool: asyncpg.Pool, pipeline: AlertsSettings
) -> None:
    """No batch for 20 minutes while the topic has 3 records to read: the aggregates are empty,
    and ``tx_count lt 1`` would fire for traffic that is only waiting in Kafka."""
    await add_rule(db, "quiet", **QUIET)
    await _last_batch(db, pipeline, minutes_ago=20)
    assert await ingestion_stale(pool, pipeline)
    report = await run_cycle(pool, pipeline, T0)  # asks the broker itself
    assert report.fired == [] and report.no_data == 1
    st = await _state(db, "quiet")
    assert (st["state"], st["last_value"], st["no_data_reason"]) == (
        "nodata",
        None,
        "ingestion_stale",
    )
    # A batch a minute ago: not stale, and the same empty window fires (the accident above).
    await _last_batch(db, pipeline, minutes_ago=1)
    assert not await ingestion_stale(pool, pipeline)
    report = await run_cycle(pool, pipeline, T0 + M)
    assert len(report.fired) == 1
    st = await _state(db, "quiet")
    assert (st["state"], st["last_value"], st["no_data_reason"]) == ("firing", 0, None)


async def test_no_batch_without_lag_is_not_stale(
    db: asyncpg.Connection, pool: asyncpg.Pool, pipeline: AlertsSettings, kafka_bootstrap: str
) -> None:
    """Quiet traffic is not a stale ingestion: the group has read everything the topic holds."""
    tp = TopicPartition(pipeline.kafka_topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=pipeline.kafka_consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        assert end == 3
        await consumer.commit({tp: end})
    finally:
        await consumer.stop()
    await _last_batch(db, pipeline, minutes_ago=20)
    assert not await ingestion_stale(pool, pipeline)
    # Never ingested at all (no row): nothing to be stale against.
    await db.execute("DELETE FROM consumer_offsets")
    assert not await ingestion_stale(pool, pipeline)
    # Off (0 minutes): never asked.
    await _last_batch(db, pipeline, minutes_ago=20)
    off = pipeline.model_copy(update={"alerts_stale_ingestion_minutes": 0.0})
    assert not await ingestion_stale(pool, off)


async def test_an_unreachable_broker_is_not_called_stale(
    db: asyncpg.Connection, pool: asyncpg.Pool, pipeline: AlertsSettings
) -> None:
    """The lag unknown, the rule of the issue cannot say stale: logged, data used as it is."""
    await _last_batch(db, pipeline, minutes_ago=20)
    nowhere = pipeline.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    assert not await ingestion_stale(pool, nowhere)
