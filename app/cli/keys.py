"""`nessa keys`: create, list and revoke API keys."""
from __future__ import annotations

from app.cli.common import fail
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key; the key is the last line printed")
    kc.add_argument("--scope", action="append", required=True, help="enroll, identify or admin (repeatable)")
    kc.add_argument("--name", default="cli")
    kc.add_argument("--expires-in-days", type=int, help="the key stops working after this many days")
    ksub.add_parser("list", help="every key: scopes, state, created, last used (to the minute), expiry")
    kr = ksub.add_parser("revoke", help="revoke a key by its prefix (as `list` shows it)")
    kr.add_argument("prefix")
    keys.set_defaults(func=cmd_keys)


def cmd_keys(args, settings: Settings) -> int:
    from app.store import db

    engine = db.make_engine(settings.resolved_database_url)
    session_factory = db.make_session_factory(engine)
    commands = {"create": _keys_create, "list": _keys_list, "revoke": _keys_revoke}
    try:
        with session_factory() as session:
            return commands[args.keys_command](args, session)
    finally:
        engine.dispose()


def _keys_create(args, session) -> int:
    from app.services import keys as api_keys

    expires_at = api_keys.expiry_in_days(args.expires_in_days) if args.expires_in_days is not None else None
    key, row = api_keys.create_api_key(session, name=args.name, scopes=args.scope, expires_at=expires_at)
    session.commit()
    expiry = f"expires {row.expires_at.isoformat()}" if row.expires_at else "never expires"
    print(f"created API key {row.prefix}... (id {row.id}, scopes {row.scopes}, {expiry}); it is shown only once:")
    print(key)
    return 0


def _keys_list(args, session) -> int:
    from app.services import keys as api_keys

    columns = ("id", "prefix", "scopes", "name", "state", "created_at", "last_used_at", "expires_at", "revoked_at")
    print("\t".join(columns))
    for row in api_keys.list_api_keys(session):
        shown = api_keys.key_to_dict(row)
        shown.update(prefix=f"{row.prefix}...", scopes=row.scopes)
        print("\t".join("-" if shown[c] is None else str(shown[c]) for c in columns))
    return 0


def _keys_revoke(args, session) -> int:
    import sqlalchemy as sa

    from app.store import models
    from app.services import keys as api_keys

    row = session.scalar(sa.select(models.ApiKey).filter_by(prefix=args.prefix.removesuffix("...")))
    if row is None:
        return fail(f"no API key with prefix {args.prefix!r}")
    # the CLI may revoke the last admin key: whoever runs it can create another
    api_keys.revoke_api_key(session, row.id, keep_an_admin=False)
    session.commit()
    print(f"revoked {row.prefix}...")
    return 0
