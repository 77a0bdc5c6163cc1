"""A guard for tests that name internal addresses only to see them refused: any connection
opened in the test's process to an address other than loopback fails the test at once, before
a packet leaves. A classification test therefore cannot send traffic by mistake."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def refuse_beyond_loopback(address: Any) -> None:
    """Raise if ``address`` (as given to ``socket.connect``) is not loopback."""
    if not isinstance(address, tuple):  # a Unix socket's path
        return
    host = str(address[0])
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:  # a name: resolving it would already be traffic
        loopback = False
    if not loopback:
        raise AssertionError(f"a connection to {host} was attempted: tests reach loopback only")


@contextmanager
def loopback_only() -> Iterator[None]:
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: Any) -> None:
        refuse_beyond_loopback(address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        refuse_beyond_loopback(address)
        return connect_ex(self, address)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
