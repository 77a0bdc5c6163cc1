"""Bearer tokens: HS256 JWTs signed with ``ANALYTICS_JWT_SECRET``.

Claims: ``sub`` (who), ``role`` (admin, ops, analyst, merchant), ``merchant_id`` (required for
the merchant role) and ``exp`` (required). A token that cannot be trusted (missing, malformed,
wrongly signed, another algorithm, expired, living longer than
``ANALYTICS_JWT_MAX_LIFETIME_SECONDS``, or without the configured ``iss``/``aud``) is a 401; a
trusted token whose claims grant nothing (unknown role, merchant without ``merchant_id``) is a
403. Every refusal is logged and counted.

Keys rotate without downtime: tokens verify with ``ANALYTICS_JWT_SECRET`` or any of
``ANALYTICS_JWT_PREVIOUS_SECRETS``; ``issue_token`` signs with the first only.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt
from starlette.requests import Request

from molam_workloads.api.errors import Forbidden, Unauthorized
from molam_workloads.api.hardening import loggable
from molam_workloads.api.settings import ApiSettings
from molam_workloads.core.metrics import AUTH_DENIALS

log = logging.getLogger(__name__)
ALGORITHM = "HS256"
# An ``iat`` this far ahead of our clock is a clock skew we tolerate; further, a forgery.
IAT_SKEW_SECONDS = 60


@dataclass(frozen=True)
class TokenPolicy:
    """What a token must satisfy besides its signature; built once from the settings."""

    # The first signs; all verify. Kept out of repr: a logged policy shows no key.
    keys: tuple[str, ...] = field(repr=False)
    max_lifetime_seconds: int
    issuer: str | None = None
    audience: str | None = None

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> TokenPolicy:
        return cls(
            keys=settings.jwt_keys,
            max_lifetime_seconds=settings.analytics_jwt_max_lifetime_seconds,
            issuer=settings.analytics_jwt_issuer,
            audience=settings.analytics_jwt_audience,
        )

    @property
    def required_claims(self) -> list[str]:
        claims = ["exp", "sub", "role"]
        return claims + (["iss"] if self.issuer else []) + (["aud"] if self.audience else [])


def issue_token(
    policy: TokenPolicy,
    sub: str,
    role: Role,
    merchant_id: str | None = None,
    lifetime_seconds: int | None = None,
    now: float | None = None,
) -> str:
    """A token this API accepts, signed with the current key (the first of ``policy.keys``)."""
    issued = int(time.time() if now is None else now)
    lifetime = min(lifetime_seconds or policy.max_lifetime_seconds, policy.max_lifetime_seconds)
    claims: dict[str, Any] = {
        "sub": sub,
        "role": role.value,
        "iat": issued,
        "exp": issued + lifetime,
    }
    if merchant_id is not None:
        claims["merchant_id"] = merchant_id
    if policy.issuer:
        claims["iss"] = policy.issuer
    if policy.audience:
        claims["aud"] = policy.audience
    return jwt.encode(claims, policy.keys[0], algorithm=ALGORITHM)


class Role(StrEnum):
    admin = "admin"
    ops = "ops"
    analyst = "analyst"
    merchant = "merchant"


# Roles that read every merchant's data; the merchant role reads only its own.
ALL_MERCHANT_READERS = frozenset({Role.admin, Role.ops, Role.analyst})
# Roles that manage alert rules and alerts.
ALERT_MANAGERS = frozenset({Role.admin, Role.ops})


@dataclass(frozen=True)
class Principal:
    sub: str
    role: Role
    merchant_id: str | None

    @property
    def reads_all_merchants(self) -> bool:
        return self.role in ALL_MERCHANT_READERS

    def can_read_merchant(self, merchant_id: str | None) -> bool:
        """May this principal see data that belongs to ``merchant_id`` (None: platform-wide)?"""
        return self.reads_all_merchants or (
            merchant_id is not None and merchant_id == self.merchant_id
        )

    @property
    def cache_scope(self) -> str:
        """The part of a cache key that keeps one role's or merchant's answers apart."""
        return f"{self.role.value}:{self.merchant_id or '*'}"


def deny(request: Request, status: int, reason: str, principal: Principal | None = None) -> None:
    """Log and count a refusal (never the token itself)."""
    AUTH_DENIALS.labels(str(status)).inc()
    log.warning(
        "denied %s %s: %s (status=%d sub=%s role=%s merchant_id=%s)",
        request.method,
        loggable(request.url.path),
        reason,
        status,
        principal.sub if principal else "-",
        principal.role.value if principal else "-",
        principal.merchant_id if principal else "-",
    )


def _unauthorized(request: Request, reason: str) -> Unauthorized:
    deny(request, 401, reason)
    return Unauthorized(reason)


class TokenCache:
    """Principals of tokens already verified, each until its ``exp`` (bounded, least recently
    used first out). Checking an HS256 signature and the claims costs more than the rest of a
    cached answer; a token that verified once verifies again until it expires, so the cache
    only skips repeating that. Refusals are never cached: each is logged and counted again.
    One cache per ``TokenPolicy`` (``Resources``)."""

    def __init__(self, size: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        principal, exp = entry
        if self.clock() >= exp:  # PyJWT refuses a token once now >= exp (no leeway here)
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return principal

    def put(self, token: str, principal: Principal, exp: float) -> None:
        self._entries[token] = (principal, exp)
        self._entries.move_to_end(token)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (None: not that form)."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _decode(token: str, policy: TokenPolicy) -> dict[str, Any]:
    """The verified claims; a signature that fails with one key is tried with the next."""
    for key in policy.keys[:-1]:
        try:
            return _decode_with(token, key, policy)
        except jwt.InvalidSignatureError:
            continue
    return _decode_with(token, policy.keys[-1], policy)


def _decode_with(token: str, key: str, policy: TokenPolicy) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[ALGORITHM],
        issuer=policy.issuer,
        audience=policy.audience,
        options={"require": policy.required_claims},
    )
    return claims


def _lifetime_problem(claims: dict[str, Any], policy: TokenPolicy) -> str | None:
    """Why the token lives too long (None: it does not)."""
    now = time.time()
    exp, iat = claims["exp"], claims.get("iat")
    if iat is not None and (not isinstance(iat, int | float) or iat > now + IAT_SKEW_SECONDS):
        return "token 'iat' claim is not a past time"
    # Without iat, what is left of the token's life counts: it may not outlast the maximum.
    lifetime = exp - (iat if iat is not None else now)
    if lifetime > policy.max_lifetime_seconds:
        return f"token lives longer than the {policy.max_lifetime_seconds} s allowed"
    return None


def authenticate(
    request: Request, policy: TokenPolicy, tokens: TokenCache | None = None
) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized(request, "missing bearer token")
    token = bearer_token(header)
    if token is None:
        raise _unauthorized(request, "the Authorization header must be 'Bearer <token>'")
    if tokens is not None and (known := tokens.get(token)) is not None:
        return known
    try:
        claims = _decode(token, policy)
    except jwt.ExpiredSignatureError:
        raise _unauthorized(request, "token expired") from None
    except jwt.InvalidSignatureError:
        raise _unauthorized(request, "token signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise _unauthorized(request, f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAlgorithmError:
        raise _unauthorized(request, f"token must be signed with {ALGORITHM}") from None
    except jwt.InvalidIssuerError:
        raise _unauthorized(request, "token 'iss' claim is not the expected issuer") from None
    except jwt.InvalidAudienceError:
        raise _unauthorized(request, "token 'aud' claim is not this API's audience") from None
    except jwt.PyJWTError:
        raise _unauthorized(request, "token is malformed") from None

    if (problem := _lifetime_problem(claims, policy)) is not None:
        raise _unauthorized(request, problem)
    sub, role, merchant_id = claims.get("sub"), claims.get("role"), claims.get("merchant_id")
    if not isinstance(sub, str) or not sub:
        raise _unauthorized(request, "token 'sub' claim must be a non-empty string")
    if merchant_id is not None and (not isinstance(merchant_id, str) or not merchant_id):
        raise _unauthorized(request, "token 'merchant_id' claim must be a non-empty string")
    try:
        parsed_role = Role(str(role))
    except ValueError:
        deny(request, 403, f"unknown role {role!r}")
        raise Forbidden(f"role {role!r} grants no access") from None
    principal = Principal(sub=sub, role=parsed_role, merchant_id=merchant_id)
    if parsed_role is Role.merchant and not merchant_id:
        deny(request, 403, "merchant token without merchant_id", principal)
        raise Forbidden("a merchant token must carry a merchant_id claim")
    if tokens is not None:
        tokens.put(token, principal, float(claims["exp"]))
    return principal
