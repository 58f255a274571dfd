"""API keys: random secrets shown once, stored as sha256 hashes, each with scopes."""
from __future__ import annotations

import functools
import hashlib
import secrets

from flask import current_app, g, request

from app.errors import ApiError

SCOPES = ("enroll", "identify", "admin")
KEY_PREFIX = "nsk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session, *, name: str, scopes: list[str]) -> tuple[str, object]:
    """Create a key; returns (plaintext key, row). The plaintext is never stored."""
    from app.models import ApiKey

    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise ApiError(400, "invalid_scope", f"Scopes must be among {list(SCOPES)}.",
                       {"unknown": unknown, "given": scopes})
    secret = secrets.token_urlsafe(32)
    key = f"{KEY_PREFIX}{secret}"
    row = ApiKey(name=name, prefix=key[:12], key_hash=hash_key(key), scopes=",".join(sorted(set(scopes))))
    session.add(row)
    session.flush()
    return key, row


def _authenticate(header: str | None):
    from app.models import ApiKey

    if not header or not header.startswith("Bearer "):
        raise ApiError(401, "unauthorized", "Missing API key: send 'Authorization: Bearer <key>'.")
    key = header[len("Bearer "):].strip()
    services = current_app.extensions["nessa"]
    with services.session() as session:
        row = session.query(ApiKey).filter_by(key_hash=hash_key(key)).one_or_none()
        if row is None or row.revoked_at is not None:
            raise ApiError(401, "unauthorized", "Invalid or revoked API key.")
        # who did it, for the model registry's audit log
        g.api_actor = f"api-key:{row.prefix} ({row.name})"
        return row.id, set(row.scopes.split(","))


def current_actor() -> str:
    return g.get("api_actor", "api")


def check_scope(scope: str) -> None:
    """401 without a valid key, 403 when the key lacks `scope` (`admin` implies all)."""
    assert scope in SCOPES
    key_id, scopes = _authenticate(request.headers.get("Authorization"))
    if scope not in scopes and "admin" not in scopes:
        raise ApiError(403, "forbidden", f"This API key lacks the '{scope}' scope.",
                       {"required": scope, "granted": sorted(scopes)})
    g.api_key_id = key_id


def require_any_key(view):
    """Route decorator for views that check a scope themselves (it depends on the row)."""
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
