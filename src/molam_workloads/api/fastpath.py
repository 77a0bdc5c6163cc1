"""Cache hits without FastAPI's request machinery, for requests it has already answered.

A summary route (``routers/_summary.cached_answer``) computes its Redis key only after FastAPI
has authenticated the caller, checked the permissions and parsed and validated every
parameter. That key is a function of the request's bytes alone (path, query string, bearer
token) as long as the range is fully given: with ``from`` and ``to`` both in the query,
nothing in it depends on the clock (a missing ``to`` means "the next hour", so such requests
are never remembered). ``CachedAnswers`` remembers, per exact (path, query string, token),
the key FastAPI's route computed for a request it answered 200, and answers the same request
again straight from Redis:

- the token must still be in the ``TokenCache`` (verified, not expired): a token that expired
  or was never verified goes through FastAPI, which verifies it, or refuses, logs and counts;
- only requests that passed every dependency are remembered, so a request that FastAPI refuses
  (401, 403, 422) is refused, logged and counted by FastAPI every time;
- on a Redis miss (expired entry, Redis down) the request goes through FastAPI unchanged, which
  counts the miss; this path counts only the hits it serves (each request is counted once);
- the answer is ``cache.cached_response``, the very response FastAPI's route sends on a hit,
  and ``scope["route"]`` is the route FastAPI matched, so ``MetricsMiddleware`` (outside this
  one) labels the request and its latency exactly as before.

The memory is bounded (least recently used first out) and per process.
"""

from __future__ import annotations

from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from molam_workloads.api.auth import bearer_token
from molam_workloads.api.cache import cached_response
from molam_workloads.api.deps import Resources
from molam_workloads.api.middleware import StatusSend
from molam_workloads.core.metrics import CACHE_HITS

# The key of a request in progress, set by ``cached_answer`` (``learn``) for this middleware.
_slot: ContextVar[list[str] | None] = ContextVar("molam_api_cache_key", default=None)
_AUTHORIZATION = b"authorization"
_CLOCK_FREE = ("from", "to")  # both given: the range, hence the key, does not move with time


def learn(key: str) -> None:
    """Called by ``cached_answer`` with the key of the answer it is about to send."""
    slot = _slot.get()
    if slot is not None:
        slot.append(key)


@dataclass(frozen=True, slots=True)
class Learned:
    key: str
    route: BaseRoute


def _token(scope: Scope) -> str | None:
    """The bearer token as ``auth.authenticate`` reads it (the first Authorization header)."""
    for name, value in scope["headers"]:
        if name == _AUTHORIZATION:
            return bearer_token(value.decode("latin-1"))
    return None


def _range_given(query_string: bytes) -> bool:
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return all(
        any(k == name for k, _ in pairs) and all(v for k, v in pairs if k == name)
        for name in _CLOCK_FREE
    )


class CachedAnswers:
    def __init__(self, app: ASGIApp, api: Starlette, size: int = 4096) -> None:
        self.app = app
        self.api = api
        self.size = size
        self.learned: OrderedDict[tuple[str, bytes, str], Learned] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        token = _token(scope)
        if token is None:
            await self.app(scope, receive, send)
            return
        signature = (scope["path"], scope["query_string"], token)
        learned = self.learned.get(signature)
        if learned is not None:  # a summary route ran: the lifespan's resources exist
            resources: Resources = self.api.state.resources
            if resources.cache.enabled and resources.tokens.get(token) is not None:
                self.learned.move_to_end(signature)
                try:
                    body = await resources.cache.lookup(learned.key)
                except Exception:  # FastAPI's path meets it again and answers as it always did
                    body = None
                if body is not None:
                    CACHE_HITS.inc()
                    scope["route"] = learned.route
                    await cached_response(body, "hit")(scope, receive, send)
                    return
        await self._through_fastapi(scope, receive, send, signature)

    async def _through_fastapi(
        self, scope: Scope, receive: Receive, send: Send, signature: tuple[str, bytes, str]
    ) -> None:
        slot: list[str] = []
        sent = StatusSend(send, 0)
        reset = _slot.set(slot)
        try:
            await self.app(scope, receive, sent)
        finally:
            _slot.reset(reset)
        route = scope.get("route")
        if (
            sent.status == 200
            and len(slot) == 1
            and isinstance(route, BaseRoute)
            and _range_given(scope["query_string"])
        ):
            self.learned[signature] = Learned(slot[0], route)
            self.learned.move_to_end(signature)
            while len(self.learned) > self.size:
                self.learned.popitem(last=False)
