"""Benchmark: the operator's reaction time and its cold-start throughput (issue 5).

Against the local stack (``make bench``: KUBECONFIG, DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS from
``.stack/env``), with ``molam-analytics operator`` run as a process, as in production:

1. **Scale latency** — from the moment a consumer group's lag crosses the threshold (offsets
   committed so that lag/lagThreshold wants more replicas) to the moment the consumer
   Deployment carries the new replica count, over several trials at random poll phases, for
   ``pollSeconds`` 5 and 15 (the CRD's default). Target: one poll interval + 2 s. Reference:
   KEDA's defaults poll every 30 s and hand a metric to the HPA, which acts on its 15 s sync
   (up to ~45 s, ~22 s on average) — a stated reference, not measured here.
1b. **New pods Ready** — real consumer pods on the stack's node (``make image``; skipped without
   ``NODE_IP``): one pod runs idle, a burst of events (more than it drains in a poll) takes the
   lag over ``lagThreshold`` at a random poll phase; seconds from that crossing until the
   Deployment says 2 replicas (``maxReplicas``), and until both pods are Ready. Target: one
   poll interval plus the pods' start-up (init-container migration, start, readiness probe).
2. **Cold start** — 100 AnalyticsPipelines (100 namespaces) and 1,000 AlertRules created while
   the operator is down; time from its start until all 600 children exist with status
   ``observedGeneration`` set and all 1,000 rules are rows in ``analytics_alert_rules``. Beside
   it, a measured floor: ``kubectl apply`` of the same 600 child manifests (built by the same
   builders) in one call — what the API server alone needs.
3. **Trend sizing** — the pure simulation of issue 5 on the synthetic trace: scale events,
   peak lag and replica-seconds for the threshold rule and for ``targetDrainSeconds``.

Usage: ``python bench/kube_operator.py [--trials 5] [--pipelines 100] [--rules-per-pipeline 10]
[--ready-trials 3] [--ready-polls 5] [--skip-scale] [--skip-ready] [--skip-cold]``. (Not
``operator.py``: run as a script, that name would shadow the standard library's ``operator``.)

Measured on the development machine (2 vCPU shared with other work, kube-apiserver v1.20.2,
Tansu), 5 trials each:

- scale latency, pollSeconds=5: median 2.1 s, max 4.9 s (target 7 s); pollSeconds=15: median
  6.0 s, max 10.5 s (target 17 s) — against ~22 s average / ~45 s worst for KEDA's defaults;
- new pods Ready (2026-12-07, 3 trials, pollSeconds=5): Deployment scaled min 3.5 / median
  5.6 / max 7.5 s; both pods Ready 10.7 / 17.3 / 19.4 s, of which pod start-up 5.2 / 9.8 /
  15.9 s;
- cold start: 600 children of 100 pipelines with their status in 17.3 s (5.3 s without the
  rules), 1,000 rules in the table in 13.0 s, 10 CPU-seconds; then 0.10 CPU-second per second
  at steady state; the kubectl floor for the 600 children alone was 3.9 s;
- trend sizing: 10 scale events and a peak lag of 25,216 against 18 and 44,324 for the
  threshold rule, for 5 % more replica-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from molam_operator import manifests
from molam_operator.kube import Kube, KubeError, path
from molam_operator.spec import ConsumerScaling, parse_spec
from molam_workloads.jobs.traffic import Market, history_times, merchants

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env, scratch_database, table
from _scaling_sim import simulate, synthetic_trace

GROUP_VERSION = "analytics.molam.io/v1"
STEADY_SECONDS = 20
CLI = Path(sys.executable).with_name("molam-analytics")
ROOT = Path(__file__).resolve().parents[1]
# Debian's CLI where there is one: it speaks the API version of the stack's dockerd.
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
KUBECTL_CANDIDATES = [
    Path(os.environ.get("MOLAM_CACHE_DIR") or Path.home() / ".cache/molam-analytics")
    / "k8s/bin/kubectl"
]


def kubectl() -> str:
    for p in KUBECTL_CANDIDATES:
        if p.exists():
            return str(p)
    return "kubectl"


@dataclass
class Running:
    pid: int
    started: float

    def cpu_seconds(self) -> float:
        """User + system CPU time of the operator process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def operator_process(dsn: str, namespace: str | None, log: Path) -> AsyncIterator[Running]:
    """``molam-analytics operator`` for one namespace (None: all)."""
    environ = {
        **os.environ,
        "DATABASE_URL": dsn,
        "OPERATOR_METRICS_PORT": "0",
        "LOG_LEVEL": os.environ.get("BENCH_OPERATOR_LOG_LEVEL", "WARNING"),
    }
    started = time.monotonic()
    with log.open("a") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (spawns, does not wait)
            [
                str(CLI),
                "operator",
                *(["--namespace", namespace] if namespace else ["--all-namespaces"]),
                "--liveness",
                "none",
            ],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Running(proc.pid, started)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def create_namespaces(kube: Kube, names: list[str]) -> None:
    await asyncio.gather(
        *(
            kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})
            for n in names
        )
    )


