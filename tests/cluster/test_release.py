"""The chart installed with helm on the stack's node, its pods running for real.

One release for the whole module (the tests run in file order and build on each other): helm
install, then every pod Ready; 50,000 events produced while the consumer is paused, then
unpaused, and the consumer Deployment follows ceil(lag / lagThreshold) with pods that become
Ready and join the group; a consumer pod force-deleted mid-stream, after which the runbook's
reconciliation queries are exact; the runbook's ``kubectl scale --replicas=0`` holding against
a growing lag; the scale-down after the stabilization window once that lag drains; ``paused``
set mid-stream draining to 0 pods and losing nothing; the operator pod deleted while the
pipeline changes; the database made unreachable; ``helm upgrade`` to a new image tag;
``helm uninstall``.

The release watches its own namespace only (other tests run operators on the same cluster),
and has a database, a topic and a consumer group of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from helpers.database import database_of, scratch_database, with_database

from molam_workloads.core.events import TransactionEvent, encode_event

from .conftest import (
    IMAGE_REPOSITORY,
    Helm,
    Images,
    Release,
    kubectl,
    kubectl_json,
    pod_ready,
    restarts,
    run,
    tool,
    wait_for,
)

pytestmark = [pytest.mark.kube, pytest.mark.cluster, pytest.mark.timeout(1800)]

PARTITIONS = 4
MAX_REPLICAS = 4
LAG_THRESHOLD = 20_000
BACKLOG = 50_000
POLL_SECONDS = 3
# The stabilization window once the scale-down is under test (900 s before: nothing shrinks).
WINDOW_SECONDS = 30
# Held at 0 replicas by hand: the rule would want ceil(30,000 / 20,000) = 2.
HELD_BACKLOG = 30_000
# The consumer's Kafka session timeout (10 s) bounds how long a dead member holds partitions;
# Tansu holds a join for about half of it.
GROUP_SECONDS = 90
PLACES = (("XOF", "SN"), ("XOF", "CI"), ("GHS", "GH"), ("NGN", "NG"), ("KES", "KE"))
CHANNELS = ("mobile_money", "card", "bank_transfer", "wallet")
# The runbook's "Incorrect Aggregate Values" diagnosis, over this module's days.
RAW_BY_DAY = """
SELECT DATE(occurred_at) as day, COUNT(*), SUM(amount)
FROM wallet_transactions
WHERE occurred_at >= $1
GROUP BY day
ORDER BY day
"""
AGG_BY_DAY = """
SELECT day, SUM(tx_count), SUM(gross_volume_local)
FROM mv_txn_daily_agg
WHERE day >= $1
GROUP BY day
ORDER BY day
"""


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
async def database(admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A migrated database of this module's own (the pods migrate it again, a no-op)."""
    async with scratch_database(admin_dsn, "molam_e2e", template_db) as dsn:
        yield database_of(dsn)


@pytest.fixture(scope="module")
async def topic(kafka_bootstrap: str) -> str:
    name = f"e2e.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    return name


@pytest.fixture(scope="module")
def release(
    crds: None,
    helm: Helm,
    images: Images,
    database: str,
    topic: str,
    kafka_bootstrap: str,
    redis_base_url: str,
) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"e2e-{suffix}"
    image_tag = images.tag("dev", f"e2e-{suffix}")
    pod_dsn = import_env("POD_DATABASE_URL")
    values: dict[str, Any] = {
        "image": {"repository": IMAGE_REPOSITORY, "tag": image_tag, "pullPolicy": "Never"},
        "operator": {"watchNamespaces": [namespace]},
        "pipeline": {
            "create": True,
            "name": "analytics",
            "kafka": {
                "bootstrapServers": kafka_bootstrap,
                "topic": topic,
                "consumerGroup": f"e2e-{suffix}",
            },
            "secrets": {
                "create": True,
                "databaseUrl": with_database(pod_dsn, database),
                "redisUrl": import_env("POD_REDIS_URL"),
            },
            "api": {"replicas": 1},
            "consumer": {
                "minReplicas": 1,
                "maxReplicas": MAX_REPLICAS,
                "lagThreshold": LAG_THRESHOLD,
                "pollSeconds": POLL_SECONDS,
                "scaleDownStabilizationSeconds": 900,
                "paused": False,
            },
            "alerts": {"intervalSeconds": 10},
            "sira": {"enabled": False},
        },
    }
    rel = Release(helm, f"e2e{suffix}", namespace, values)
    rel.install()
    try:
        yield rel
    finally:
        if rel.installed:
            rel.helm("uninstall", rel.name, "-n", namespace, "--timeout=240s", check=False,
                     timeout=270)  # fmt: skip
        # Anything the operator could not release (it failed first): let the namespace go.
        for name in kubectl("get", "analyticspipelines", "-n", namespace, "-o", "name",
                            check=False).stdout.split():  # fmt: skip
            kubectl("patch", name, "-n", namespace, "--type=merge",
                    "-p", '{"metadata":{"finalizers":[]}}', check=False)  # fmt: skip
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def import_env(name: str) -> str:
    import os

    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: `make stack` writes it to .stack/env with a node")
    return value


