"""Helpers for the cluster tests: the chart installed with helm on the stack's node, real pods.

``make test`` starts the stack (``make stack``): the control plane, the node ``molam-node``
(kubelet on Docker), PostgreSQL, Redis and the broker, each reachable from pods through the
addresses in ``.stack/env``. Where ``make stack`` should have made a node (root on Linux, and
``STACK_NODE`` not 0), a missing node is a failure, never a skip.

On a failed test, the pods of the release's namespace, their status and the last lines of their
logs are added to the report (``pytest_runtest_makereport`` below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "molam-analytics"
CACHE_BIN = (
    Path(os.environ.get("MOLAM_CACHE_DIR") or Path.home() / ".cache" / "molam-analytics")
    / "k8s"
    / "bin"
)
IMAGE_REPOSITORY = "molam-analytics"
LOG_LINES = 25
T = TypeVar("T")


def tool(name: str) -> str:
    """kubectl, helm or docker: from PATH (``.stack/env`` puts them there), else the cache."""
    found = shutil.which(name) or (str(CACHE_BIN / name) if (CACHE_BIN / name).exists() else None)
    if name == "docker" and os.access("/usr/bin/docker", os.X_OK):
        found = "/usr/bin/docker"  # Debian's CLI, which speaks the daemon's API version
    if not found:
        pytest.fail(f"{name} not found: run the tests with `make test` (it runs `make stack`)")
    return found


def run(
    *argv: str,
    check: bool = True,
    timeout: float = 60,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout} s")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def kubectl(
    *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run(tool("kubectl"), *args, check=check, timeout=timeout)


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def wait_for(
    what: str,
    condition: Callable[[], T],
    *,
    timeout: float,
    every: float = 0.5,
) -> T:
    """``condition()`` until it is truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(every)
        last = condition()
    return last


