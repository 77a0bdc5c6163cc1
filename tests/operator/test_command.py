"""`molam-analytics operator` as a process: namespace option, Kopf's liveness endpoint, the
Prometheus metrics port, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from helpers.kube import apply, eventually, pipeline_with_db
from helpers.services import free_port

pytestmark = pytest.mark.kube

CLI = Path(sys.executable).with_name("molam-analytics")


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def test_help() -> None:
    out = subprocess.run([str(CLI), "operator", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--namespace" in out.stdout and "--all-namespaces" in out.stdout
    assert "--liveness" in out.stdout


async def test_operator_process_serves_liveness_and_metrics(
    namespace: str,
    database_url: str,
    kafka_bootstrap: str,
    create_topic: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic = await create_topic("wallet.cmd", partitions=2)
    group = f"cmd-{namespace}"
    # 2 x 5 records, committed 3 behind on each partition: lag 6.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await producer.start()
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (0, 1)]
        for tp in parts:
            for _ in range(5):
                await producer.send_and_wait(topic, b"{}", partition=tp.partition)
        consumer.assign(parts)
        await consumer.commit({tp: 2 for tp in parts})
    finally:
        await producer.stop()
        await consumer.stop()

    live, metrics = free_port(), free_port()
    log = tmp_path / "operator.log"
    env = {**os.environ, "OPERATOR_METRICS_PORT": str(metrics)}
    with log.open("w") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (spawns, does not wait)
            [str(CLI), "operator", "--namespace", namespace,
             "--liveness", f"http://127.0.0.1:{live}/healthz"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        await eventually("liveness", lambda: fetch(f"http://127.0.0.1:{live}/healthz"), 20)
        apply(
            pipeline_with_db(
                namespace,
                database_url,
                kafka={"bootstrapServers": kafka_bootstrap, "topic": topic, "consumerGroup": group},
                consumer={"pollSeconds": 1, "lagThreshold": 5},
                secret="db",
                redis_secret="redis",
            )
        )
        line = (
            f'analytics_operator_consumer_lag{{namespace="{namespace}",pipeline="analytics"}} 6.0'
        )

        def scraped() -> bool:
            text = fetch(f"http://127.0.0.1:{metrics}/metrics") or ""
            return line in text and "analytics_operator_scale_events_total" in text

        await eventually("lag metric", scraped, 20)
        text = fetch(f"http://127.0.0.1:{metrics}/metrics") or ""
        assert (
            f'analytics_operator_consumer_desired_replicas{{namespace="{namespace}",'
            f'pipeline="analytics"}} 2.0'
        ) in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