async def release(kube: Kube, namespaces: list[str], *, wait: float = 120) -> None:
    """Delete the namespaces. Called while the operator still runs, so it removes its
    finalizers (the rules' rows go too); whatever is left after ``wait`` is released by hand,
    so no namespace stays Terminating for the next run."""
    if not namespaces:
        return
    await asyncio.to_thread(
        subprocess.run,
        [kubectl(), "delete", "namespace", "--wait=false", *namespaces],
        capture_output=True,
        check=False,
    )
    wanted = set(namespaces)
    deadline = time.monotonic() + wait
    while True:
        left = [
            o
            for plural in ("analyticspipelines", "alertrules")
            for o in await kube.list(path(GROUP_VERSION, plural))
            if o["metadata"]["namespace"] in wanted
        ]
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for o in left:
        meta = o["metadata"]
        url = path(GROUP_VERSION, o["kind"].lower() + "s", meta["namespace"], meta["name"])
        with suppress(KubeError):
            await kube.patch(url, {"metadata": {"finalizers": None}})


def secret(namespace: str, name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"url": url},
    }


def pipeline_doc(
    namespace: str, bootstrap: str, topic: str, group: str, **consumer: Any
) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "AnalyticsPipeline",
        "metadata": {"name": "analytics", "namespace": namespace},
        "spec": {
            "image": "molam-analytics:bench",
            "kafka": {"bootstrapServers": bootstrap, "topic": topic, "consumerGroup": group},
            "database": {"secretRef": {"name": "analytics-db"}},
            "redis": {"secretRef": {"name": "analytics-redis"}},
            "consumer": consumer,
        },
    }


def rule_doc(namespace: str, i: int) -> dict[str, Any]:
    metrics = ["tx_count", "gross_volume", "failure_rate", "refund_rate", "avg_ticket"]
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "AlertRule",
        "metadata": {"name": f"rule-{i}", "namespace": namespace},
        "spec": {
            "metric": metrics[i % len(metrics)],
            "comparison": "gt",
            "threshold": 0.2 + i,
            "windowMinutes": 15,
            "severity": "warning",
            "scope": {"country": "SN"} if i % 2 else {},
        },
    }


# ---------------------------------------------------------------------------- scale latency


async def _replicas(kube: Kube, namespace: str) -> int:
    dep = await kube.get(path("apps/v1", "Deployment", namespace, "analytics-consumer"))
    return -1 if dep is None else int(dep["spec"].get("replicas", 0))


async def _wait_replicas(kube: Kube, namespace: str, want: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _replicas(kube, namespace) == want:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"consumer never reached {want} replicas")


