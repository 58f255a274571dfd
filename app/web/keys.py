"""/v1/keys: API keys, for administrators."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from app.services import keys
from app.web.operations import Reply, operation
from app.web.schemas import CreatedKey, KeyList, NewKey

bp = Blueprint("keys", __name__)


@operation(bp, "POST", "/v1/keys", access="admin", body=NewKey,
           replies=Reply(201, CreatedKey, "Created; the key is shown once, in `key`"),
           summary="Create an API key (admin)")
def create_key(body: NewKey):
    expires_at = body.expiry()
    with current_app.extensions["nessa"].session() as session:
        key, row = keys.create_api_key(session, name=body.name, scopes=body.scopes, expires_at=expires_at)
        session.commit()
        return jsonify({**keys.key_to_dict(row), "key": key}), 201


@operation(bp, "GET", "/v1/keys", access="admin", replies=Reply(200, KeyList),
           summary="Every API key with its state, last use and expiry (admin)")
def list_keys():
    with current_app.extensions["nessa"].session() as session:
        return jsonify({"keys": [keys.key_to_dict(row) for row in keys.list_api_keys(session)]})


@operation(bp, "DELETE", "/v1/keys/<id:key_id>", access="admin", errors=("404", "409"),
           replies=Reply(204, description="Revoked"),
           summary="Revoke an API key (admin); revoking again is fine. The last active admin key cannot be "
                   "revoked here (409 last_admin_key; the CLI can)")
def revoke_key(key_id: int):
    with current_app.extensions["nessa"].session() as session:
        keys.revoke_api_key(session, key_id, keep_an_admin=True)
        session.commit()
    return "", 204
