"""The chart's quick install gives every workload the settings it cannot start without.

The chart renders the operator and an AnalyticsPipeline; the operator's pure builders turn that
pipeline into the workloads' Deployments and CronJob. Each container's environment is resolved
the way the kubelet would (env, envFrom ConfigMaps and Secrets, secretKeyRef), from what the
chart and the operator create and nothing else, and checked against the pydantic-settings class
its command loads: every field without a default must be there, and the class must validate.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from molam_operator.manifests import build_children
from molam_operator.settings import OperatorSettings
from molam_operator.spec import parse_spec
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.api.settings import ApiSettings
from molam_workloads.core.settings import DatabaseSettings, load_settings
from molam_workloads.ingest.settings import IngestSettings

from .conftest import CHART, Renderer, find, kubectl, kubectl_json, run_helm, values_file

# The chart README's quick install: nothing but the pipeline, its Secrets and their URLs.
QUICK_INSTALL: dict[str, Any] = {
    "pipeline": {
        "create": True,
        "secrets": {
            "create": True,
            "databaseUrl": "postgresql://analytics:secret@postgres:5432/analytics",
            "redisUrl": "redis://redis:6379/0",
        },
    },
}

# The settings class each command of the image loads (its first argument).
SETTINGS: dict[str, type[BaseSettings]] = {
    "api": ApiSettings,
    "consume": IngestSettings,
    "alerts": AlertsSettings,
    "refresh-views": DatabaseSettings,
    "migrate": DatabaseSettings,
    "operator": OperatorSettings,
}


def env_name(name: str, field: Any) -> str:
    alias = field.validation_alias or field.alias
    return str(alias or name).upper()


def required_env(cls: type[BaseSettings]) -> set[str]:
    """The variables ``cls`` refuses to start without: its fields with no default."""
    return {env_name(n, f) for n, f in cls.model_fields.items() if f.is_required()}


def every_env(cls: type[BaseSettings]) -> set[str]:
    return {env_name(n, f) for n, f in cls.model_fields.items()}


def pod_templates(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objs:
        spec = obj.get("spec") or {}
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], spec["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield obj["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]


class Objects:
    """The ConfigMaps and Secrets a container may read, by name."""

    def __init__(self, objs: list[dict[str, Any]]) -> None:
        self.maps = {
            o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"
        }
        self.secrets: dict[str, dict[str, str]] = {}
        for o in objs:
            if o["kind"] == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
                self.secrets[o["metadata"]["name"]] = {**data, **(o.get("stringData") or {})}

    def resolve(self, container: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
        """The container's environment, and what it refers to that does not exist."""
        env: dict[str, str] = {}
        missing: list[str] = []
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                found = self.maps.get(name)
            else:
                name = source["secretRef"]["name"]
                found = self.secrets.get(name)
            if found is None:
                if not (source.get("configMapRef") or source.get("secretRef") or {}).get(
                    "optional"
                ):
                    missing.append(f"envFrom {name}")
                continue
            env.update({source.get("prefix", "") + k: str(v) for k, v in found.items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
                continue
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                env[var["name"]] = f"<{ref['fieldRef']['fieldPath']}>"
                continue
            kind, table = (
                ("secretKeyRef", self.secrets)
                if "secretKeyRef" in ref
                else ("configMapKeyRef", self.maps)
            )
            key_ref = ref[kind]
            value = (table.get(key_ref["name"]) or {}).get(key_ref["key"])
            if value is None:
                missing.append(f"{var['name']} from {kind} {key_ref['name']}/{key_ref['key']}")
            else:
                env[var["name"]] = value
        return env, missing


def workloads_of(render: Renderer, values: dict[str, Any]) -> tuple[list[Any], Objects]:
    """What runs after the quick install: the chart's objects plus the operator's children."""
    chart = render(values)
    pipeline = find(chart, "AnalyticsPipeline")
    children = build_children(
        pipeline["metadata"]["name"],
        parse_spec(pipeline["spec"]),
        cron_job_api_version="batch/v1beta1",
    )
    return chart + children, Objects(chart + children)


def test_the_quick_install_gives_every_workload_its_required_settings(
    render: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs, sources = workloads_of(render, QUICK_INSTALL)
    all_names = set().union(*(every_env(cls) for cls in SETTINGS.values()))
    seen: set[str] = set()
    for owner, pod in pod_templates(objs):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            command = container["args"][0]
            where = f"{owner}/{container['name']} ({command})"
            assert command in SETTINGS, f"{where}: which settings class does it load?"
            cls = SETTINGS[command]
            env, missing = sources.resolve(container)
            assert not missing, f"{where} refers to what the chart does not create: {missing}"
            absent = required_env(cls) - env.keys()
            assert not absent, f"{where} lacks required settings of {cls.__name__}: {absent}"
            # Nothing else of this process's environment leaks into the check.
            for name in all_names:
                monkeypatch.delenv(name, raising=False)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            load_settings(cls)  # raises ConfigError naming the variable that is wrong
            seen.add(command)
    assert seen == set(SETTINGS), f"no container runs {set(SETTINGS) - seen}"
    # The check is not empty: the API needs a signing key, and the quick install has one.
    assert "ANALYTICS_JWT_SECRET" in required_env(ApiSettings)


def test_the_generated_jwt_secret_is_long_and_a_given_one_is_kept(render: Renderer) -> None:
    objs = render(QUICK_INSTALL)
    spec = find(objs, "AnalyticsPipeline")["spec"]
    ref = spec["jwtSecret"]["secretRef"]
    generated = find(objs, "Secret", ref["name"])["stringData"][ref["key"]]
    assert len(generated) == 64 and generated.isalnum()
    # Each fresh render (no cluster to look the old value up in) draws a new key.
    again = find(render(QUICK_INSTALL), "Secret", ref["name"])["stringData"][ref["key"]]
    assert again != generated
    chosen = "k" * 40
    values = {"pipeline": {**QUICK_INSTALL["pipeline"], "secrets": {
        **QUICK_INSTALL["pipeline"]["secrets"], "jwtSecret": chosen}}}  # fmt: skip
    assert find(render(values), "Secret", ref["name"])["stringData"][ref["key"]] == chosen
    values["pipeline"]["secrets"]["jwtSecret"] = "short"
    proc = render.text(values, check=False)
    assert proc.returncode != 0 and "at least 32 characters" in proc.stderr


@pytest.mark.kube
def test_upgrades_keep_the_generated_jwt_secret(
    helm_home: Any, namespace: str, kubeconfig: str, crds_installed: None, tmp_path: Any
) -> None:
    """``lookup`` reads the key an install generated back on upgrade: tokens stay valid."""
    release = f"jwt{uuid.uuid4().hex[:6]}"
    args = ["--namespace", namespace, "--kubeconfig", kubeconfig, "--skip-crds"]
    values = str(values_file(tmp_path, QUICK_INSTALL))

    def key() -> str:
        secret = kubectl_json("get", "secret", "analytics-jwt", "-n", namespace)
        return base64.b64decode(secret["data"]["secret"]).decode()

    try:
        run_helm(helm_home, "install", release, str(CHART), *args, "-f", values, timeout=120)
        first = key()
        assert len(first) == 64
        run_helm(helm_home, "upgrade", release, str(CHART), *args, "-f", values, timeout=120)
        assert key() == first
    finally:
        # No hooks: the pre-delete Job needs a running operator and pods, and none run here.
        run_helm(helm_home, "uninstall", release, *args[:4], "--no-hooks", check=False)
        kubectl(
            "delete", "clusterrole,clusterrolebinding", "-l",
            f"app.kubernetes.io/instance={release}", "--wait=false", check=False,
        )  # fmt: skip
