"""Dead-letter records keep the reason, the origin and the original bytes."""

from __future__ import annotations

import base64
import json

from molam_workloads.ingest.dead_letters import MAX_ORIGINAL_BYTES, dead_letter


def test_text_original_is_kept_as_text() -> None:
    doc = json.loads(
        dead_letter(
            reason="not_json",
            detail="x",
            topic="t",
            partition=2,
            offset=7,
            value=b"{oops",
            key=b"k",
        )
    )
    assert doc | {"failed_at": None} == {
        "reason": "not_json",
        "detail": "x",
        "topic": "t",
        "partition": 2,
        "offset": 7,
        "failed_at": None,
        "original_size": 5,
        "truncated": False,
        "key": "k",
        "original_text": "{oops",
    }


def test_binary_original_is_base64_and_huge_ones_are_cut() -> None:
    doc = json.loads(
        dead_letter(reason="r", detail="d", topic="t", partition=0, offset=0, value=b"\xff\x00")
    )
    assert base64.b64decode(doc["original_base64"]) == b"\xff\x00"
    big = b"a" * (MAX_ORIGINAL_BYTES + 1)
    doc = json.loads(
        dead_letter(reason="r", detail="d", topic="t", partition=0, offset=0, value=big)
    )
    assert doc["truncated"] and doc["original_size"] == len(big)
    assert len(doc["original_text"]) == MAX_ORIGINAL_BYTES


def test_missing_value() -> None:
    doc = json.loads(
        dead_letter(reason="empty", detail="d", topic="t", partition=0, offset=0, value=None)
    )
    assert doc["original_size"] is None and "original_text" not in doc
