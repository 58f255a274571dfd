"""API keys: random secrets shown once, stored as sha256 hashes, each with scopes and an
optional expiry. Creating, listing, revoking and looking them up (for the API and the CLI)."""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets

import sqlalchemy as sa

from app.errors import ApiError, bad_request, not_found
from app.store.db import select_for_update
from app.store.models import ApiKey, utcnow

log = logging.getLogger(__name__)

SCOPES = ("enroll", "identify", "admin")
KEY_PREFIX = "nsk_"
#: last_used_at is written at most this often per key: a write on every request would
#: queue every request behind SQLite's single writer
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
#: the furthest expiry a key can be given (a key meant to live longer needs none)
MAX_KEY_LIFETIME = dt.timedelta(days=3650)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def expiry_in_days(days) -> dt.datetime:
    """The expiry `days` whole days from now."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_KEY_LIFETIME.days:
        raise bad_request("invalid_expiry", f"'expires_in_days' must be a whole number from 1 to "
                          f"{MAX_KEY_LIFETIME.days}.", expires_in_days=days)
    return utcnow() + dt.timedelta(days=days)


def expiry_at(text) -> dt.datetime:
    """An expiry given as ISO 8601 text (checked against now when the key is created)."""
    try:
        return dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise bad_request("invalid_expiry", "'expires_at' must be an ISO 8601 date and time with a time zone, "
                          "e.g. 2030-01-31T00:00:00Z.", field="expires_at", value=text)


def _check_expiry(expires_at: dt.datetime | None) -> None:
    if expires_at is None:
        return
    if expires_at.tzinfo is None:
        raise bad_request("invalid_expiry", "The expiry must name its time zone (e.g. 2030-01-31T00:00:00Z).",
                          expires_at=expires_at.isoformat())
    now = utcnow()
    if not now < expires_at <= now + MAX_KEY_LIFETIME:
        raise bad_request("invalid_expiry", f"The expiry must be in the future and at most "
                          f"{MAX_KEY_LIFETIME.days} days away.", expires_at=expires_at.isoformat())


def create_api_key(session, *, name: str, scopes: list[str],
                   expires_at: dt.datetime | None = None) -> tuple[str, ApiKey]:
    """Create a key; returns (plaintext key, row). The plaintext is never stored."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise ApiError(400, "invalid_scope", f"Scopes must be among {list(SCOPES)}.",
                       {"unknown": unknown, "given": scopes})
    _check_expiry(expires_at)
    secret = secrets.token_urlsafe(32)
    key = f"{KEY_PREFIX}{secret}"
    row = ApiKey(name=name, prefix=key[:12], key_hash=hash_key(key), scopes=",".join(sorted(set(scopes))),
                 expires_at=expires_at)
    session.add(row)
    session.flush()
    return key, row


def key_state(row: ApiKey, now: dt.datetime | None = None) -> str:
    """active, revoked or expired."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def key_to_dict(row: ApiKey) -> dict:
    """What anyone may see of a key: never its hash (the key itself is not stored)."""
    iso = lambda t: t.isoformat() if t else None  # noqa: E731
    return {"id": row.id, "name": row.name, "prefix": row.prefix, "scopes": row.scopes.split(","),
            "state": key_state(row), "created_at": iso(row.created_at), "last_used_at": iso(row.last_used_at),
            "expires_at": iso(row.expires_at), "revoked_at": iso(row.revoked_at)}


def list_api_keys(session) -> list[ApiKey]:
    return list(session.scalars(sa.select(ApiKey).order_by(ApiKey.id)))


def key_by_prefix(session, prefix: str) -> ApiKey | None:
    return session.scalar(sa.select(ApiKey).filter_by(prefix=prefix))


def revoke_api_key(session, key_id: int, *, keep_an_admin: bool) -> ApiKey:
    """Revoke a key; revoking it again changes nothing. With ``keep_an_admin`` (the API)
    the last active admin key cannot be revoked, so no request can lock every
    administrator out of the API; the CLI may, since whoever runs it can create keys."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise not_found("key", key_id)
    if row.revoked_at is not None:
        return row
    if keep_an_admin and _is_active_admin(row) and _active_admin_ids(session) == {row.id}:
        raise ApiError(409, "last_admin_key", "This is the last active admin key: create another admin key "
                       "before revoking it (or revoke it with the CLI).", {"id": key_id})
    row.revoked_at = utcnow()
    return row


def _is_active_admin(row: ApiKey) -> bool:
    return "admin" in row.scopes.split(",") and key_state(row) == "active"


def _active_admin_ids(session) -> set[int]:
    """Ids of the active admin keys, locked until commit: two admins revoking each
    other's keys at once cannot both succeed and leave none."""
    rows = select_for_update(session, sa.select(ApiKey).where(ApiKey.revoked_at.is_(None))).scalars()
    return {row.id for row in rows if _is_active_admin(row)}


# -- using a key ---------------------------------------------------------------------
def usable_key(session, key: str) -> ApiKey:
    """The row of a presented key that may be used now (401 otherwise); its use recorded."""
    row = session.scalar(sa.select(ApiKey).filter_by(key_hash=hash_key(key)))
    now = utcnow()
    _refuse_unusable(row, now)
    _record_use(session, row, now)
    return row


def _refuse_unusable(row: ApiKey | None, now: dt.datetime) -> None:
    if row is None:
        raise ApiError(401, "unauthorized", "Invalid API key.")
    state = key_state(row, now)
    if state == "revoked":
        raise ApiError(401, "key_revoked", "This API key was revoked.",
                       {"prefix": row.prefix, "revoked_at": row.revoked_at.isoformat()})
    if state == "expired":
        raise ApiError(401, "key_expired", "This API key has expired; ask an administrator for a new one.",
                       {"prefix": row.prefix, "expired_at": row.expires_at.isoformat()})


def _record_use(session, row: ApiKey, now: dt.datetime) -> None:
    """Write last_used_at, at most once per LAST_USED_RESOLUTION per key."""
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_RESOLUTION:
        return
    # conditional: of the concurrent requests made with one key, one writes
    stale = sa.or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION)
    try:
        session.execute(sa.update(ApiKey).where(ApiKey.id == row.id, stale).values(last_used_at=now))
        session.commit()
    except sa.exc.OperationalError:
        # bookkeeping only: a busy database must not fail the request itself
        session.rollback()
        log.warning("could not record the use of API key %s...", row.prefix, exc_info=True)
