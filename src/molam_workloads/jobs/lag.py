"""``molam-analytics lag``: the consumer group's lag per partition, like
``kafka-consumer-groups --describe`` (ListOffsets for the end, OffsetFetch for the group)."""

from __future__ import annotations

import argparse
import json

from molam_workloads.core.kafka import GroupLag, group_lag
from molam_workloads.core.settings import KafkaSettings, load_settings

HEADERS = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", default=None, help="default: KAFKA_CONSUMER_GROUP")
    parser.add_argument("--topic", default=None, help="default: KAFKA_TOPIC")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def table(lag: GroupLag) -> str:
    rows = [
        (
            lag.group,
            p.topic,
            str(p.partition),
            "-" if p.committed is None else str(p.committed),
            str(p.end_offset),
            str(p.lag),
        )
        for p in lag.partitions
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [HEADERS, *rows]]  # fmt: skip
    lines.append(f"\nTOTAL LAG {lag.total}")
    return "\n".join(lines)


def as_json(lag: GroupLag) -> str:
    return json.dumps(
        {
            "group": lag.group,
            "topic": lag.topic,
            "total_lag": lag.total,
            "partitions": [
                {
                    "partition": p.partition,
                    "current_offset": p.committed,
                    "log_end_offset": p.end_offset,
                    "lag": p.lag,
                }
                for p in lag.partitions
            ],
        },
        indent=2,
    )


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(KafkaSettings)
    lag = await group_lag(
        settings,
        args.group or settings.kafka_consumer_group,
        args.topic or settings.kafka_topic,
    )
    print(as_json(lag) if args.json else table(lag))
    return 0
