"""Configuration of ``molam-analytics consume``: the shared pieces plus the consumer's knobs."""

from __future__ import annotations

from pydantic import Field

from molam_workloads.core.settings import (
    BindAddress,
    DatabaseSettings,
    KafkaSettings,
    RedisSettings,
    ReportingSettings,
    SiraSettings,
)
from molam_workloads.ingest.offsets import OffsetLossPolicy


class IngestSettings(
    DatabaseSettings, RedisSettings, KafkaSettings, ReportingSettings, SiraSettings
):
    metrics_port: int = Field(
        default=9102, ge=0, le=65535, description="Prometheus /metrics port (0: not served)."
    )
    metrics_address: BindAddress = Field(
        default="0.0.0.0",
        description="Address the /metrics listener binds (127.0.0.1: this host only; :: IPv6).",
    )
    # Only reached under a backlog; large, so the per-batch work is shared by more events
    # (docs/decisions/007-batch-size.md).
    ingest_batch_max_records: int = Field(
        default=20_000, ge=1, le=100_000, description="Most records committed in one transaction."
    )
    ingest_poll_timeout_ms: int = Field(
        default=500, ge=1, le=60_000, description="How long getmany() waits for records."
    )
    ingest_max_partition_fetch_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # How long the broker may hold a fetch while it has less than one byte to send: short,
    # since a broker may hold it although records are there; an idle consumer polls at most
    # this often (docs/decisions/002-fetch-max-wait.md).
    ingest_fetch_max_wait_ms: int = Field(default=100, ge=10, le=10_000)
    # Group liveness: a crashed consumer's partitions wait this long for it (or for the group
    # to move them); 10 s instead of 30 s cut the stall per crash from 56 s to 21 s
    # (docs/decisions/023-static-membership.md). Heartbeats come from a task of their own, so a
    # busy event loop does not miss them.
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(default=3000, ge=100)
    kafka_max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    # Static group membership: a consumer restarted under the same name (a pod's container
    # restarted in place) takes its partitions back without a rebalance
    # (docs/decisions/023-static-membership.md). Empty: POD_NAME when set, else none.
    kafka_group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=249,
        description="group.instance.id of the consumer (default: POD_NAME when set).",
    )
    # What a stored offset outside its partition's log does (ingest.offsets): reset reads the
    # partition again from its start (exactly-once by the ledger) and reports the range; stop
    # exits with code 4.
    ingest_offset_loss_policy: OffsetLossPolicy = Field(default="reset")
    # Minute buckets serve the alerts evaluator's short windows, and its housekeeping deletes
    # them after MINUTE_AGG_RETENTION_HOURS (the same variable): events older than that (a
    # replay, a consumer catching up) skip them. 0 writes every minute.
    minute_agg_retention_hours: int = Field(default=48, ge=0)
    # The exactly-once ledger keeps one row per transaction; 0 keeps them forever. N keeps N
    # days (see ingest.ledger): older events then go to the DLQ, since a copy of them could no
    # longer be recognised.
    ledger_retention_days: int = Field(default=0, ge=0, le=36_500)
    # Live counters are per UTC day; two days keeps yesterday's around for late readers.
    live_counter_ttl_seconds: int = Field(default=2 * 86400, ge=60)
