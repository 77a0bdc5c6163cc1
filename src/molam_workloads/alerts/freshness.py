"""Whether the ingestion is stale: no batch stored for ``ALERTS_STALE_INGESTION_MINUTES`` while
the topic has lag. Then the aggregates are behind, and every rule's value is unknown: a count
would read 0 and ``tx_count lt 1`` fire for traffic that is only waiting in Kafka.

The consumer stores each batch's next offsets with its aggregates (``consumer_offsets``, whose
``updated_at`` moves with every batch); the lag is the broker's (``core.kafka.group_lag``),
asked only when no batch came for that long. A pipeline that never stored a batch has nothing
to be stale against. When the broker cannot be asked, the lag is unknown and the ingestion is
not called stale: the issue's rule needs the lag. That wait is ``core.faults.outage("alerts",
"kafka")`` (logged once per interval, ``analytics_waiting_for``, the evaluator's ``/health``);
while it lasts the lag is asked every cycle, quiet or not, so that the broker's return ends it.
"""

from __future__ import annotations

import logging

import asyncpg

from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.errors import MolamError, ServiceUnavailable
from molam_workloads.core.faults import outage
from molam_workloads.core.kafka import group_lag

log = logging.getLogger(__name__)

LAG_TIMEOUT_SECONDS = 5.0  # one cycle waits at most this for the broker

# The database's clock, the one that stamped updated_at (the evaluator's `now` can be a test's).
_QUIET_SQL = """
SELECT max(updated_at) < now() - make_interval(secs => $3) AS quiet
FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2
"""


async def ingestion_stale(pool: asyncpg.Pool, settings: AlertsSettings) -> bool:
    minutes = settings.alerts_stale_ingestion_minutes
    if minutes <= 0:
        return False
    group, topic = settings.kafka_consumer_group, settings.kafka_topic
    quiet = await pool.fetchval(_QUIET_SQL, group, topic, minutes * 60)
    broker = outage("alerts", "kafka")
    if not quiet and not broker.waiting:  # a recent batch, or none ever stored (NULL)
        return False
    try:
        lag = await group_lag(settings, group, topic, timeout=LAG_TIMEOUT_SECONDS)
    except (ServiceUnavailable, OSError) as exc:  # unreachable, or answering with errors
        broker.failed(exc, f"the lag of group {group}")
        return False
    except MolamError as exc:  # the broker answered: no such topic
        broker.recovered()
        if quiet:
            log.warning(
                "no batch for %g min from group %s, and its lag is unknown: %s", minutes, group, exc
            )
        return False
    broker.recovered()
    if quiet and lag.total > 0:
        log.warning(
            "ingestion is stale: no batch for %g min from group %s while %s has lag %d; "
            "every rule has no data",
            minutes,
            group,
            topic,
            lag.total,
        )
        return True
    return False
