"""Checks that the local control plane from `stack/kube.sh up` is a usable Kubernetes.

Needs KUBECONFIG (as printed by `stack/kube.sh up STATE_DIR`) and kubectl in the cache bin dir
(`stack/kube.sh tools`); `make test` provides both.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.kube

CACHE_DIR = Path(os.environ.get("MOLAM_CACHE_DIR") or Path.home() / ".cache" / "molam-analytics")
KUBECTL = CACHE_DIR / "k8s" / "bin" / "kubectl"
SUFFIX = uuid.uuid4().hex[:8]


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 60):
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} missing: run `stack/kube.sh tools`")
    proc = subprocess.run(
        [str(KUBECTL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def kubectl_json(*args: str):
    return json.loads(kubectl(*args, "-o", "json").stdout)


def wait_until(what: str, cond: Callable[[], object], timeout: float = 60, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def ns():
    name = f"stack-test-{SUFFIX}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(name: str, selector: str = "", replicas: int = 1) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {selector or name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: main
        image: registry.invalid/molam/noop:1
"""


def test_apiserver_answers():
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = kubectl_json("version")["serverVersion"]
    assert version["gitVersion"].startswith("v1."), version
    # the admin user of the kubeconfig is cluster-admin (system:masters)
    assert kubectl("auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"


def test_deployment_gets_replicaset_and_pods(ns):
    kubectl("apply", "-n", ns, "-f", "-", stdin=deployment("web"))

    def owned_rs():
        for rs in kubectl_json("get", "replicasets", "-n", ns)["items"]:
            for ref in rs["metadata"].get("ownerReferences", []):
                if ref["kind"] == "Deployment" and ref["name"] == "web":
                    return rs
        return None

    rs = wait_until("a ReplicaSet owned by Deployment web", owned_rs)
    rs_name = rs["metadata"]["name"]

    def owned_pod():
        for pod in kubectl_json("get", "pods", "-n", ns)["items"]:
            refs = pod["metadata"].get("ownerReferences", [])
            if any(r["kind"] == "ReplicaSet" and r["name"] == rs_name for r in refs):
                return pod
        return None

    pod = wait_until("a Pod owned by the ReplicaSet", owned_pod)
    # no scheduler and no kubelet: the Pod exists but never runs
    assert pod["status"]["phase"] == "Pending"

    kubectl("scale", "-n", ns, "deployment/web", "--replicas=3")
    wait_until(
        "the ReplicaSet to be scaled to 3",
        lambda: kubectl_json("get", "rs", rs_name, "-n", ns)["spec"]["replicas"] == 3,
    )


def test_owner_reference_garbage_collection(ns):
    kubectl("create", "configmap", "parent", "-n", ns, "--from-literal=k=v")
    uid = kubectl_json("get", "configmap", "parent", "-n", ns)["metadata"]["uid"]
    child = f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: parent
    uid: {uid}
data: {{k: v}}
"""
    kubectl("apply", "-n", ns, "-f", "-", stdin=child)
    kubectl("delete", "configmap", "parent", "-n", ns)

    def child_gone():
        got = kubectl("get", "configmap", "child", "-n", ns, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    wait_until("the garbage collector to delete the child ConfigMap", child_gone)


def test_server_side_dry_run(ns):
    out = kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", stdin=deployment("dry"))
    assert "server dry run" in out.stdout
    got = kubectl("get", "deployment", "dry", "-n", ns, check=False)
    assert got.returncode != 0 and "NotFound" in got.stderr, "a dry run must not create the object"

    # the server itself validates: selector that does not match the template labels
    bad = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=false",
        "-n",
        ns,
        "-f",
        "-",
        stdin=deployment("bad", selector="other"),
        check=False,
    )
    assert bad.returncode != 0
    assert "selector" in bad.stderr and "does not match template" in bad.stderr, bad.stderr


def test_cronjob_batch_v1beta1_is_served(ns):
    assert "batch/v1beta1" in kubectl("api-versions").stdout.split()
    cronjob = """
apiVersion: batch/v1beta1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: registry.invalid/molam/noop:1
"""
    kubectl("apply", "-n", ns, "-f", "-", stdin=cronjob)
    got = kubectl_json("get", "cronjobs.v1beta1.batch", "nightly", "-n", ns)
    assert got["apiVersion"] == "batch/v1beta1"
    assert got["spec"]["schedule"] == "0 3 * * *"


def test_custom_resource_definition_v1():
    group = f"stack{SUFFIX}.molam.test"
    crd = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer, minimum: 1}}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""
    kubectl("apply", "-f", "-", stdin=crd)
    try:
        kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")
        widget = (
            f"apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w1}}\nspec: {{size: %s}}\n"
        )
        kubectl("apply", "-n", "default", "-f", "-", stdin=widget % 2)
        assert kubectl_json("get", f"widgets.{group}", "w1", "-n", "default")["spec"]["size"] == 2
        # structural schema is enforced by the server
        bad = kubectl("apply", "-n", "default", "-f", "-", stdin=widget % 0, check=False)
        assert bad.returncode != 0 and "spec.size" in bad.stderr, bad.stderr
    finally:
        kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)