async def scale_latency(
    kube: Kube, dsn: str, bootstrap: str, poll: int, trials: int, log: Path
) -> list[float]:
    ns = f"bench-scale-{uuid.uuid4().hex[:6]}"
    topic, group, parts = f"bench.op.{uuid.uuid4().hex[:8]}", f"bench-{ns}", 4
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, parts, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    tps = [TopicPartition(topic, p) for p in range(parts)]
    ends = [0] * parts
    threshold = 25

    async def produce(n: int) -> None:  # one record per batch (Tansu's end-offset quirk)
        for tp in tps:
            for _ in range(n):
                await producer.send_and_wait(topic, b"{}", partition=tp.partition)
            ends[tp.partition] += n

    async def commit(behind: int) -> None:
        await consumer.commit({tp: max(ends[tp.partition] - behind, 0) for tp in tps})

    results: list[float] = []
    await create_namespaces(kube, [ns])
    try:
        await producer.start()
        await consumer.start()
        consumer.assign(tps)
        await kube.create(secret(ns, "analytics-db", dsn))
        await produce(5)
        await commit(0)
        await kube.create(
            pipeline_doc(
                ns,
                bootstrap,
                topic,
                group,
                minReplicas=1,
                maxReplicas=4,
                lagThreshold=threshold,
                pollSeconds=poll,
                scaleDownStabilizationSeconds=0,
            )
        )
        async with operator_process(dsn, ns, log):
            await _wait_replicas(kube, ns, 1, 60)
            for trial in range(trials):
                target = 2 + trial % 3  # 2, 3, 4 replicas
                behind = (threshold * (target - 1)) // parts + 1  # lag just above (target-1)·T
                # Records arrive and are consumed at once (lag 0); then, at a random phase of
                # the poll, the group's offsets move back by `behind` on every partition: the
                # lag crosses (target - 1) x threshold at a known instant.
                await produce(behind)
                await commit(0)
                await asyncio.sleep(random.uniform(0, poll))
                crossed = time.monotonic()
                await commit(behind)
                done = await _wait_replicas(kube, ns, target, poll * 3 + 30)
                results.append(done - crossed)
                await commit(0)  # drained: back to 1 (no stabilization window here)
                await _wait_replicas(kube, ns, 1, poll * 3 + 30)
            await release(kube, [ns])
    finally:
        await producer.stop()
        await consumer.stop()
        await release(kube, [ns], wait=0)
    return results


# ------------------------------------------------------------------------- pods Ready latency


def _pod_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def _ready_consumers(kube: Kube, namespace: str) -> int:
    pods = await kube.list(
        path("v1", "pods", namespace), label_selector="app.kubernetes.io/component=consumer"
    )
    return sum(1 for p in pods if _pod_ready(p))


async def _group_lag(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str,
                     tps: list[TopicPartition]) -> int:  # fmt: skip
    """Lag as the operator measures it: ListOffsets (end) minus OffsetFetch (committed; the
    log start for a partition never committed, here 0)."""
    ends = await consumer.end_offsets(tps)
    committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    return sum(
        ends[tp] - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
        for tp in tps
    )


def _burst_values(n: int) -> list[bytes]:
    """``n`` valid events of simulate's market (new transaction ids each call), as on the
    wire: the pods count them as they would real traffic."""
    rnd = random.Random()
    market = Market(merchants(200, rnd), rnd, f"bench-{uuid.uuid4().hex[:6]}")
    now = datetime.now(UTC)
    return [
        json.dumps(market.transaction(t), separators=(",", ":")).encode()
        for t in history_times(n, now - timedelta(minutes=30), now, rnd)
    ]


async def _produce_burst(
    producer: AIOKafkaProducer, topic: str, values: list[bytes], parts: int
) -> None:
    """Everything at once in large batches (faster than a pod drains it), then one record alone
    per partition: Tansu's end offset is the last batch's base offset + 1 (LOCAL-STACK.md), so
    the lag shows a batch late while it grows, and exact at the end."""
    body, tail = values[:-parts], values[-parts:]
    futures = [await producer.send(topic, v, partition=i % parts) for i, v in enumerate(body)]
    await asyncio.gather(*futures)
    for p, v in enumerate(tail):
        await producer.send_and_wait(topic, v, partition=p)


