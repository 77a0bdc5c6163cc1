"""Who may do what, as dependency classes (after Netflix dispatch's ``auth/permissions.py``).

A route lists the permissions it needs: ``Depends(PermissionsDependency(ReadAllMerchants))``.
Each ``Permission`` answers one question about the caller and the request; the dependency
refuses (403, logged and counted) on the first that says no. Handlers never branch on roles.

Merchant scoping: ``MerchantScope`` resolves the merchant filter a query runs with. Staff roles
get what they asked for (None: every merchant). A merchant token gets its own ``merchant_id``
when it asked for none; asking for any other merchant, by query parameter or path, is a 403.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated

from fastapi import Depends, Query, Request

from molam_workloads.api.auth import ALERT_MANAGERS, Principal, deny
from molam_workloads.api.deps import CurrentPrincipal
from molam_workloads.api.errors import Forbidden, NotFound


class Permission(ABC):
    message = "not allowed"

    @abstractmethod
    def has_required_permissions(self, principal: Principal, request: Request) -> bool: ...


class ReadAllMerchants(Permission):
    """Cross-merchant views (top merchants, platform-wide live counters): staff roles only."""

    message = "this view spans every merchant; a merchant token may not read it"

    def has_required_permissions(self, principal: Principal, request: Request) -> bool:
        return principal.reads_all_merchants


class ManageAlerts(Permission):
    """Create, change or delete alert rules; acknowledge or resolve alerts: admin and ops."""

    message = "managing alert rules and alerts needs the admin or ops role"

    def has_required_permissions(self, principal: Principal, request: Request) -> bool:
        return principal.role in ALERT_MANAGERS


class OwnMerchantOnly(Permission):
    """A merchant token may name no merchant but its own, in the path or any query parameter."""

    message = "a merchant token may only read its own merchant's data"

    def has_required_permissions(self, principal: Principal, request: Request) -> bool:
        if principal.reads_all_merchants:
            return True
        asked = list(request.query_params.getlist("merchant_id"))
        if "merchant_id" in request.path_params:
            asked.append(str(request.path_params["merchant_id"]))
        return all(m == principal.merchant_id for m in asked)


class PermissionsDependency:
    def __init__(self, *permission_classes: type[Permission]) -> None:
        self.permission_classes = permission_classes

    async def __call__(self, request: Request, principal: CurrentPrincipal) -> Principal:
        for cls in self.permission_classes:
            permission = cls()
            if not permission.has_required_permissions(principal, request):
                deny(request, 403, f"{cls.__name__}: {permission.message}", principal)
                raise Forbidden(permission.message, {"permission": cls.__name__})
        return principal


def require(*permission_classes: type[Permission]) -> PermissionsDependency:
    return PermissionsDependency(OwnMerchantOnly, *permission_classes)


_read = require()
_read_all = require(ReadAllMerchants)
_manage = require(ManageAlerts)
Reader = Annotated[Principal, Depends(_read)]
StaffReader = Annotated[Principal, Depends(_read_all)]
AlertManager = Annotated[Principal, Depends(_manage)]


class MerchantScope:
    """The merchant filter a query runs with, after ``OwnMerchantOnly`` passed."""

    async def __call__(
        self,
        principal: Reader,
        merchant_id: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=128,
                description="Only this merchant. A merchant token may name only its own "
                "merchant_id and is scoped to it when it names none.",
            ),
        ] = None,
    ) -> str | None:
        return merchant_id if principal.reads_all_merchants else principal.merchant_id


def ensure_visible(
    request: Request, principal: Principal, merchant_id: str | None, missing: NotFound
) -> None:
    """For a single stored resource (an alert, a rule) owned by ``merchant_id`` (None: the
    platform). One the caller may not read is answered as ``missing`` (404, the very answer
    of an id or name that does not exist), so another merchant's alerts and rules cannot be
    found by guessing; the refusal is still logged and counted."""
    if not principal.can_read_merchant(merchant_id):
        deny(request, 404, "resource belongs to another merchant", principal)
        raise missing


ScopedMerchant = Annotated[str | None, Depends(MerchantScope())]
