"""`nessa db`: the database schema (Alembic migrations)."""
from __future__ import annotations

from app.cli.common import safe_url
from app.settings import Settings


def register(sub, settings: Settings) -> None:
    dbp = sub.add_parser("db", help="database schema (Alembic migrations)")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade")
    up.add_argument("revision", nargs="?", default="head")
    down = dbsub.add_parser("downgrade")
    down.add_argument("revision", nargs="?", default="base")
    dbsub.add_parser("current")
    dbp.set_defaults(func=cmd_db)


def cmd_db(args, settings: Settings) -> int:
    from app.store import db

    url = settings.resolved_database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.db_command == "upgrade":
        db.upgrade(url, args.revision)
        print(f"database at {db.current_revision(url)} ({safe_url(url)})")
    elif args.db_command == "downgrade":
        db.downgrade(url, args.revision)
        print(f"database at {db.current_revision(url) or 'base'} ({safe_url(url)})")
    else:
        print(db.current_revision(url) or "base")
    return 0
