"""What every command group shares: failing, the actor, opening the services, writing a report."""
from __future__ import annotations

import json
import pathlib
import sys

from app.errors import ApiError
from app.settings import Settings


def fail(error: str | ApiError, code: int = 2) -> int:
    """Print the command's error line and return its exit status. An ApiError (what the
    services raise, for the API and the CLI alike) shows its message and its detail as JSON."""
    message = error
    if isinstance(error, ApiError):
        message = error.message + (f" {json.dumps(error.detail, default=str)}" if error.detail else "")
    print(f"nessa: error: {message}", file=sys.stderr)
    return code


def path_in_force(settings: Settings):
    """The newest deployment of an initialised database, else None (no service needed)."""
    from app.store import db
    from app.services.registry import current_deployment

    url = settings.resolved_database_url
    try:
        if db.current_revision(url) != db.head_revision():
            return None
    except Exception:
        return None
    engine = db.make_engine(url)
    try:
        with db.make_session_factory(engine)() as session:
            row = current_deployment(session)
            if row is not None:
                session.expunge(row)
            return row
    finally:
        engine.dispose()


def actor() -> str:
    """Who runs this command, for the model registry's audit log."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def open_services(settings: Settings):
    """The services of a command that uses the model registry: prepared, as a server's are
    (artifacts found on disk registered, a path in force on a fresh database)."""
    from app.services.container import SchemaNotReady, Services

    try:
        services = Services(settings)
    except SchemaNotReady as exc:
        raise SystemExit(fail(str(exc)))
    services.prepare()
    return services


def safe_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


def write_text_file(path: str | None, text: str) -> None:
    """Write a report file (a table, a JSON document) where the user asked, creating its folder."""
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(text + "\n", encoding="utf-8")
