"""Dead-letter records: what the DLQ topic receives for a message that cannot be counted.

The record carries enough to find, understand and replay the original: its reason and detail,
where it came from (topic, partition, offset) and the original bytes, as text when they are
UTF-8 and base64 otherwise. Huge originals are cut so the dead letter itself stays deliverable.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import msgspec

# Below the broker's default 1 MiB message limit even once base64 has grown it by a third.
MAX_ORIGINAL_BYTES = 256 * 1024


def dead_letter(
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    key: bytes | None = None,
    now: datetime | None = None,
    last_offset: int | None = None,
) -> bytes:
    """The JSON value published to the dead-letter topic for one rejected message, or for the
    records from ``offset`` to ``last_offset`` that could not be read at all (no value)."""
    doc: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "failed_at": (now or datetime.now(UTC)).isoformat(),
        "original_size": None if value is None else len(value),
        "truncated": value is not None and len(value) > MAX_ORIGINAL_BYTES,
    }
    if last_offset is not None:
        doc["last_offset"] = last_offset
    if key is not None:
        doc["key"] = _text_or_base64(key)
    if value is not None:
        doc.update(_original(value[:MAX_ORIGINAL_BYTES]))
    # msgspec: a fifth of json.dumps's time, which a stream full of poison pays per record.
    return msgspec.json.encode(doc)


def _original(value: bytes) -> dict[str, str]:
    try:
        return {"original_text": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"original_base64": base64.b64encode(value).decode("ascii")}


def _text_or_base64(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")
