"""bench/group_leave: does the survivor of a multi-member leave get every partition on Tansu?

Three aiokafka consumers share a group on a 4-partition topic; once all three hold partitions,
two of them stop at once (the one elected leader last among them), and the survivor must be
assigned all four partitions within ``SETTLE_LIMIT`` seconds. Variants: dynamic membership (what
the consumer pods use by default) and static membership (``group_instance_id``, the opt-in
``spec.consumer.staticMembership``). docs/decisions/024-multi-member-leave.md holds the figures.

Run: ``set -a; . .stack/env; set +a; .venv/bin/python bench/group_leave.py [ATTEMPTS [VARIANT...]]``
(``dynamic``, ``static``; both by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env, scratch_topics, table

PARTITIONS = 4
SETTLE_LIMIT = 60.0  # seconds for the three to settle, then for the survivor to get everything
SESSION_TIMEOUT_MS = 10_000  # the consumer's default (docs/decisions/023)


async def _poll(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):  # cancelled, or stopped under it
        while True:
            await consumer.getmany(timeout_ms=500)


async def attempt(bootstrap: str, topic: str, static: bool) -> float | None:
    """Seconds until the survivor held every partition, None if it never did."""
    group = f"group-leave-{uuid.uuid4().hex[:8]}"
    leader: list[int] = []
    consumers: list[AIOKafkaConsumer] = []
    for i in range(3):
        c = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            group_instance_id=f"{group}-{i}" if static else None,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=3000,
            enable_auto_commit=False,
        )
        await c.start()
        coordinator: Any = c._coordinator  # the leader is the member asked to assign
        assign = coordinator._perform_assignment

        async def as_leader(response: Any, i: int = i, assign: Any = assign) -> Any:
            leader.append(i)
            return await assign(response)

        coordinator._perform_assignment = as_leader
        consumers.append(c)
    polls = [asyncio.create_task(_poll(c)) for c in consumers]
    try:
        deadline = time.monotonic() + SETTLE_LIMIT
        while not all(c.assignment() for c in consumers):
            if time.monotonic() > deadline:
                sys.exit("the three consumers never all held partitions")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        first = leader[-1] if leader else 0
        leaving = [first, (first + 1) % 3]
        survivor = consumers[({0, 1, 2} - set(leaving)).pop()]
        started = time.monotonic()
        await asyncio.gather(*(consumers[i].stop() for i in leaving))
        while time.monotonic() - started < SETTLE_LIMIT:
            if len(survivor.assignment()) == PARTITIONS:
                return time.monotonic() - started
            await asyncio.sleep(0.5)
        return None
    finally:
        for task in polls:
            task.cancel()
        for c in consumers:
            await c.stop()


VARIANTS = {"dynamic": False, "static": True}


async def main(attempts: int, variants: list[str]) -> None:
    bootstrap = env("KAFKA_BOOTSTRAP_SERVERS")
    rows = []
    async with scratch_topics(bootstrap, ("group-leave", PARTITIONS)) as (topic,):
        for name in variants:
            static = VARIANTS[name]
            got = [await attempt(bootstrap, topic, static) for _ in range(attempts)]
            done = [f"{s:.1f}" for s in got if s is not None]
            rows.append([f"{name} membership", f"{len(done)}/{attempts}", ", ".join(done) or "-"])
    print(table(["variant", "survivor got every partition", "after (s)"], rows))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, sys.argv[2:] or [*VARIANTS]))
