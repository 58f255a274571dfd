"""Issue #10, defect 9: API keys expire, record when they were last used, and can be
listed and revoked through the API (admin scope) and the CLI."""
from __future__ import annotations

import datetime as dt
import threading

import sqlalchemy as sa

from tests.conftest import run_nessa


def _admin(harness) -> dict:
    return harness.headers("admin")


def _create(harness, **body) -> dict:
    response = harness.client.post("/v1/keys", json={"scopes": ["enroll"], **body}, headers=_admin(harness))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _listed(harness) -> dict[int, dict]:
    response = harness.client.get("/v1/keys", headers=_admin(harness))
    assert response.status_code == 200, response.get_json()
    return {key["id"]: key for key in response.get_json()["keys"]}


def _set_key(harness, key_id: int, **values) -> None:
    from app.store import models

    with harness.services.session() as session:
        session.execute(sa.update(models.ApiKey).where(models.ApiKey.id == key_id).values(**values))
        session.commit()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# -- listing -------------------------------------------------------------------------------
def test_keys_are_listed_with_their_state_and_never_their_secret(harness):
    created = _create(harness, name="ops", expires_in_days=7)
    assert created["key"].startswith(created["prefix"]) and created["state"] == "active"
    expires = dt.datetime.fromisoformat(created["expires_at"])
    assert abs(expires - (_now() + dt.timedelta(days=7))) < dt.timedelta(minutes=1)

    listed = _listed(harness)
    assert len(listed) == 4  # the harness's three and this one
    shown = listed[created["id"]]
    assert set(shown) == {"id", "name", "prefix", "scopes", "state", "created_at", "last_used_at",
                          "expires_at", "revoked_at"}
    assert shown["name"] == "ops" and shown["scopes"] == ["enroll"] and shown["expires_at"] == created["expires_at"]
    text = harness.client.get("/v1/keys", headers=_admin(harness)).get_data(as_text=True)
    assert created["key"] not in text and "hash" not in text


def test_only_admin_keys_manage_keys(harness):
    for scope in ("enroll", "identify"):
        assert harness.client.get("/v1/keys", headers=harness.headers(scope)).status_code == 403
        assert harness.client.delete("/v1/keys/1", headers=harness.headers(scope)).status_code == 403


# -- expiry ----------------------------------------------------------------------------------
def test_an_expired_key_is_refused_with_key_expired(harness):
    created = _create(harness, expires_at=(_now() + dt.timedelta(hours=1)).isoformat())
    assert harness.client.get("/v1/speakers", headers=_bearer(created["key"])).status_code == 200
    _set_key(harness, created["id"], expires_at=_now() - dt.timedelta(seconds=1))  # time passes

    refused = harness.client.get("/v1/speakers", headers=_bearer(created["key"]))
    assert refused.status_code == 401
    assert refused.get_json()["code"] == "key_expired" and refused.get_json()["detail"]["expired_at"]
    assert _listed(harness)[created["id"]]["state"] == "expired"


def test_expiry_input_is_checked(harness):
    future = (_now() + dt.timedelta(days=1)).isoformat()
    cases = [({"expires_in_days": 0}, "invalid_expiry"), ({"expires_in_days": 1.5}, "invalid_expiry"),
             ({"expires_in_days": True}, "invalid_expiry"), ({"expires_in_days": 100_000}, "invalid_expiry"),
             ({"expires_at": "tomorrow"}, "invalid_expiry"), ({"expires_at": 12}, "invalid_expiry"),
             ({"expires_at": "2030-01-01T00:00:00"}, "invalid_expiry"),  # no time zone
             ({"expires_at": "2001-01-01T00:00:00Z"}, "invalid_expiry"),  # in the past
             ({"expires_at": future, "expires_in_days": 1}, "invalid_fields")]
    for body, code in cases:
        response = harness.client.post("/v1/keys", json={"scopes": ["enroll"], **body}, headers=_admin(harness))
        assert response.status_code == 400 and response.get_json()["code"] == code, body
    assert _create(harness, expires_at=future.replace("+00:00", "Z"))["expires_at"]


# -- last use --------------------------------------------------------------------------------
def test_last_used_at_is_written_at_most_once_a_minute(harness):
    created = _create(harness)
    assert _listed(harness)[created["id"]]["last_used_at"] is None
    harness.client.get("/v1/speakers", headers=_bearer(created["key"]))
    first = _listed(harness)[created["id"]]["last_used_at"]
    assert first is not None
    assert abs(dt.datetime.fromisoformat(first) - _now()) < dt.timedelta(minutes=1)

    harness.client.get("/v1/speakers", headers=_bearer(created["key"]))
    assert _listed(harness)[created["id"]]["last_used_at"] == first  # within the minute: no write

    _set_key(harness, created["id"], last_used_at=_now() - dt.timedelta(minutes=2))
    harness.client.get("/v1/speakers", headers=_bearer(created["key"]))
    assert dt.datetime.fromisoformat(_listed(harness)[created["id"]]["last_used_at"]) > dt.datetime.fromisoformat(first)