# -------------------------------------------------------------------------------- events


def make_events(run_id: str, n: int, rnd: random.Random) -> list[TransactionEvent]:
    """``n`` transactions of the last hour (all today, UTC, unless run right after midnight)."""
    now = datetime.now(UTC)
    start = max(now - timedelta(hours=1), now.replace(hour=0, minute=0, second=0, microsecond=0))
    span = max((now - start).total_seconds() - 1, 1)
    out = []
    for i in range(n):
        currency, country = rnd.choice(PLACES)
        out.append(
            TransactionEvent(
                event_id=f"{run_id}-e{i}",
                txn_id=f"{run_id}-t{i}",
                merchant_id=f"M-{run_id}-{i % 40}",
                occurred_at=start + timedelta(seconds=rnd.uniform(0, span)),
                amount=Decimal(rnd.randrange(100, 5_000_000)) / 100,
                currency=currency,
                country=country,
                channel=rnd.choice(CHANNELS),
                type=rnd.choice(("payment", "payment", "payment", "refund", "payout")),
                status=rnd.choice(("succeeded", "succeeded", "succeeded", "failed", "pending")),
                fee=Decimal(rnd.randrange(0, 500)) / 100,
            )
        )
    return out


async def write_source(dsn: str, events: list[TransactionEvent]) -> None:
    """The same transactions in wallet_transactions: the runbook reconciles against it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "wallet_transactions",
            records=[
                (
                    e.txn_id,
                    e.merchant_id,
                    e.occurred_at,
                    e.amount,
                    e.currency,
                    e.country,
                    e.channel,
                    e.type.value,
                    e.status.value,
                    e.fee,
                )
                for e in events
            ],
            columns=[
                "id",
                "merchant_id",
                "occurred_at",
                "amount",
                "currency",
                "country",
                "channel",
                "type",
                "status",
                "fee",
            ],
        )
    finally:
        await conn.close()


async def produce(
    bootstrap: str, topic: str, values: list[bytes], *, per_second: float = 0
) -> None:
    """Publish in large batches, then one record alone per partition: Tansu's end offset is
    the last batch's base offset + 1 (LOCAL-STACK.md), exact when that batch holds one record.
    ``per_second`` > 0 spreads the batches over time (a stream rather than a burst)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024, acks="all"
    )
    await producer.start()
    try:
        body, tail = values[:-PARTITIONS], values[-PARTITIONS:]
        chunk = 1000
        started = time.monotonic()
        for i in range(0, len(body), chunk):
            futures = [
                await producer.send(topic, v, partition=(i + j) % PARTITIONS)
                for j, v in enumerate(body[i : i + chunk])
            ]
            await asyncio.gather(*futures)
            if per_second:
                ahead = started + (i + chunk) / per_second - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        for p, v in enumerate(tail):
            await producer.send_and_wait(topic, v, partition=p)
    finally:
        await producer.stop()