def pod_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def restarts(pod: dict[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount", 0)) for s in statuses)


def require_node() -> str:
    """The node's name; a failure where ``make stack`` should have started one."""
    # Where no node can run, tests/conftest.py has skipped the cluster tests before this.
    if not os.environ.get("NODE_IP") or not os.environ.get("KUBECONFIG"):
        pytest.fail(
            "NODE_IP/KUBECONFIG not set: `make stack` should have started a node on this "
            "machine (root, Linux); run the tests with `make test`"
        )
    nodes = kubectl_json("get", "nodes")["items"]
    ready = [
        n["metadata"]["name"]
        for n in nodes
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    ]
    if not ready:
        pytest.fail(f"no Ready node (nodes: {[n['metadata']['name'] for n in nodes]})")
    return ready[0]


class Helm:
    """The helm CLI with HOME in a scratch folder (it never reads the user's helm config)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        env = {**os.environ, "HOME": str(self.home)}
        return run(tool("helm"), *args, check=check, timeout=timeout, env=env).stdout


class Release:
    """One helm release of the chart in a namespace of its own, and what the tests read of it."""

    def __init__(self, helm: Helm, name: str, namespace: str, values: dict[str, Any]) -> None:
        self.helm = helm
        self.name = name
        self.namespace = namespace
        self.values = values
        self.values_file = helm.home / f"{name}-values.yaml"
        self.installed = False

    # -------------------------------------------------------------------------- helm

    def write_values(self) -> None:
        self.values_file.write_text(yaml.safe_dump(self.values))

    def install(self) -> None:
        self.write_values()
        self.helm("install", self.name, str(CHART), "-n", self.namespace, "--create-namespace",
                  "-f", str(self.values_file))  # fmt: skip
        self.installed = True

    def upgrade(self) -> None:
        self.write_values()
        self.helm("upgrade", self.name, str(CHART), "-n", self.namespace,
                  "-f", str(self.values_file))  # fmt: skip

    def uninstall(self, timeout: float = 300) -> None:
        self.helm("uninstall", self.name, "-n", self.namespace, f"--timeout={int(timeout)}s",
                  timeout=timeout + 30)  # fmt: skip
        self.installed = False

    # ------------------------------------------------------------------------ reading

    def get(self, *args: str) -> Any:
        return kubectl_json("get", *args, "-n", self.namespace)

    def pods(self, component: str | None = None) -> list[dict[str, Any]]:
        selector = [f"-l=app.kubernetes.io/component={component}"] if component else []
        items: list[dict[str, Any]] = self.get("pods", *selector)["items"]
        return items

    def live_pods(self, component: str | None = None) -> list[dict[str, Any]]:
        """Pods not being deleted and not finished (a Job's completed pods are not)."""
        return [
            p
            for p in self.pods(component)
            if not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def pipeline(self) -> dict[str, Any]:
        name = self.values["pipeline"]["name"]
        result: dict[str, Any] = self.get("analyticspipeline", name)
        return result

    def set_pipeline(self, spec: dict[str, Any]) -> None:
        """Change the pipeline as a user of the chart does: its values, then ``helm upgrade``
        (helm 4 applies server-side: a field changed with kubectl would conflict)."""

        def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
            for k, v in new.items():
                if isinstance(v, dict) and isinstance(into.get(k), dict):
                    merge(into[k], v)
                else:
                    into[k] = v

        merge(self.values["pipeline"], spec)
        self.upgrade()

    def deployment(self, component: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(
            "deployment", f"{self.values['pipeline']['name']}-{component}"
        )
        return result

    def all_ready(self) -> list[str]:
        """Every live pod Ready and every Deployment complete: [] then, else what is not."""
        problems = []
        for dep in self.get("deployments")["items"]:
            want = dep["spec"].get("replicas", 1)
            status = dep.get("status", {})
            if (
                status.get("readyReplicas", 0) != want
                or status.get("updatedReplicas", 0) != want
                or status.get("replicas", 0) != want
            ):
                problems.append(f"deployment {dep['metadata']['name']}: {status}")
        for pod in self.live_pods():
            if not pod_ready(pod):
                problems.append(f"pod {pod['metadata']['name']} not Ready")
        return problems

    def wait_all_ready(self, timeout: float) -> None:
        wait_for("every pod Ready", lambda: not self.all_ready(), timeout=timeout, every=1)

    def diagnostics(self) -> str:
        out = [kubectl("get", "ap,deploy,rs,pods,jobs,cronjobs", "-n", self.namespace, "-o",
                       "wide", check=False).stdout]  # fmt: skip
        for pod in self.pods():
            name = pod["metadata"]["name"]
            status = pod.get("status", {})
            states = [
                f"{s['name']}: ready={s.get('ready')} restarts={s.get('restartCount')} "
                f"state={json.dumps(s.get('state'))} last={json.dumps(s.get('lastState'))}"
                for s in status.get("initContainerStatuses", [])
                + status.get("containerStatuses", [])
            ]
            out.append(f"--- pod {name} phase={status.get('phase')}\n" + "\n".join(states))
            logs = kubectl("logs", name, "-n", self.namespace, "--all-containers",
                           f"--tail={LOG_LINES}", check=False, timeout=20)  # fmt: skip
            out.append(logs.stdout or logs.stderr)
        events = kubectl("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp",
                         check=False).stdout  # fmt: skip
        out.append("--- events (last 30)\n" + "\n".join(events.splitlines()[-30:]))
        return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    release = getattr(item, "funcargs", {}).get("release")
    if report.failed and isinstance(release, Release):
        try:
            report.sections.append(("cluster: pods, logs, events", release.diagnostics()))
        except BaseException as exc:  # never hide the failure itself
            report.sections.append(("cluster", f"diagnostics failed: {exc!r}"))


@pytest.fixture(scope="module")
def node() -> str:
    return require_node()


class Images:
    """Tags of the image under test; removed (the tags only) when the module ends."""

    def __init__(self) -> None:
        self.tags: list[str] = []

    def tag(self, source: str, tag: str) -> str:
        run(tool("docker"), "tag", f"{IMAGE_REPOSITORY}:{source}", f"{IMAGE_REPOSITORY}:{tag}")
        self.tags.append(tag)
        return tag


@pytest.fixture(scope="module")
def images(node: str) -> Iterator[Images]:
    """The image under test, built by ``make image`` and tagged for this module alone, so a
    rebuild of ``:dev`` by someone else during the run does not change it."""
    proc = run("make", "--no-print-directory", "-C", str(ROOT), "image", check=False, timeout=1500)
    if proc.returncode != 0:
        pytest.fail("make image failed:\n" + "\n".join(proc.stderr.splitlines()[-30:]))
    tags = Images()
    yield tags
    for tag in tags.tags:
        run(tool("docker"), "rmi", "--no-prune", f"{IMAGE_REPOSITORY}:{tag}", check=False)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def crds(node: str) -> None:
    """The chart's CRDs, applied as its README says (helm installs them only once)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    for crd in ("analyticspipelines.analytics.molam.io", "alertrules.analytics.molam.io"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
