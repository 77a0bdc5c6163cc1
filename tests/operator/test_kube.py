"""The operator's own API client authenticates the way it must in a pod.

In a pod, ``kubernetes.config.load_incluster_config`` reads the ServiceAccount token and CA from
/var/run/secrets/kubernetes.io/serviceaccount and the address from KUBERNETES_SERVICE_HOST/PORT,
and stores the key as ``bearer <token>`` (lower case). Here the same loader class is pointed at a
temporary token file (a real ServiceAccount token from the TokenRequest API) and the local
apiserver's CA and address, and the client must get 200 from a call only that account may make.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from helpers.kube import apply, kubectl
from kubernetes import client as k8s_client
from kubernetes.config.incluster_config import InClusterConfigLoader

from molam_operator.kube import Kube, KubeError, bearer, path


@pytest.mark.parametrize(
    "stored",
    ["bearer abc.def", "Bearer abc.def", "BEARER abc.def", "abc.def", " bearer  abc.def "],
)
def test_every_spelling_of_the_scheme_gives_one_bearer(stored: str) -> None:
    assert bearer(stored) == "Bearer abc.def"


def _cluster() -> tuple[str, str, bytes]:
    """Host, port and CA certificate of the apiserver the current KUBECONFIG context names."""
    view = json.loads(kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
    cluster = view["clusters"][0]["cluster"]
    url = urlparse(cluster["server"])
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    assert url.hostname and url.port, cluster["server"]
    return url.hostname, str(url.port), ca


def _service_account_token(namespace: str, name: str) -> str:
    """A token of ServiceAccount ``name`` from the TokenRequest API (10 minutes)."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600},
    }
    out = kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        "-f", "-", stdin=json.dumps(request),
    ).stdout  # fmt: skip
    token: str = json.loads(out)["status"]["token"]
    return token


def in_cluster_configuration(tmp: Path, token: str) -> k8s_client.Configuration:
    """What ``load_incluster_config`` builds in a pod, from files laid out as in a pod."""
    host, port, ca = _cluster()
    (tmp / "token").write_text(token)
    (tmp / "ca.crt").write_bytes(ca)
    cfg = k8s_client.Configuration()
    InClusterConfigLoader(
        token_filename=str(tmp / "token"),
        cert_filename=str(tmp / "ca.crt"),
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    ).load_and_set(cfg)  # type: ignore[no-untyped-call]
    return cfg


def _can_list_configmaps(namespace: str, account: str) -> list[dict[str, Any]]:
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": account, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": account, "namespace": namespace}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": account, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
    ]  # fmt: skip


@pytest.mark.kube
async def test_the_in_cluster_service_account_token_authenticates(
    namespace: str, tmp_path: Path
) -> None:
    apply(_can_list_configmaps(namespace, "molam-operator"))
    token = _service_account_token(namespace, "molam-operator")
    cfg = in_cluster_configuration(tmp_path, token)
    # The in-cluster loader's spelling, which the operator once sent as "Bearer bearer <token>".
    assert cfg.api_key["BearerToken"] == f"bearer {token}"

    kube = Kube(cfg)
    try:
        # 200: authenticated as the ServiceAccount, which its Role lets list ConfigMaps...
        items = await kube.list(path("v1", "ConfigMap", namespace))
        assert isinstance(items, list)
        # ... and nothing more: the answer came from that identity, not from an admin's.
        with pytest.raises(KubeError) as denied:
            await kube.list(path("v1", "Secret", namespace))
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:molam-operator" in denied.value.message
    finally:
        await kube.close()

    # The same loader with a token the apiserver does not know: 401 (the check can fail).
    forged = Kube(in_cluster_configuration(tmp_path, token[:-4] + "AAAA"))
    try:
        with pytest.raises(KubeError) as unauthorized:
            await forged.list(path("v1", "ConfigMap", namespace))
        assert unauthorized.value.status == 401
    finally:
        await forged.close()


@pytest.mark.kube
async def test_the_kubeconfig_token_authenticates(namespace: str) -> None:
    """KUBECONFIG (make run, the tests) stores ``Bearer <token>``: still sent once."""
    kube = Kube.connect()
    try:
        assert await kube.get(path("v1", "Namespace", name=namespace)) is not None
    finally:
        await kube.close()
