"""Where notifications may go: the ``ALERT_WEBHOOK_ALLOW`` policy, enforced at connect time.

A rule's destinations are written by API users and custom-resource authors, so a webhook URL
is a request forgery vector into the cluster (metadata endpoints, the database, the API's
internal ports). As Mimir's receivers firewall does, the check runs on the *resolved*
addresses, inside the HTTP client's connect step, and the connection is made to the address
that was checked: a name that resolves to a public address when validated and to 127.0.0.1
when used (DNS rebinding) is still refused.

Policy (``ALERT_WEBHOOK_ALLOW``, comma-separated; default ``public``):

- ``public``: any globally routable address;
- an IP address or CIDR (``10.20.0.0/16``, ``127.0.0.1``): addresses inside it;
- a host name (``alertmanager.monitoring.svc``): that name, whatever it resolves to.

Everything else — loopback, link-local (cloud metadata at 169.254.169.254), private
(RFC 1918, IPv6 ULA), shared/CGNAT, multicast, reserved and unspecified addresses, which is
where cluster-internal Services and pods live — is refused. The hosts of ``ALERTMANAGER_URLS``
come from the deployment's configuration, not from users, and are allowed by name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PUBLIC = "public"


class DestinationRefused(httpcore.ConnectError):
    """The destination's addresses are outside ``ALERT_WEBHOOK_ALLOW`` (never connected)."""


def url_host(url: str) -> str:
    """The host of ``url`` (what the ledger and the logs show: never the path, query or
    credentials, which often carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "(invalid url)"


def _kind(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"
    return "not globally routable"


@dataclass(frozen=True)
class EgressPolicy:
    public: bool
    networks: tuple[IPNetwork, ...]
    hosts: frozenset[str]

    @classmethod
    def parse(cls, entries: Iterable[str], extra_hosts: Iterable[str] = ()) -> EgressPolicy:
        """``entries`` as ``ALERT_WEBHOOK_ALLOW`` spells them; raises ValueError on a bad one."""
        public = False
        networks: list[IPNetwork] = []
        hosts: set[str] = {h.lower().rstrip(".") for h in extra_hosts if h}
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry.lower() == PUBLIC:
                public = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or ":" in entry or " " in entry:
                raise ValueError(f"{entry!r} is neither 'public', a host name, an IP nor a CIDR")
            hosts.add(entry.lower().rstrip("."))
        return cls(public, tuple(networks), frozenset(hosts))

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why connecting to ``ip`` (resolved from ``host``) is refused; None when allowed."""
        if host.lower().rstrip(".") in self.hosts:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(ip in net for net in self.networks):
            return None
        if ip.is_global and not ip.is_multicast:
            return None if self.public else f"{ip} is not in ALERT_WEBHOOK_ALLOW"
        return f"{ip} is {_kind(ip)}, refused unless ALERT_WEBHOOK_ALLOW names it"


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the policy between name resolution and connect."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        refusals: list[str] = []
        last: Exception | None = None
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            reason = self.policy.refusal(host, ip)
            if reason is not None:
                refusals.append(reason)
                continue
            try:
                # The checked address itself, so a second resolution cannot swap it.
                return await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        if last is not None:
            raise last
        raise DestinationRefused("; ".join(dict.fromkeys(refusals)) or f"{host}: no address")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("unix sockets are never a notification destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, connecting only where the policy allows; never through a proxy
    from the environment (the proxy would do the resolving and bypass the check)."""

    def __init__(self, policy: EgressPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(
    policy: EgressPolicy, *, timeout: float, max_connections: int
) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections)
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, limits),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,  # a redirect would be a second, unchecked destination
        headers={"User-Agent": "molam-analytics-alerts"},
        trust_env=False,
    )


class LazyClient:
    """A sender's HTTP client: the one it was given (the giver's to close), or one made on first
    use and closed by :meth:`aclose`, so a sender that never sends opens no connection pool."""

    def __init__(
        self, client: httpx.AsyncClient | None, make: Callable[[], httpx.AsyncClient]
    ) -> None:
        self._client = client
        self._make = make
        self._own = client is None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._make()
        return self._client

    async def aclose(self) -> None:
        if self._own and self._client is not None:
            await self._client.aclose()
            self._client = None


def hosts_of(urls: Sequence[str]) -> list[str]:
    return [h for h in (urlsplit(u).hostname for u in urls) if h]
