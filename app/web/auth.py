"""Authenticating requests with API keys (app.services.keys manages them): who is asking,
with which scopes, remembered in `flask.g` for the request."""
from __future__ import annotations

import functools

from flask import current_app, g, request

from app.errors import ApiError
from app.services.keys import SCOPES, usable_key


def _authenticate(header: str | None) -> None:
    """Check the request's key and remember who it is in `flask.g`."""
    if not header or not header.startswith("Bearer "):
        raise ApiError(401, "unauthorized", "Missing API key: send 'Authorization: Bearer <key>'.")
    key = header[len("Bearer "):].strip()
    with current_app.extensions["nessa"].session() as session:
        row = usable_key(session, key)
        # who did it, for the model registry's audit log
        g.api_actor = f"api-key:{row.prefix} ({row.name})"
        g.api_key_id = row.id
        g.api_key_scopes = frozenset(row.scopes.split(","))


def current_actor() -> str:
    return g.get("api_actor", "api")


def current_key_id() -> int | None:
    """The id of the request's API key (None before authentication)."""
    return g.get("api_key_id")


def current_key_is_admin() -> bool:
    return "admin" in g.get("api_key_scopes", ())


def check_scope(scope: str) -> None:
    """401 without a valid key, 403 when the key lacks `scope` (`admin` implies all)."""
    assert scope in SCOPES
    _authenticate(request.headers.get("Authorization"))
    scopes = g.api_key_scopes
    if scope not in scopes and "admin" not in scopes:
        raise ApiError(403, "forbidden", f"This API key lacks the '{scope}' scope.",
                       {"required": scope, "granted": sorted(scopes)})


def require_any_key(view):
    """Route decorator for views that decide access themselves (it depends on the row)."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        _authenticate(request.headers.get("Authorization"))
        return view(*args, **kwargs)

    return wrapper


def require_scope(scope: str):
    """Route decorator: 401 without a valid key, 403 when the key lacks `scope`."""
    assert scope in SCOPES

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            check_scope(scope)
            return view(*args, **kwargs)

        wrapper.required_scope = scope
        return wrapper

    return decorator