async def counted(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT COALESCE(SUM(tx_count), 0) FROM txn_hourly_agg"))
    finally:
        await conn.close()


async def source_rows(dsn: str) -> int:
    """Rows of wallet_transactions: every test here writes each event it publishes there."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM wallet_transactions"))
    finally:
        await conn.close()


async def group_members(bootstrap: str, group: str) -> int:
    """How many members the broker lists in the group (Tansu leaves their hosts empty)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    # groups: (error_code, group_id, state, protocol_type, protocol, members, ...)
    return sum(len(g[5]) for response in described for g in response.groups)


def assigned_partitions(release: Release, pod: str) -> str:
    """The last 'partitions assigned: [...]' the consumer pod logged ('' if none yet)."""
    logs = kubectl("logs", pod, "-n", release.namespace, "-c", "consumer", check=False).stdout
    lines = [line for line in logs.splitlines() if "partitions assigned:" in line]
    return lines[-1].split("partitions assigned:", 1)[1].strip() if lines else ""


def consumer_ips(release: Release) -> set[str]:
    return {
        p["status"]["podIP"]
        for p in release.live_pods("consumer")
        if pod_ready(p) and p.get("status", {}).get("podIP")
    }


# --------------------------------------------------------------------------------- tests


def test_install_every_pod_ready(release: Release) -> None:
    def components() -> list[str]:
        return sorted(p["metadata"]["labels"]["app.kubernetes.io/component"]
                      for p in release.live_pods())  # fmt: skip

    expected = ["alerts", "api", "consumer", "operator"]
    wait_for("the pipeline's pods", lambda: components() == expected, timeout=120)
    release.wait_all_ready(timeout=180)
    assert components() == expected
    for pod in release.live_pods():
        for c in pod["spec"]["containers"]:
            assert c["image"] == f"{IMAGE_REPOSITORY}:{release.values['image']['tag']}"
    ready = wait_for(
        "the pipeline's Ready condition",
        lambda: [
            c
            for c in release.pipeline().get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        ],
        timeout=60,
    )
    assert ready


async def test_backlog_scales_consumers_that_become_ready_and_join(
    release: Release, database: str, topic: str, kafka_bootstrap: str, admin_dsn: str
) -> None:
    group = release.values["pipeline"]["kafka"]["consumerGroup"]
    release.set_pipeline({"consumer": {"paused": True}})
    await asyncio.to_thread(
        wait_for, "the consumer paused (0 pods)",
        lambda: release.deployment("consumer")["spec"]["replicas"] == 0
        and not release.pods("consumer"),
        timeout=90,
    )  # fmt: skip

    events = make_events(uuid.uuid4().hex[:6], BACKLOG, random.Random(1))
    await write_source(with_database(admin_dsn, database), events)
    await produce(kafka_bootstrap, topic, [encode_event(e) for e in events])
    # The group never committed: its lag counts from the log start, all 50,000 of it.
    status = await asyncio.to_thread(
        wait_for, f"status.lag == {BACKLOG}",
        lambda: (s := release.pipeline().get("status", {})).get("lag") == BACKLOG and s,
        timeout=60,
    )  # fmt: skip
    assert status["desiredReplicas"] == 0

    want = min(math.ceil(BACKLOG / LAG_THRESHOLD), MAX_REPLICAS, PARTITIONS)
    assert want == 3  # the rule itself decides here, not a cap
    seen: list[int] = []
    release.set_pipeline({"consumer": {"paused": False}})

    def scaled() -> bool:
        seen.append(int(release.deployment("consumer")["spec"]["replicas"]))
        return seen[-1] == want

    await asyncio.to_thread(wait_for, f"{want} consumer replicas", scaled, timeout=60)
    status = release.pipeline()["status"]
    assert status["desiredReplicas"] == want, status
    assert max(seen) == want, f"replica counts seen: {seen}"

    # The new pods become Ready and all of them join the group.
    await asyncio.to_thread(
        wait_for, f"{want} Ready consumer pods",
        lambda: len(consumer_ips(release)) == want, timeout=120,
    )  # fmt: skip
    deadline = time.monotonic() + GROUP_SECONDS
    while True:
        members = await group_members(kafka_bootstrap, group)
        pods = [p["metadata"]["name"] for p in release.live_pods("consumer") if pod_ready(p)]
        assigned = {p: assigned_partitions(release, p) for p in pods}
        if members == want == len(pods) and all(a not in ("", "[]") for a in assigned.values()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"group of {members} member(s); Ready pods' assignments: {assigned}")
        await asyncio.sleep(1)
    # The scale-down stabilization (900 s) holds the count while the backlog drains.
    assert release.deployment("consumer")["spec"]["replicas"] == want


async def test_force_deleted_consumer_loses_and_double_counts_nothing(
    release: Release, database: str, topic: str, kafka_bootstrap: str, admin_dsn: str
) -> None:
    dsn = with_database(admin_dsn, database)
    # The backlog first (exactly once so far), then a stream with 1 % of its events published
    # twice, as a retrying producer would.
    await wait_async(lambda: counted(dsn), BACKLOG, "the backlog counted", timeout=180)
    rnd = random.Random(2)
    stream = make_events(uuid.uuid4().hex[:6], 30_000, rnd)
    await write_source(dsn, stream)
    values = [encode_event(e) for e in stream]
    values += [values[i] for i in sorted(rnd.sample(range(len(values) - PARTITIONS), 300))]
    values = values[:-PARTITIONS] + values[-PARTITIONS:]  # the tail stays last (one per batch)
    producing = asyncio.create_task(produce(kafka_bootstrap, topic, values, per_second=3000))

    # Mid-stream: part of the stream counted, the rest still to come.
    await wait_async(lambda: counted(dsn), BACKLOG + 3000, "the stream under way", timeout=60)
    assert not producing.done(), "the stream ended before a pod could be killed mid-stream"
    victim = next(p for p in release.live_pods("consumer") if pod_ready(p))
    kubectl("delete", "pod", victim["metadata"]["name"], "-n", release.namespace,
            "--grace-period=0", "--force")  # fmt: skip
    await producing

    # Its partitions go to the others (after its session timeout), a new pod replaces it.
    total = BACKLOG + len(stream)
    await wait_async(lambda: counted(dsn), total, "every event counted", timeout=180)
    await asyncio.sleep(0)
    assert await counted(dsn) == total
    await asyncio.to_thread(release.wait_all_ready, 180)

    # The runbook: refresh the daily view (here through the CronJob's own Job), then compare.
    job = run_cron_job(release, "analytics-refresh-views")
    kubectl("wait", "--for=condition=complete", f"job/{job}", "-n", release.namespace,
            "--timeout=120s", timeout=150)  # fmt: skip
    since = min(e.occurred_at for e in [*stream]).date() - timedelta(days=1)
    conn = await asyncpg.connect(dsn)
    try:
        raw = [tuple(r) for r in await conn.fetch(RAW_BY_DAY, since)]
        agg = [tuple(r) for r in await conn.fetch(AGG_BY_DAY, since)]
        duplicates = await conn.fetchval(
            "SELECT count(*) FROM (SELECT id FROM wallet_transactions GROUP BY id "
            "HAVING count(*) > 1) d"
        )
    finally:
        await conn.close()
    assert duplicates == 0
    assert sum(r[1] for r in raw) == total
    assert raw == agg


def scaling(release: Release) -> dict[str, Any]:
    """The pipeline's status with its Scaling condition's reason as ``scaling``."""
    status: dict[str, Any] = release.pipeline().get("status", {})
    reasons = [c["reason"] for c in status.get("conditions", []) if c["type"] == "Scaling"]
    return {**status, "scaling": reasons[0] if reasons else None}


def consumer_replicas(release: Release) -> int:
    return int(release.deployment("consumer")["spec"]["replicas"])


async def hold(release: Release, seconds: float, replicas: int, reason: str) -> None:
    """For ``seconds`` (several polls): the consumer stays at ``replicas`` with that many pods,
    and the scaler says ``reason``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pods = release.pods("consumer")
        assert consumer_replicas(release) == replicas
        assert len(pods) == replicas, [p["metadata"]["name"] for p in pods]
        assert scaling(release)["scaling"] == reason
        await asyncio.sleep(1)


async def settled_group(release: Release, bootstrap: str, pods: int) -> None:
    """``pods`` Ready consumer pods, the only members of the group, each assigned partitions
    after the last rebalance (their logs say which), all partitions among them."""
    group = release.values["pipeline"]["kafka"]["consumerGroup"]
    deadline = time.monotonic() + GROUP_SECONDS
    while True:
        members = await group_members(bootstrap, group)
        ready = [p["metadata"]["name"] for p in release.live_pods("consumer") if pod_ready(p)]
        assigned = {p: assigned_partitions(release, p) for p in ready}
        # "[0, 2] (stored offsets ...)": the partition numbers before the first "]".
        held = sum(len(json.loads(a.split("]", 1)[0] + "]")) for a in assigned.values() if a)
        if members == pods == len(ready) and held == PARTITIONS:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"group of {members} member(s); Ready pods' assignments: {assigned}")
        await asyncio.sleep(1)


async def test_kubectl_scale_to_zero_holds_against_the_lag(
    release: Release, database: str, topic: str, kafka_bootstrap: str, admin_dsn: str
) -> None:
    """The runbook's emergency pause, ``kubectl scale deployment analytics-consumer
    --replicas=0``: the operator leaves the consumer at 0 however large the lag grows, and
    takes over again once it is scaled up by hand."""
    dsn = with_database(admin_dsn, database)
    # Down from the backlog's replicas (held by the 900 s window) one pod at a time, each time
    # until the group has settled: when several members leave Tansu 0.6.0's group at once, it
    # can keep one that left as the leader, and the members left wait on it and consume nothing
    # (a broker defect, seen with plain aiokafka consumers: docs/decisions/024).
    for n in range(consumer_replicas(release) - 1, 0, -1):
        kubectl("scale", "deployment", "analytics-consumer", f"--replicas={n}",
                "-n", release.namespace)  # fmt: skip
        await settled_group(release, kafka_bootstrap, n)
    release.set_pipeline({"consumer": {"scaleDownStabilizationSeconds": WINDOW_SECONDS}})
    already = await counted(dsn)
    kubectl("scale", "deployment", "analytics-consumer", "--replicas=0", "-n", release.namespace)
    await asyncio.to_thread(
        wait_for, "no consumer pod", lambda: not release.pods("consumer"), timeout=90
    )
    events = make_events(uuid.uuid4().hex[:6], HELD_BACKLOG, random.Random(4))
    await write_source(dsn, events)
    await produce(kafka_bootstrap, topic, [encode_event(e) for e in events])
    status = await asyncio.to_thread(
        wait_for, f"status.lag == {HELD_BACKLOG}",
        lambda: (s := scaling(release)).get("lag") == HELD_BACKLOG and s, timeout=60,
    )  # fmt: skip
    # The rule wants 2 replicas; the hand's 0 holds, poll after poll.
    got = (status["scaling"], status["desiredReplicas"], status["phase"])
    assert got == ("PausedByHand", 0, "Paused"), status
    await hold(release, 4 * POLL_SECONDS, 0, "PausedByHand")
    assert await counted(dsn) == already

    # Resumed by hand with 1: the scaler is in charge again and sizes it for the lag.
    kubectl("scale", "deployment", "analytics-consumer", "--replicas=1", "-n", release.namespace)
    want = math.ceil(HELD_BACKLOG / LAG_THRESHOLD)
    assert want == 2
    await asyncio.to_thread(
        wait_for, f"{want} consumer replicas", lambda: consumer_replicas(release) == want,
        timeout=30,
    )  # fmt: skip


async def test_drained_lag_scales_down_after_the_window(
    release: Release, database: str, kafka_bootstrap: str, admin_dsn: str
) -> None:
    """The held backlog drains; from the first poll whose rule wants fewer replicas, the
    consumer keeps its count for scaleDownStabilizationSeconds, then shrinks to 1."""
    dsn = with_database(admin_dsn, database)
    before = await counted(dsn)
    low_seen = down_at = None
    deadline = time.monotonic() + 240
    while down_at is None and time.monotonic() < deadline:
        st = scaling(release)
        replicas = consumer_replicas(release)
        if low_seen is None and st["scaling"] == "StabilizingScaleDown":
            low_seen = time.monotonic()
        if replicas == 1:
            down_at = time.monotonic()
        else:
            assert replicas == 2, f"{replicas} consumer replicas while draining"
        await asyncio.sleep(0.5)
    if low_seen is None or down_at is None:
        group = release.values["pipeline"]["kafka"]["consumerGroup"]
        members = await group_members(kafka_bootstrap, group)
        pytest.fail(
            f"no scale-down (stabilizing seen: {low_seen is not None}); counted "
            f"{await counted(dsn) - before} meanwhile; group of {members} member(s); "
            f"status: {scaling(release)}"
        )
    # The first low poll came at most a poll (and a status write) before it was seen.
    held = down_at - low_seen
    assert WINDOW_SECONDS - POLL_SECONDS - 2 <= held <= WINDOW_SECONDS + 2 * POLL_SECONDS + 5
    # One replica drains the rest, and every transaction is counted once.
    total = await source_rows(dsn)
    await wait_async(lambda: counted(dsn), total, "every event counted", timeout=120)
    await asyncio.to_thread(wait_for, "lag 0", lambda: scaling(release).get("lag") == 0, timeout=60)
    assert await counted(dsn) == total
    assert consumer_replicas(release) == 1


async def test_paused_mid_stream_drains_to_zero_pods_and_loses_nothing(
    release: Release, database: str, topic: str, kafka_bootstrap: str, admin_dsn: str
) -> None:
    """``spec.consumer.paused`` set while events stream in: every consumer pod goes (none left
    Terminating), the consumer stays at 0 while the lag grows; unpaused, every event is counted
    once."""
    dsn = with_database(admin_dsn, database)
    already = await counted(dsn)
    events = make_events(uuid.uuid4().hex[:6], 20_000, random.Random(5))
    await write_source(dsn, events)
    producing = asyncio.create_task(
        produce(kafka_bootstrap, topic, [encode_event(e) for e in events], per_second=1000)
    )
    await wait_async(lambda: counted(dsn), already + 1000, "the stream under way", timeout=60)
    release.set_pipeline({"consumer": {"paused": True}})
    assert not producing.done(), "the stream ended before the consumer was paused"
    await asyncio.to_thread(
        wait_for, "0 consumer pods",
        lambda: consumer_replicas(release) == 0 and not release.pods("consumer"), timeout=90,
    )  # fmt: skip
    await producing
    stopped_at = await counted(dsn)
    assert stopped_at < already + len(events)
    status = await asyncio.to_thread(
        wait_for, "the lag seen while paused",
        lambda: (s := scaling(release)).get("lag", 0) > 0 and s["phase"] == "Paused" and s,
        timeout=60,
    )  # fmt: skip
    assert status["scaling"] == "Paused" and status["desiredReplicas"] == 0, status
    await hold(release, 3 * POLL_SECONDS, 0, "Paused")
    assert await counted(dsn) == stopped_at

    release.set_pipeline({"consumer": {"paused": False}})
    total = already + len(events)
    await wait_async(lambda: counted(dsn), total, "every event counted", timeout=120)
    await asyncio.sleep(2 * POLL_SECONDS)
    assert await counted(dsn) == total
    await asyncio.to_thread(release.wait_all_ready, 120)


def run_cron_job(release: Release, cron_job: str) -> str:
    """A Job from the CronJob's template now (``kubectl create job --from=cronjob/...``, which
    kubectl 1.37 cannot do for the batch/v1beta1 CronJobs of Kubernetes 1.20)."""
    cron = release.get("cronjob", cron_job)
    name = f"{cron_job}-manual-{uuid.uuid4().hex[:5]}"
    template = cron["spec"]["jobTemplate"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": release.namespace,
            "labels": (template.get("metadata") or {}).get("labels") or {},
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [{
                "apiVersion": cron["apiVersion"], "kind": "CronJob",
                "name": cron_job, "uid": cron["metadata"]["uid"],
            }],
        },
        "spec": template["spec"],
    }  # fmt: skip
    run(tool("kubectl"), "create", "-f", "-", stdin=json.dumps(job))
    return name


async def wait_async(probe: Any, want: int, what: str, *, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = int(await probe())
        if got >= want:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {got} < {want}")
        await asyncio.sleep(0.5)


def test_operator_pod_deleted_comes_back_and_reconciles(release: Release) -> None:
    old = release.live_pods("operator")
    assert len(old) == 1
    kubectl("delete", "pod", old[0]["metadata"]["name"], "-n", release.namespace,
            "--grace-period=0", "--force")  # fmt: skip
    # Changed while no operator runs: the new one must notice on its start.
    generation = int(release.pipeline()["metadata"]["generation"])
    release.set_pipeline({"api": {"replicas": 2}})
    new = wait_for(
        "a new operator pod Ready",
        lambda: [
            p
            for p in release.live_pods("operator")
            if p["metadata"]["uid"] != old[0]["metadata"]["uid"] and pod_ready(p)
        ],
        timeout=90,
    )
    assert len(new) == 1
    wait_for(
        "the pipeline observed by the new operator",
        lambda: release.pipeline().get("status", {}).get("observedGeneration", 0) > generation,
        timeout=60,
    )
    wait_for("2 api replicas", lambda: release.deployment("api")["spec"]["replicas"] == 2,
             timeout=30)  # fmt: skip
    release.wait_all_ready(timeout=120)


async def test_unreachable_database_makes_pods_not_ready_not_crash_loop(
    release: Release, database: str, topic: str, kafka_bootstrap: str, admin_dsn: str
) -> None:
    """PostgreSQL refuses this module's database while events keep coming: the API goes
    NotReady (its /health), and no pod restarts, the consumer included (it holds its batch and
    retries); once the database is back, every pod is Ready and every event counted once."""
    dsn = with_database(admin_dsn, database)
    already = await counted(dsn)
    late = make_events(uuid.uuid4().hex[:6], 2000, random.Random(3))
    await write_source(dsn, late)
    before = {p["metadata"]["name"]: restarts(p) for p in release.live_pods()}
    admin = await asyncpg.connect(admin_dsn)
    try:
        # The database refuses every connection; the ones open now are cut.
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
        )
        await produce(kafka_bootstrap, topic, [encode_event(e) for e in late])
        down_since = time.monotonic()
        await asyncio.to_thread(
            wait_for, "the api pods NotReady",
            lambda: not any(pod_ready(p) for p in release.live_pods("api")), timeout=90,
        )  # fmt: skip
        # Down for longer than the consumer's old give-up (5 write attempts, 7.5 s): every pod
        # still the same process, none restarted.
        while time.monotonic() - down_since < 20:
            now = {p["metadata"]["name"]: restarts(p) for p in release.live_pods()}
            assert now == before, "a pod restarted while the database was unreachable"
            await asyncio.sleep(1)
        assert not any(pod_ready(p) for p in release.live_pods("api"))
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
    await asyncio.to_thread(release.wait_all_ready, 120)
    await wait_async(lambda: counted(dsn), already + len(late), "the late events", timeout=90)
    assert await counted(dsn) == already + len(late)
    assert {p["metadata"]["name"]: restarts(p) for p in release.live_pods()} == before


def test_helm_upgrade_to_a_new_tag_rolls_every_pod(release: Release, images: Images) -> None:
    old_tag = release.values["image"]["tag"]
    new_tag = images.tag(old_tag, f"{old_tag}-up")
    before = {p["metadata"]["uid"] for p in release.live_pods()}
    release.values["image"]["tag"] = new_tag
    release.upgrade()
    image = f"{IMAGE_REPOSITORY}:{new_tag}"

    def rolled() -> bool:
        pods = release.live_pods()
        return (
            bool(pods)
            and all(c["image"] == image for p in pods for c in p["spec"]["containers"])
            and not release.all_ready()
        )

    wait_for(f"every pod on {image} and Ready", rolled, timeout=240, every=1)
    assert release.pipeline()["spec"]["image"] == image
    assert not before & {p["metadata"]["uid"] for p in release.live_pods()}


def test_helm_uninstall_leaves_only_the_crds(release: Release) -> None:
    started = time.monotonic()
    release.uninstall(timeout=240)
    took = time.monotonic() - started
    ns = release.namespace
    kinds = ("analyticspipelines,deployments,replicasets,pods,cronjobs,jobs,services,secrets,"
             "configmaps,roles,rolebindings,serviceaccounts")  # fmt: skip

    instance = f"app.kubernetes.io/instance={release.name}"

    def leftovers() -> list[str]:
        items = kubectl_json("get", kinds, "-n", ns)["items"]
        left = [
            f"{o['kind']}/{o['metadata']['name']}"
            for o in items
            # What Kubernetes itself puts in every namespace.
            if not (o["kind"] == "ConfigMap" and o["metadata"]["name"] == "kube-root-ca.crt")
            and not (o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "default")
            and not (
                o["kind"] == "Secret"
                and o.get("type") == "kubernetes.io/service-account-token"
                and o["metadata"].get("annotations", {}).get("kubernetes.io/service-account.name")
                == "default"
            )
        ]
        for kind in ("clusterroles", "clusterrolebindings"):
            left += [
                f"{kind}/{o['metadata']['name']}"
                for o in kubectl_json("get", kind, "-l", instance)["items"]
            ]
        return left

    deadline = time.monotonic() + 60
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"left behind after helm uninstall ({took:.0f} s): {left}"
    assert release.name not in release.helm("list", "-n", ns, "-q")
    for crd in ("analyticspipelines.analytics.molam.io", "alertrules.analytics.molam.io"):
        kubectl("get", "crd", crd)
