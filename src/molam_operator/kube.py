"""A small asyncio Kubernetes client for the operator's own calls (children, status, Secrets).

Why not the ``kubernetes`` client's API classes: they are synchronous (each call would need a
thread) and return generated models, while our builders produce plain dicts. Kopf already brings
aiohttp, so requests go through one aiohttp session; the ``kubernetes`` package is used only for
what it is best at — reading a kubeconfig or the in-cluster service account (and refreshing
expiring tokens). Every call is a plain REST request on a path built by :func:`path`.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
_CORE_KINDS = {"ConfigMap": "configmaps", "Service": "services", "Secret": "secrets"}
_PLURALS = {
    **_CORE_KINDS,
    "Deployment": "deployments",
    "CronJob": "cronjobs",
    "AnalyticsPipeline": "analyticspipelines",
    "AlertRule": "alertrules",
    "Event": "events",
    "Namespace": "namespaces",
}


class KubeError(Exception):
    """A non-2xx answer; ``status`` is the HTTP status, ``reason`` Kubernetes' Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def path(
    api_version: str,
    kind_or_plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """REST path of a collection or object: ``path("apps/v1", "Deployment", "ns", "x")``."""
    plural = _PLURALS.get(kind_or_plural, kind_or_plural)
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [root]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def object_path(obj: Mapping[str, Any], *, collection: bool = False) -> str:
    meta = obj["metadata"]
    return path(
        obj["apiVersion"],
        obj["kind"],
        meta.get("namespace"),
        None if collection else meta["name"],
    )


def bearer(token: str) -> str:
    """The Authorization header for a token the ``kubernetes`` loaders stored.

    The kubeconfig loader stores ``Bearer <token>``, the in-cluster one ``bearer <token>``, a
    hand-made configuration the bare token: the scheme is case-insensitive (RFC 7235), so any
    spelling of it is replaced by one ``Bearer``, never doubled.
    """
    scheme, _, credentials = token.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return f"Bearer {credentials.strip()}"
    return f"Bearer {token.strip()}"


class Kube:
    """One aiohttp session to the API server; create with :meth:`connect`, end with ``close``."""

    def __init__(self, configuration: k8s_client.Configuration) -> None:
        self._cfg = configuration
        ctx: ssl.SSLContext | bool
        if configuration.verify_ssl:
            ctx = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            ctx.load_cert_chain(configuration.cert_file, configuration.key_file)
        self._host = configuration.host.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=64),
            timeout=aiohttp.ClientTimeout(total=30, connect=10),
        )

    @classmethod
    def connect(cls) -> Kube:
        """From the in-cluster service account if there is one, else from KUBECONFIG."""
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls(cfg)

    async def close(self) -> None:
        await self._session.close()

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = bearer(token)
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        url_path: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        if data is not None and content_type is None:
            content_type = "application/json"
        try:
            async with self._session.request(
                method,
                self._host + url_path,
                data=data,
                params=params,
                headers=self._headers(content_type),
            ) as resp:
                text = await resp.text()
                status_code, http_reason = resp.status, resp.reason
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(503, "Unavailable", f"{method} {url_path}: {exc!r}") from None
        if status_code >= 400:
            try:
                status = json.loads(text)
            except ValueError:
                status = {}
            raise KubeError(
                status_code,
                str(status.get("reason", http_reason or "")),
                str(status.get("message", text[:500])),
            )
        return json.loads(text) if text else {}

    async def get(self, url_path: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return await self.request("GET", url_path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, url_path: str, *, label_selector: str | None = None) -> list[Any]:
        params = {"labelSelector": label_selector} if label_selector else None
        items: list[Any] = (await self.request("GET", url_path, params=params)).get("items", [])
        return items

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", object_path(obj, collection=True), body=obj)

    async def patch(
        self, url_path: str, patch: Mapping[str, Any], *, content_type: str = MERGE
    ) -> dict[str, Any]:
        return await self.request("PATCH", url_path, body=patch, content_type=content_type)

    async def delete(self, url_path: str) -> bool:
        """True if deleted, False if it was already gone (a 404 is success)."""
        try:
            await self.request("DELETE", url_path, body={"propagationPolicy": "Background"})
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def serves(self, api_version: str, plural: str) -> bool:
        """Whether the cluster serves ``plural`` in ``api_version`` (API discovery)."""
        try:
            doc = await self.request("GET", path(api_version, "").rstrip("/"))
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in doc.get("resources", []))
