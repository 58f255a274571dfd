"""One error type for the service and one JSON shape for every error:
``{"code": ..., "message": ..., "detail": {...}}``."""
from __future__ import annotations

import itertools
from typing import Any

#: an error echoes at most this much of any value it names (never a whole body)
ECHO_CHARS = 100
ECHO_ITEMS = 20
MESSAGE_CHARS = 300


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def bounded(value: Any, depth: int = 0) -> Any:
    """`value` cut down for an error body: long strings clipped, long lists shortened,
    deep structures dropped, so what a client sent is never reflected back in full."""
    if isinstance(value, str):
        return clip(value)
    # deep enough for the gate's figures (candidate.conditions.full.eer); client JSON is
    # itself bounded to 16 levels
    if depth >= 6:
        return "..." if isinstance(value, (dict, list, tuple)) else value
    if isinstance(value, dict):
        return {bounded(k): bounded(v, depth + 1) for k, v in itertools.islice(value.items(), ECHO_ITEMS)}
    if isinstance(value, (list, tuple)):
        items = list(value)
        clipped = [bounded(v, depth + 1) for v in items[:ECHO_ITEMS]]
        return clipped + ["..."] if len(items) > ECHO_ITEMS else clipped
    return value


class ApiError(Exception):
    """An error a client can act on. Raised by services, rendered by the web layer."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": clip(self.message, MESSAGE_CHARS), "detail": bounded(self.detail)}


def not_found(kind: str, ident: Any) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"No {kind} with id {ident!r}.", {"id": ident})


def bad_request(code: str, message: str, **detail: Any) -> ApiError:
    return ApiError(400, code, message, detail)


def unprocessable(code: str, message: str, **detail: Any) -> ApiError:
    return ApiError(422, code, message, detail)
