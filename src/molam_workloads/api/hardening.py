"""Checks every request passes before any route, token or cache sees it, and the security
headers every response carries.

``RequestGuard`` refuses, with the API's JSON error shape:

- an ``Authorization`` header longer than ``MAX_AUTHORIZATION_BYTES`` (431), before any JWT
  parsing or token-cache lookup: a token is a few hundred bytes, a megabyte one is an attack on
  the parser;
- a NUL character in the path, the query string or a body (422): PostgreSQL text cannot hold
  one, so it would otherwise surface as a database error;
- a body above ``MAX_BODY_BYTES`` (413): bodies are alert rules and comments, a few KB.

``SecurityHeaders`` sets on every response: a Content-Security-Policy that lets pages run only
the scripts and styles served by this API (the dashboard and the docs have no inline ones), no
framing, no MIME sniffing, and no Referer (a page's URL never leaves with a request).
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from molam_workloads.api.errors import error_body

MAX_AUTHORIZATION_BYTES = 8192
MAX_BODY_BYTES = 1 << 20
# data: images only: Swagger UI's stylesheet draws its icons as data: SVGs (no script runs).
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_AUTHORIZATION = b"authorization"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A JSON \u0000 escape: preceded by an even number of backslashes (an odd one escapes the "\").
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


# C0 and C1 control characters (a decoded %0a in a path would start a forged log line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def loggable(text: str) -> str:
    """``text`` with its control characters escaped (``\\x0a``): one log line stays one."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _has_nul(data: bytes) -> bool:
    return b"\x00" in data or _JSON_NUL.search(data) is not None


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == _AUTHORIZATION and len(value) > MAX_AUTHORIZATION_BYTES:
                await _refuse(
                    send,
                    431,
                    "header_too_large",
                    f"the Authorization header is over {MAX_AUTHORIZATION_BYTES} bytes: "
                    "no valid token is that long",
                )
                return
        query: bytes = scope["query_string"]
        if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
            await _refuse(
                send, 422, "invalid_request", "the path and parameters may not contain NUL (%00)"
            )
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size, more = 0, True
        while more:  # ends: the server sends more_body=False, or a disconnect, or we refuse
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > MAX_BODY_BYTES:
                await _refuse(
                    send, 413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes"
                )
                return
            more = message.get("more_body", False)
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if _has_nul(body):
            await _refuse(send, 422, "invalid_request", "the body may not contain NUL (\\u0000)")
            return
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
