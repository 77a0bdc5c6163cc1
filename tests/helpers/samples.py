"""The custom resources' samples (``crds/samples/``): the documents the tests start from, so
that a sample that stops being valid fails them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
ALERT_RULE, PIPELINE = "alertrule.yaml", "analyticspipeline.yaml"


def sample(name: str, namespace: str | None = None) -> dict[str, Any]:
    """A fresh copy of ``crds/samples/<name>`` (moved to ``namespace`` when given)."""
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    if namespace is not None:
        doc["metadata"]["namespace"] = namespace
    return doc


def sample_spec(name: str) -> dict[str, Any]:
    """A fresh copy of the sample's ``spec``."""
    spec: dict[str, Any] = sample(name)["spec"]
    return spec