def _image_for_pods() -> str:
    """``make image`` (cached: ~1 s when nothing changed), tagged for this run alone."""
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "image"],
                   capture_output=True, check=True, timeout=1500)  # fmt: skip
    tag = f"molam-analytics:bench-{uuid.uuid4().hex[:6]}"
    subprocess.run([DOCKER, "tag", "molam-analytics:dev", tag], capture_output=True, check=True)
    return tag


async def ready_latency(
    kube: Kube, dsn: str, bootstrap: str, poll: int, trials: int, log: Path
) -> tuple[list[float], list[float]]:
    """Real consumer pods on the stack's node: one runs, idle; a burst of events makes the
    group's lag cross lagThreshold (the rule then wants 2 replicas, maxReplicas) at a random
    phase of the poll. Per trial: seconds from that crossing (seen by a probe every 50 ms)
    until the Deployment says 2 replicas, and until 2 consumer pods are Ready."""
    ns = f"bench-ready-{uuid.uuid4().hex[:6]}"
    # maxReplicas 2: any poll that sees the lag over the threshold wants exactly 2 replicas.
    topic, group, parts, threshold, target = f"bench.ready.{uuid.uuid4().hex[:8]}", ns, 4, 5000, 2
    image = await asyncio.to_thread(_image_for_pods)
    pod_dsn = urlunparse(urlparse(env("POD_DATABASE_URL"))._replace(path=urlparse(dsn).path))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, parts, 1)])
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024
    )
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(parts)]
    doc = pipeline_doc(ns, bootstrap, topic, group, minReplicas=1, maxReplicas=target,
                       lagThreshold=threshold, pollSeconds=poll,
                       scaleDownStabilizationSeconds=3600)  # fmt: skip
    doc["spec"].update(
        image=image,
        imagePullPolicy="Never",
        jwtSecret={"secretRef": {"name": "analytics-jwt", "key": "url"}},
        api={"replicas": 0},
        sira={"enabled": False},
    )
    url = path(GROUP_VERSION, "analyticspipelines", ns, "analytics")
    to_replicas: list[float] = []
    to_ready: list[float] = []
    await create_namespaces(kube, [ns])
    try:
        await producer.start()
        await probe.start()
        for name, value in (("analytics-db", pod_dsn), ("analytics-redis", env("POD_REDIS_URL")),
                            ("analytics-jwt", "x" * 64)):  # fmt: skip
            await kube.create(secret(ns, name, value))
        await kube.create(doc)
        async with operator_process(dsn, ns, log):
            for _ in range(trials):
                # Settled: one consumer Ready, the group caught up.
                await _wait_replicas(kube, ns, 1, 120)
                deadline = time.monotonic() + 180
                while (await _ready_consumers(kube, ns) != 1
                       or await _group_lag(admin, probe, group, tps) > 0):  # fmt: skip
                    if time.monotonic() > deadline:
                        raise TimeoutError("the consumer never settled at 1 Ready pod, lag 0")
                    await asyncio.sleep(0.5)
                # More than the one pod drains in a poll (it reads ~10-20k events/s here): the
                # lag stays over the threshold until the operator's next poll sees it.
                values = _burst_values(threshold + poll * 20_000 + 20_000)
                await asyncio.sleep(random.uniform(0, poll))
                producing = asyncio.create_task(_produce_burst(producer, topic, values, parts))
                crossed = None
                deadline = time.monotonic() + 60
                while crossed is None and time.monotonic() < deadline:
                    if await _group_lag(admin, probe, group, tps) > threshold:
                        crossed = time.monotonic()
                    elif producing.done():
                        producing.result()  # its error, if it failed
                        break
                    else:
                        await asyncio.sleep(0.05)
                await producing
                if crossed is None:
                    raise TimeoutError("the lag never crossed lagThreshold")
                replicas_at = ready_at = None
                deadline = crossed + poll * 3 + 120
                while ready_at is None and time.monotonic() < deadline:
                    if replicas_at is None and await _replicas(kube, ns) == target:
                        replicas_at = time.monotonic()
                    if replicas_at is not None and await _ready_consumers(kube, ns) == target:
                        ready_at = time.monotonic()
                    await asyncio.sleep(0.1)
                if replicas_at is None or ready_at is None:
                    raise TimeoutError(f"{target} Ready consumer pods never came")
                to_replicas.append(replicas_at - crossed)
                to_ready.append(ready_at - crossed)
                print(f"   pollSeconds={poll}: scaled {to_replicas[-1]:.2f} s, "
                      f"Ready {to_ready[-1]:.2f} s", flush=True)  # fmt: skip
                # Back to one pod for the next trial: the stabilization window off, then on.
                deadline = time.monotonic() + 180
                while (lag := await _group_lag(admin, probe, group, tps)) > 0:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the backlog never drained (lag {lag})")
                    await asyncio.sleep(0.5)
                await kube.patch(url, {"spec": {"consumer": {"scaleDownStabilizationSeconds": 0}}})
                await _wait_replicas(kube, ns, 1, poll * 3 + 30)
                await kube.patch(
                    url, {"spec": {"consumer": {"scaleDownStabilizationSeconds": 3600}}}
                )
            await release(kube, [ns])
    finally:
        await producer.stop()
        await probe.stop()
        await admin.delete_topics([topic])
        await admin.close()
        await release(kube, [ns], wait=0)
        await asyncio.to_thread(
            subprocess.run, [DOCKER, "rmi", "--no-prune", image], capture_output=True, check=False
        )
    return to_replicas, to_ready


