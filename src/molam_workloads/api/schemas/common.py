from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(examples=["forbidden"])
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "Missing, malformed, wrongly signed or expired bearer token",
        403: "The token's role or merchant may not do this",
        404: "No such resource",
        409: "Conflicts with the resource's current state",
        422: "Invalid parameters or body",
    }
    return {c: {"model": ErrorResponse, "description": described[c]} for c in codes}


READ_ERRORS = error_responses(401, 403, 422)
