"""One error type for the service and one JSON shape for every error:
``{"code": ..., "message": ..., "detail": {...}}``."""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error a client can act on. Raised by services, rendered by the web layer."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail}


def not_found(kind: str, ident: Any) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"No {kind} with id {ident!r}.", {"id": ident})


def bad_request(code: str, message: str, **detail: Any) -> ApiError:
    return ApiError(400, code, message, detail)


def unprocessable(code: str, message: str, **detail: Any) -> ApiError:
    return ApiError(422, code, message, detail)