# ------------------------------------------------------------------------------- cold start


async def cold_start(
    kube: Kube, dsn: str, bootstrap: str, pipelines: int, rules_per: int, log: Path
) -> tuple[float, float, float, float, float]:
    """Seconds until all children exist, until all rules are rows, until both; CPU seconds
    meanwhile; CPU share in the steady state that follows."""
    prefix = f"bench-cold-{uuid.uuid4().hex[:4]}"
    namespaces = [f"{prefix}-{i:03d}" for i in range(pipelines)]
    sem = asyncio.Semaphore(32)

    async def create(obj: dict[str, Any]) -> None:
        async with sem:
            await kube.create(obj)

    await create_namespaces(kube, namespaces)
    try:
        await asyncio.gather(*(create(secret(ns, "analytics-db", dsn)) for ns in namespaces))
        await asyncio.gather(
            *(
                create(pipeline_doc(ns, bootstrap, "wallet.bench", "bench-cold", pollSeconds=15))
                for ns in namespaces
            )
        )
        await asyncio.gather(
            *(create(rule_doc(ns, i)) for ns in namespaces for i in range(rules_per))
        )
        want_children = pipelines * 6
        want_rules = pipelines * rules_per
        db = await asyncpg.connect(dsn)
        children_at = rules_at = None
        try:
            # Cluster-wide, as the chart installs it by default: one watch per resource kind
            # (a namespace pattern would open one per namespace and kind).
            async with operator_process(dsn, None, log) as running:
                started = running.started
                deadline = started + 600
                while time.monotonic() < deadline and (children_at is None or rules_at is None):
                    if children_at is None:
                        aps = await kube.list(path(GROUP_VERSION, "analyticspipelines"))
                        ready = sum(
                            1
                            for ap in aps
                            if ap["metadata"]["namespace"].startswith(prefix)
                            and (ap.get("status") or {}).get("observedGeneration") == 1
                        )
                        if ready == pipelines:
                            label = "app.kubernetes.io/managed-by=molam-operator"
                            n = 0
                            for api, kind in (
                                ("apps/v1", "deployments"),
                                ("v1", "services"),
                                ("v1", "configmaps"),
                                ("batch/v1beta1", "cronjobs"),
                            ):
                                try:
                                    items = await kube.list(path(api, kind), label_selector=label)
                                except KubeError:
                                    items = await kube.list(
                                        path("batch/v1", kind), label_selector=label
                                    )
                                n += sum(
                                    1
                                    for o in items
                                    if o["metadata"]["namespace"].startswith(prefix)
                                )
                            if n >= want_children:
                                children_at = time.monotonic() - started
                    if rules_at is None:
                        count = await db.fetchval(
                            "SELECT count(*) FROM analytics_alert_rules WHERE source = 'crd'"
                            " AND name LIKE $1",
                            f"{prefix}-%",
                        )
                        if count == want_rules:
                            rules_at = time.monotonic() - started
                    await asyncio.sleep(0.25)
                cpu = running.cpu_seconds()
                # Steady state: everything reconciled, lag polls and status mirrors go on.
                await asyncio.sleep(STEADY_SECONDS)
                steady = (running.cpu_seconds() - cpu) / STEADY_SECONDS
                await release(kube, namespaces)
        finally:
            await db.close()
        if children_at is None or rules_at is None:
            raise TimeoutError(
                f"cold start did not finish (children {children_at}, rules {rules_at})"
            )
        return children_at, rules_at, max(children_at, rules_at), cpu, steady
    finally:
        await release(kube, namespaces, wait=0)


