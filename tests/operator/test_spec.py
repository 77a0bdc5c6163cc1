"""Reading the pipeline spec: defaults as the CRD's, and the rules its schema cannot say."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import samples

from molam_operator.spec import InvalidSpec, parse_spec


def sample_spec() -> dict[str, Any]:
    return samples.sample_spec(samples.PIPELINE)


def secured(kafka: dict[str, Any]) -> dict[str, Any]:
    return {**sample_spec(), "kafka": kafka}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"consumer": {"minReplicas": 5, "maxReplicas": 2}}, "spec.consumer.minReplicas"),
        ({"image": ""}, "spec.image"),
        ({"kafka": {}}, "spec.kafka.bootstrapServers"),
        ({"database": {}}, "spec.database.secretRef"),
    ],
)
def test_invalid_specs_name_the_field(patch: dict[str, Any], field: str) -> None:
    spec = {**sample_spec(), **patch}
    with pytest.raises(InvalidSpec, match=field.replace(".", r"\.")):
        parse_spec(spec)


def test_defaults_match_the_crd_when_fields_are_missing() -> None:
    cfg = parse_spec(
        {
            "image": "x",
            "kafka": {"bootstrapServers": "k:9092"},
            "database": {"secretRef": {"name": "db"}},
            "redis": {"secretRef": {"name": "r"}},
        }
    )
    s = cfg.scaling
    assert (s.min_replicas, s.max_replicas, s.lag_threshold, s.poll_seconds) == (1, 8, 5000, 15)
    assert s.scale_down_stabilization_seconds == 300 and not s.paused
    assert cfg.database.key == "url" and cfg.topic == "wallet.transactions"
    assert cfg.refresh_schedule == "*/10 * * * *"


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"securityProtocol": "SASL_SSL"}, "spec.kafka.sasl.secretRef: required"),
        (
            {"securityProtocol": "SSL", "sasl": {"secretRef": {"name": "c"}}},
            "spec.kafka.sasl: securityProtocol SSL does not use SASL",
        ),
        (
            {
                "securityProtocol": "SASL_PLAINTEXT",
                "sasl": {"secretRef": {"name": "c"}},
                "tls": {"secretRef": {"name": "t", "caKey": "ca.crt"}},
            },
            "spec.kafka.tls: securityProtocol SASL_PLAINTEXT does not use TLS",
        ),
        (
            {"securityProtocol": "SSL", "tls": {"secretRef": {"name": "t", "keyKey": "k"}}},
            "certKey and keyKey go together",
        ),
        (
            {"securityProtocol": "SSL", "tls": {"secretRef": {"name": "t"}}},
            "name caKey, or certKey and keyKey",
        ),
    ],
)
def test_inconsistent_kafka_security_names_the_field(kafka: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_spec(secured({"bootstrapServers": "k:9093", **kafka}))
