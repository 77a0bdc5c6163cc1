"""The operator's allow-lists (OPERATOR_IMAGE_ALLOW, OPERATOR_SECRET_ALLOW): the pure checks,
then the operator against the real kube-apiserver refusing a pipeline or a rule with a status
condition while it keeps reconciling the allowed ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers.kube import apply, condition, eventually, kubectl, kubectl_json, running_operator
from kopf.testing import KopfRunner

from molam_operator.allowlist import AllowLists, image_repository
from molam_operator.settings import OperatorSettings
from molam_workloads.core.errors import ConfigError
from molam_workloads.core.settings import load_settings

# ------------------------------------------------------------------------------------ pure


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("molam-analytics", "docker.io/library/molam-analytics"),
        ("molam-analytics:0.1.0", "docker.io/library/molam-analytics"),
        ("bitnami/redis:7", "docker.io/bitnami/redis"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx"),
        ("ghcr.io/molam/analytics:1.2@sha256:" + "a" * 64, "ghcr.io/molam/analytics"),
        ("localhost:5000/molam:dev", "localhost:5000/molam"),
        ("Registry.Example.COM/team/app", "registry.example.com/team/app"),
        ("10.250.0.1:5000/a/b/c", "10.250.0.1:5000/a/b/c"),
    ],
)
def test_image_repository_is_fully_qualified(image: str, repository: str) -> None:
    assert image_repository(image) == repository


@pytest.mark.parametrize(
    "image",
    ["", "ghcr.io/", "ghcr.io/Molam/app", "ghcr.io/a/../b", "app:bad tag", "app@sha256:abc",
     "ghcr.io/a//b", "ghcr.io/a:b:c"],
)  # fmt: skip
def test_not_a_reference(image: str) -> None:
    assert image_repository(image) is None


def test_empty_lists_allow_everything() -> None:
    allow = AllowLists.parse("", " , ")
    assert allow.refusal("whatever/image:1", ["any-secret"]) is None
    assert allow.image_allowed("not a reference")  # no list: not ours to judge


def test_image_prefixes_end_at_a_path_boundary() -> None:
    allow = AllowLists.parse("ghcr.io/molam, registry.local:5000/", "")
    assert allow.images == ("ghcr.io/molam", "registry.local:5000")
    for ok in ("ghcr.io/molam/analytics:1", "ghcr.io/molam", "registry.local:5000/x/y@sha256:"
               + "0" * 64):  # fmt: skip
        assert allow.image_allowed(ok), ok
    for bad in (
        "ghcr.io/molam-evil/analytics",  # a longer name, not a sub-path
        "ghcr.io/molamx",
        "ghcr.io.evil.com/molam/analytics",
        "registry.local:5001/x",
        "molam-analytics:0.1.0",  # Docker Hub
        "ghcr.io/molam/../evil",  # not a reference at all
    ):
        assert not allow.image_allowed(bad), bad
    refusal = allow.refusal("docker.io/evil/miner", [])
    assert refusal is not None and refusal.reason == "ImageNotAllowed"
    assert "docker.io/evil/miner" in refusal.message and "ghcr.io/molam" in refusal.message


def test_docker_hub_entries_are_normalised() -> None:
    allow = AllowLists.parse("index.docker.io/library/molam-analytics", "")
    assert allow.image_allowed("molam-analytics:0.1.0")
    assert not allow.image_allowed("molam-analytics-other")


def test_secret_names_and_patterns() -> None:
    allow = AllowLists.parse("", "analytics-*,kafka-credentials")
    assert allow.secret_allowed("analytics-db") and allow.secret_allowed("kafka-credentials")
    assert not allow.secret_allowed("kafka-credentials-2")
    assert not allow.secret_allowed("default-token-abcde")
    refusal = allow.refusal("img", ["analytics-db", "payments-db", "bank-keys", "payments-db"])
    assert refusal is not None and refusal.reason == "SecretNotAllowed"
    assert "bank-keys, payments-db" in refusal.message  # each once, sorted


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPERATOR_IMAGE_ALLOW", "molam-analytics"),  # no registry: would never match
        ("OPERATOR_IMAGE_ALLOW", "ghcr.io/Molam"),
        ("OPERATOR_SECRET_ALLOW", "Analytics_DB"),
        ("OPERATOR_SECRET_ALLOW", "a/b"),
    ],
)
def test_malformed_settings_stop_the_operator_with_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as exc:
        load_settings(OperatorSettings)
    assert variable in str(exc.value) and value in str(exc.value)


# --------------------------------------------------------------------------------- cluster

ALLOWED_REGISTRY = "registry.molam.test/analytics"


def _secret(namespace: str, name: str, key: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {key: value},
    }


def _pipeline(namespace: str, name: str, image: str, database: str) -> dict[str, Any]:
    return {
        "apiVersion": "analytics.molam.io/v1",
        "kind": "AnalyticsPipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": image,
            "kafka": {"bootstrapServers": "127.0.0.1:1"},
            "database": {"secretRef": {"name": database}},
            "redis": {"secretRef": {"name": "analytics-redis"}},
            "consumer": {"pollSeconds": 60},
        },
    }


def _exists(namespace: str, kind: str, name: str) -> bool:
    return kubectl_json("get", kind, name, "-n", namespace) is not None


@pytest.fixture
def guarded_operator(
    namespace: str, operator_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KopfRunner]:
    monkeypatch.setenv("OPERATOR_IMAGE_ALLOW", ALLOWED_REGISTRY)
    monkeypatch.setenv("OPERATOR_SECRET_ALLOW", "analytics-*")
    with running_operator(namespace) as runner:
        yield runner


@pytest.mark.kube
async def test_refused_pipelines_and_rules_get_a_condition_and_nothing_else(
    guarded_operator: KopfRunner, namespace: str, database_url: str, redis_url: str
) -> None:
    apply(
        [
            _secret(namespace, "analytics-db", "url", database_url),
            _secret(namespace, "analytics-redis", "url", redis_url),
            _secret(namespace, "bank-db", "url", database_url),  # exists, but not to be read
            _secret(namespace, "hook-keys", "ops", "0123456789abcdef-hook-key"),
        ]
    )
    apply(
        [
            _pipeline(namespace, "hub", "molam-analytics:test", "analytics-db"),
            _pipeline(namespace, "bank", f"{ALLOWED_REGISTRY}/molam:1", "bank-db"),
            _pipeline(namespace, "good", f"{ALLOWED_REGISTRY}/molam:1", "analytics-db"),
        ]
    )
    # The allowed pipeline is reconciled beside the refused ones: the operator keeps working.
    await eventually("good's children", lambda: _exists(namespace, "deployment", "good-api"))
    hub = await eventually(
        "hub refused",
        lambda: (
            condition(namespace, "ap", "hub", "Ready").get("reason") == "ImageNotAllowed"
            and condition(namespace, "ap", "hub", "Ready")
        ),
    )
    assert hub["status"] == "False"
    assert "molam-analytics:test" in hub["message"] and ALLOWED_REGISTRY in hub["message"]
    bank = await eventually(
        "bank refused",
        lambda: (
            condition(namespace, "ap", "bank", "Ready").get("reason") == "SecretNotAllowed"
            and condition(namespace, "ap", "bank", "Ready")
        ),
    )
    assert "bank-db" in bank["message"] and "analytics-redis" not in bank["message"]
    phase = kubectl_json("get", "ap", "hub", "-n", namespace)["status"]["phase"]
    assert phase == "Degraded"
    for refused in ("hub", "bank"):
        for child in ("deployment/{}-api", "configmap/{}-config", "service/{}-api"):
            kind, name = child.format(refused).split("/")
            assert not _exists(namespace, kind, name), (kind, name)

    # A rule whose webhook key is in a Secret outside the list: Synced=False, no row, no read.
    apply(
        {
            "apiVersion": "analytics.molam.io/v1",
            "kind": "AlertRule",
            "metadata": {
                "name": "signed",
                "namespace": namespace,
                "labels": {"analytics.molam.io/pipeline": "good"},
            },
            "spec": {
                "metric": "tx_count",
                "comparison": "lt",
                "threshold": 1,
                "windowMinutes": 5,
                "notify": {
                    "webhooks": [
                        {
                            "url": "https://hooks.example/ops",
                            "secretRef": {"name": "hook-keys", "key": "ops"},
                        }
                    ]
                },
            },
        }
    )
    synced = await eventually(
        "rule refused",
        lambda: (
            condition(namespace, "ar", "signed", "Synced").get("reason") == "SecretNotAllowed"
            and condition(namespace, "ar", "signed", "Synced")
        ),
    )
    assert synced["status"] == "False" and "hook-keys" in synced["message"]

    # Fixing the spec applies it.
    kubectl("patch", "ap", "hub", "-n", namespace, "--type=merge",
            "-p", f'{{"spec": {{"image": "{ALLOWED_REGISTRY}/molam:2"}}}}')  # fmt: skip
    await eventually("hub's children", lambda: _exists(namespace, "deployment", "hub-api"))
    dep = kubectl_json("get", "deployment", "hub-api", "-n", namespace)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"{ALLOWED_REGISTRY}/molam:2"
    )