def kubectl_floor(pipelines: int, cron_api: str) -> float:
    """``kubectl apply`` of the same child manifests in one call (server-side work only)."""
    prefix = f"bench-floor-{uuid.uuid4().hex[:4]}"
    namespaces = [f"{prefix}-{i:03d}" for i in range(pipelines)]
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces
    ]
    spec = pipeline_doc("x", "kafka:9092", "t", "g")["spec"]
    cfg = parse_spec(spec)
    for ns in namespaces:
        for child in manifests.build_children("analytics", cfg, cron_job_api_version=cron_api):
            child["metadata"]["namespace"] = ns
            docs.append(child)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(docs, f)
    try:
        started = time.monotonic()
        subprocess.run([kubectl(), "apply", "-f", f.name], capture_output=True, check=True)
        return time.monotonic() - started
    finally:
        os.unlink(f.name)
        subprocess.run(
            [kubectl(), "delete", "namespace", "--wait=false", *namespaces],
            capture_output=True,
            check=False,
        )


# ------------------------------------------------------------------------------------ main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--polls", default="5,15", help="pollSeconds values to measure")
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--rules-per-pipeline", type=int, default=10)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-ready", action="store_true", help="skip the real-pods row")
    parser.add_argument("--ready-trials", type=int, default=3)
    parser.add_argument("--ready-polls", default="5", help="pollSeconds for the real-pods row")
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        print("bench/kube_operator.py: skipped (no KUBECONFIG: the stack runs without Kubernetes)")
        return
    bootstrap = env("KAFKA_BOOTSTRAP_SERVERS")
    await asyncio.to_thread(
        subprocess.run,
        [kubectl(), "apply", "-f", str(ROOT / "crds")],
        capture_output=True,
        check=True,
    )
    log = Path(tempfile.gettempdir()) / f"bench-operator-{os.getpid()}.log"
    kube = Kube.connect()
    try:
        async with scratch_database("bench_operator") as dsn:
            if not args.skip_scale:
                print("1. Scale latency: lag crosses the threshold -> consumer Deployment scaled")
                rows = []
                for poll in (int(p) for p in args.polls.split(",")):
                    got = await scale_latency(kube, dsn, bootstrap, poll, args.trials, log)
                    rows.append(
                        [
                            f"molam operator, pollSeconds={poll}",
                            f"{min(got):.2f}",
                            f"{statistics.median(got):.2f}",
                            f"{max(got):.2f}",
                            f"{poll + 2}",
                            "yes" if max(got) <= poll + 2 else "NO",
                        ]
                    )
                rows.append(["KEDA defaults (30 s poll) + HPA (15 s sync), stated",
                             "~0", "~22.5", "~45", "-", "-"])  # fmt: skip
                print(table(["", "min s", "median s", "max s", "target s", "met"], rows))
                print()
            if not args.skip_ready and os.environ.get("NODE_IP"):
                print("1b. Lag over the threshold -> new consumer pods Ready (real pods, the node)")
                rows = []
                for poll in (int(p) for p in args.ready_polls.split(",")):
                    scaled, ready = await ready_latency(
                        kube, dsn, bootstrap, poll, args.ready_trials, log
                    )
                    startup = [r - s for r, s in zip(ready, scaled, strict=True)]
                    # Per trial, Ready within one poll (+ 2 s) plus that trial's pod start-up
                    # is the same as scaled within one poll + 2 s.
                    met = f"{sum(s <= poll + 2 for s in scaled)}/{len(scaled)}"
                    for label, got, target in (
                        ("Deployment scaled", scaled, f"{poll + 2}"),
                        ("new pods Ready", ready, f"{poll + 2} + start-up"),
                        ("  pod start-up (Ready - scaled)", startup, ""),
                    ):
                        rows.append([f"molam, pollSeconds={poll}: {label}", f"{min(got):.2f}",
                                     f"{statistics.median(got):.2f}", f"{max(got):.2f}", target,
                                     met if target else ""])  # fmt: skip
                rows.append(["KEDA defaults + HPA, stated: scaled", "~0", "~22.5", "~45", "-", "-"])
                rows.append(["KEDA defaults + HPA, stated: Ready", "+ start-up", "", "", "-", "-"])
                print(table(["", "min s", "median s", "max s", "target s", "met"], rows))
                print()
            if not args.skip_cold:
                n, r = args.pipelines, args.pipelines * args.rules_per_pipeline
                print(f"2. Cold start: {n} pipelines ({n * 6} children) and {r} AlertRules")
                children, rules, both, cpu, steady = await cold_start(
                    kube, dsn, bootstrap, args.pipelines, args.rules_per_pipeline, log
                )
                cron = "batch/v1" if await kube.serves("batch/v1", "cronjobs") else "batch/v1beta1"
                floor = await asyncio.to_thread(kubectl_floor, args.pipelines, cron)
                print(
                    table(
                        ["", "seconds"],
                        [
                            [f"all {n * 6} children + pipeline status", f"{children:.1f}"],
                            [f"all {r} rules in analytics_alert_rules", f"{rules:.1f}"],
                            ["everything", f"{both:.1f}"],
                            ["operator CPU time meanwhile (user + system)", f"{cpu:.1f}"],
                            [
                                f"then, steady state: CPU seconds per second ({STEADY_SECONDS} s)",
                                f"{steady:.2f}",
                            ],
                            [f"floor: kubectl apply of the {n * 6} children", f"{floor:.1f}"],
                        ],
                    )
                )
                print()
    finally:
        await kube.close()

    print("3. Trend sizing vs threshold rule (pure simulation, 1 h synthetic trace,")
    print("   12 partitions, 500 msg/s per replica, 10 s pod start, poll 15 s, window 300 s)")
    trace = synthetic_trace()
    base = ConsumerScaling(
        min_replicas=1, max_replicas=12, lag_threshold=5000, poll_seconds=15,
        scale_down_stabilization_seconds=300,
    )  # fmt: skip
    rows = []
    for label, policy in (
        ("threshold: ceil(lag / 5000)", base),
        ("trend: targetDrainSeconds=60", replace(base, target_drain_seconds=60)),
        ("trend: targetDrainSeconds=300", replace(base, target_drain_seconds=300)),
    ):
        r = simulate(policy, trace, partitions=12, replica_capacity=500)
        rows.append([label, str(r.scale_events), str(r.peak_lag), str(r.replica_seconds)])
    print(table(["", "scale events", "peak lag", "replica-seconds"], rows))
    print(f"\n(operator log: {log})")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KubeError as exc:
        sys.exit(f"bench/kube_operator.py: {exc}")
