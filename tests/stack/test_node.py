"""The node of `stack/node.sh` runs pods as a cluster's node does.

A pod of the local base image is scheduled on it, becomes Ready, reaches the apiserver through
the `kubernetes` Service with its ServiceAccount token, reaches the host's services through the
node's relays, and answers `kubectl logs`, `exec` and `port-forward`. What a pod sends off the
machine is dropped: checked against a listener in a network namespace this test creates, which
the host reaches and the pod must not.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kube, pytest.mark.node]

NODE_IP = os.environ.get("NODE_IP", "")
KUBECTL = Path(os.environ.get("MOLAM_CACHE_DIR") or Path.home() / ".cache/molam-analytics") / (
    "k8s/bin/kubectl"
)
BASE_IMAGE = "molam-analytics-base:bookworm"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def kubectl(*args: str, stdin: str | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(
        [str(KUBECTL), *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def wait_for(what: str, check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def pod() -> Iterator[tuple[str, str]]:
    """A long-running pod of the base image in a namespace of its own: (namespace, name)."""
    ns = f"node-test-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", ns)
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "probe",
                    "image": BASE_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": [
                        "python3",
                        "-u",
                        "-c",
                        "print('probe up'); import time; time.sleep(3600)",
                    ],
                    "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    try:
        wait_for(
            "the probe pod to be Ready",
            lambda: (
                kubectl(
                    "get",
                    "pod",
                    "probe",
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                )
                == "True"
            ),
            timeout=90,
        )
        yield ns, "probe"
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


def in_pod(pod: tuple[str, str], code: str, timeout: float = 30) -> str:
    ns, name = pod
    return kubectl("exec", "-n", ns, name, "--", "python3", "-c", code, timeout=timeout)


def test_the_node_is_ready_and_schedulable() -> None:
    node = json.loads(kubectl("get", "node", "molam-node", "-o", "json"))
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert not node["spec"].get("taints"), node["spec"].get("taints")
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]


def test_a_pod_runs_and_its_logs_are_readable(pod: tuple[str, str]) -> None:
    ns, name = pod
    assert "probe up" in kubectl("logs", "-n", ns, name)
    ip = kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.podIP}")
    assert ip.startswith("10.251.0."), ip


def test_a_pod_reaches_the_apiserver_through_the_kubernetes_service(pod: tuple[str, str]) -> None:
    # The Service's address is virtual: before any traffic, check that its only endpoint is
    # the stack's own node address, so the request below stays inside the stack's namespaces.
    cluster_ip = kubectl(
        "get", "svc", "kubernetes", "-n", "default", "-o", "jsonpath={.spec.clusterIP}"
    )
    endpoints = kubectl(
        "get",
        "endpoints",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.subsets[*].addresses[*].ip}",
    )
    assert endpoints.split() == [NODE_IP], endpoints
    out = in_pod(
        pod,
        "import os, ssl, urllib.request\n"
        f"ctx = ssl.create_default_context(cafile='{SA_DIR}/ca.crt')\n"
        f"token = open('{SA_DIR}/token').read()\n"
        "host = os.environ['KUBERNETES_SERVICE_HOST']\n"
        "req = urllib.request.Request(f'https://{host}/api', headers={'Authorization': "
        "'Bearer ' + token})\n"
        "print(host, urllib.request.urlopen(req, context=ctx, timeout=10).status)\n",
    )
    assert out.split() == [cluster_ip, "200"]


def test_a_pod_reaches_the_hosts_services_on_the_node_address(pod: tuple[str, str]) -> None:
    ports = [
        int(u.rsplit(":", 1)[1].split("/")[0])
        for u in (
            os.environ["POD_DATABASE_URL"],
            os.environ["POD_REDIS_URL"],
            os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        )
    ]
    # Redis answers PING with +PONG: the relay carries a real conversation, not just a connect.
    out = in_pod(
        pod,
        "import socket\n"
        f"for port in {ports}:\n"
        f"    socket.create_connection(('{NODE_IP}', port), timeout=5).close()\n"
        f"s = socket.create_connection(('{NODE_IP}', {ports[1]}), timeout=5)\n"
        "s.sendall(b'PING\\r\\n'); print(s.recv(16).decode().strip())\n",
    )
    assert out.strip() == "+PONG"


def test_port_forward_reaches_a_pod(pod: tuple[str, str]) -> None:
    ns, name = pod
    in_pod(
        pod,
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-m', 'http.server', '8765', '--bind', '127.0.0.1'],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)\n",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    fwd = subprocess.Popen(
        [str(KUBECTL), "port-forward", "-n", ns, f"pod/{name}", f"{local}:8765"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answered() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=2) as c:
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    return c.recv(12).startswith(b"HTTP/1.0 200")
            except OSError:
                return False

        wait_for("an answer through kubectl port-forward", answered, timeout=30)
    finally:
        fwd.kill()
        fwd.wait(10)


@pytest.fixture
def outside_listener() -> Iterator[tuple[str, int]]:
    """A TCP listener on 10.252.0.2 inside a network namespace of this test, joined to the host
    by a veth pair: an address off the node that only this test owns."""
    tag = uuid.uuid4().hex[:6]
    netns, host_if, ns_if = f"molam-out-{tag}", f"mo{tag}h", f"mo{tag}n"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", netns)
    server = None
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", netns)
        ip("addr", "add", "10.252.0.1/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", netns, "addr", "add", "10.252.0.2/30", "dev", ns_if)
        ip("-n", netns, "link", "set", ns_if, "up")
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "route", "add", "default", "via", "10.252.0.1")
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "python3",
                "-c",
                "import socket\ns = socket.socket(); s.bind(('10.252.0.2', 7777)); s.listen()\n"
                "while True:\n    c, _ = s.accept(); c.sendall(b'hello'); c.close()\n",
            ],
        )

        def host_reaches() -> bool:
            try:
                with socket.create_connection(("10.252.0.2", 7777), timeout=1) as c:
                    return c.recv(5) == b"hello"
            except OSError:
                return False

        wait_for("the listener in the test's network namespace", host_reaches, timeout=10)
        yield "10.252.0.2", 7777
    finally:
        if server:
            server.kill()
            server.wait(5)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def test_a_pod_cannot_send_off_the_node(
    pod: tuple[str, str], outside_listener: tuple[str, int]
) -> None:
    host, port = outside_listener
    out = in_pod(
        pod,
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{host}', {port}), timeout=3).recv(5); print('reached')\n"
        "except OSError as exc:\n"
        "    print('blocked', type(exc).__name__)\n",
    )
    assert out.startswith("blocked"), out