# -- revocation -----------------------------------------------------------------------------
def test_a_revoked_key_is_refused_and_revoking_again_is_fine(harness):
    created = _create(harness)
    url = f"/v1/keys/{created['id']}"
    assert harness.client.delete(url, headers=_admin(harness)).status_code == 204
    revoked_at = _listed(harness)[created["id"]]["revoked_at"]
    assert revoked_at and _listed(harness)[created["id"]]["state"] == "revoked"
    refused = harness.client.get("/v1/speakers", headers=_bearer(created["key"]))
    assert refused.status_code == 401 and refused.get_json()["code"] == "key_revoked"

    assert harness.client.delete(url, headers=_admin(harness)).status_code == 204
    assert _listed(harness)[created["id"]]["revoked_at"] == revoked_at
    missing = harness.client.delete("/v1/keys/424242", headers=_admin(harness))
    assert missing.status_code == 404 and missing.get_json()["code"] == "key_not_found"


def test_the_api_cannot_revoke_the_last_active_admin_key(harness):
    own_id = max(_listed(harness))  # the harness creates its admin key last
    assert _listed(harness)[own_id]["scopes"] == ["admin"]
    refused = harness.client.delete(f"/v1/keys/{own_id}", headers=_admin(harness))
    assert refused.status_code == 409 and refused.get_json()["code"] == "last_admin_key"

    expired = _create(harness, scopes=["admin"], expires_in_days=1)
    _set_key(harness, expired["id"], expires_at=_now() - dt.timedelta(seconds=1))
    assert harness.client.delete(f"/v1/keys/{own_id}", headers=_admin(harness)).status_code == 409  # not active

    successor = _create(harness, scopes=["admin"])
    assert harness.client.delete(f"/v1/keys/{own_id}", headers=_admin(harness)).status_code == 204
    last = harness.client.delete(f"/v1/keys/{successor['id']}", headers=_bearer(successor["key"]))
    assert last.status_code == 409


def test_two_admins_revoking_each_other_at_once_leave_one_admin(harness):
    first, second = _create(harness, scopes=["admin"]), _create(harness, scopes=["admin"])
    own_id = max(k for k, v in _listed(harness).items() if v["name"] == "test-admin")
    assert harness.client.delete(f"/v1/keys/{own_id}", headers=_admin(harness)).status_code == 204
    start, statuses = threading.Barrier(2), []

    def revoke(actor: dict, victim: dict) -> None:
        client = harness.app.test_client()
        start.wait()
        statuses.append(client.delete(f"/v1/keys/{victim['id']}", headers=_bearer(actor["key"])).status_code)

    threads = [threading.Thread(target=revoke, args=pair) for pair in ((first, second), (second, first))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(204) == 1, statuses  # the other: 409, or 401 if its own key went first
    assert _active_admin_keys(harness) == 1


def _active_admin_keys(harness) -> int:
    from app.services import keys as api_keys

    with harness.services.session() as session:
        return sum(1 for row in api_keys.list_api_keys(session)
                   if "admin" in row.scopes.split(",") and api_keys.key_state(row) == "active")


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_creates_expiring_keys_lists_them_and_revokes_any(tmp_path, database_url):
    run_nessa(["db", "upgrade"], database_url, tmp_path)
    created = run_nessa(["keys", "create", "--scope", "admin", "--expires-in-days", "30", "--name", "ops"],
                        database_url, tmp_path).stdout
    assert "expires" in created
    key = created.strip().splitlines()[-1]

    listed = run_nessa(["keys", "list"], database_url, tmp_path).stdout.strip().splitlines()
    header, row = listed[0].split("\t"), dict(zip(listed[0].split("\t"), listed[1].split("\t")))
    assert header == ["id", "prefix", "scopes", "name", "state", "created_at", "last_used_at", "expires_at",
                      "revoked_at"]
    assert row["prefix"] == f"{key[:12]}..." and row["state"] == "active" and row["last_used_at"] == "-"
    expires = dt.datetime.fromisoformat(row["expires_at"])
    assert abs(expires - (_now() + dt.timedelta(days=30))) < dt.timedelta(minutes=5)

    # the only admin key: the CLI may revoke it (whoever runs the CLI can create another)
    assert "revoked" in run_nessa(["keys", "revoke", row["prefix"]], database_url, tmp_path).stdout
    listed = run_nessa(["keys", "list"], database_url, tmp_path).stdout.strip().splitlines()
    assert dict(zip(listed[0].split("\t"), listed[1].split("\t")))["state"] == "revoked"

    bad = run_nessa(["keys", "create", "--scope", "enroll", "--expires-in-days", "0"], database_url, tmp_path,
                    check_ok=False)
    assert bad.returncode != 0 and "expires_in_days" in bad.stderr
