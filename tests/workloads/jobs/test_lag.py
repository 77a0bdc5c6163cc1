"""``molam-analytics lag`` against the real broker, fed by our consumer.

Tansu reports a partition's end as the last *batch* + 1, so the records here are produced one
per batch (LOCAL-STACK.md); real Kafka needs no such care.
"""

from __future__ import annotations

import argparse
import json

import asyncpg
import pytest
from helpers.ingest import Stack, make_events, publish, running_consumer, wait_until

from molam_workloads.core.events import encode_event
from molam_workloads.core.kafka import KafkaConnection, group_lag
from molam_workloads.jobs import lag


async def _kafka_committed(stack: Stack, n: int) -> bool:
    got = await group_lag(KafkaConnection(stack.bootstrap), stack.group, stack.topic)
    return sum(p.committed or 0 for p in got.partitions) == n


@pytest.mark.parametrize("stack", [2], indirect=True)
async def test_lag_table_and_json(
    stack: Stack, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    values = [encode_event(e) for e in make_events(12, seed=101)]
    await publish(stack.bootstrap, stack.topic, values[:8], one_per_batch=True)
    async with running_consumer():
        await wait_until(lambda: _kafka_committed(stack, 8), 30)
    await publish(stack.bootstrap, stack.topic, values[8:], one_per_batch=True)

    args = argparse.Namespace(group=None, topic=None, json=False)
    assert await lag.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
    ]  # fmt: skip
    rows = [line.split() for line in out[1:3]]
    assert [r[:3] for r in rows] == [
        [stack.group, stack.topic, "0"],
        [stack.group, stack.topic, "1"],
    ]
    assert sum(int(r[3]) for r in rows) == 8 and sum(int(r[4]) for r in rows) == 12
    assert out[-1] == "TOTAL LAG 4"

    assert await lag.run(argparse.Namespace(group=None, topic=None, json=True)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total_lag"] == 4 and doc["group"] == stack.group
    assert [p["partition"] for p in doc["partitions"]] == [0, 1]


async def test_unknown_group_lags_by_everything(stack: Stack) -> None:
    await publish(stack.bootstrap, stack.topic, [b"x", b"y", b"z"], one_per_batch=True)
    got = await lag.group_lag(KafkaConnection(stack.bootstrap), "nobody-ever", stack.topic)
    assert got.total == 3 and not got.has_commits
    assert "-" in lag.table(got).splitlines()[1].split()
