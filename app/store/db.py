"""Engines, sessions, migrations and the float32 vector codec.

The schema exists only through Alembic migrations (``migrations/``); nothing here calls
``metadata.create_all``.
"""
from __future__ import annotations

import logging
import pathlib

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "migrations"

#: how long a SQLite connection waits for the single-writer lock before "database is locked"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str | sa.URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _is_sqlite_memory(url: sa.URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def make_engine(url: str | sa.URL, **engine_kwargs) -> Engine:
    """Create an engine with the settings this service relies on.

    SQLite: WAL (readers never block the writer), enforced foreign keys (ON DELETE
    CASCADE depends on them) and a busy timeout so concurrent writers queue instead of
    failing. PostgreSQL: pre-ping so connections dropped by a restart or a proxy are
    replaced transparently. ``engine_kwargs`` override the defaults (e.g. ``poolclass``).
    """
    url = make_url(url)
    custom_pool = "poolclass" in engine_kwargs or "pool" in engine_kwargs
    if url.get_backend_name() == "sqlite":
        options: dict = {"connect_args": {"check_same_thread": False}}
        if not custom_pool and not _is_sqlite_memory(url):
            # one writer at a time anyway; a few pooled connections serve concurrent readers
            options.update(pool_size=5, max_overflow=10, pool_timeout=30)
        options.update(engine_kwargs)
        engine = sa.create_engine(url, **options)
        sa.event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    options = {"pool_pre_ping": True}
    if not custom_pool:
        # recycle below common server/proxy idle timeouts
        options.update(pool_size=5, max_overflow=10, pool_timeout=30, pool_recycle=1800)
    options.update(engine_kwargs)
    return sa.create_engine(url, **options)


def _configure_sqlite_connection(dbapi_connection, _connection_record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL is persistent in the file; an in-memory database answers "memory" and stays so
        cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against application crashes in WAL mode (only an OS crash
        # can lose the last transactions) and avoids an fsync per commit
        cursor.execute("PRAGMA synchronous = NORMAL")
        # deleted rows are overwritten with zeros, not just unlinked: an erased voice
        # profile must not stay readable in free pages (see scrub_deleted_rows)
        cursor.execute("PRAGMA secure_delete = ON")
    finally:
        cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after commit (e.g. returned from a
    # service function whose session has closed) without a lazy reload
    return sessionmaker(bind=engine, expire_on_commit=False)


def end_read(session: Session) -> None:
    """End the session's read-only transaction before slow work that needs no database: its
    connection goes back to the pool and, on SQLite, its snapshot no longer holds back WAL
    checkpoints. The session stays usable; its next statement begins a new transaction."""
    session.rollback()


def select_for_update(session: Session, statement: sa.Select) -> sa.Result:
    """Run a SELECT whose answer must still hold when this transaction writes and commits.

    PostgreSQL locks the rows it returns (FOR UPDATE) until the transaction ends, so a
    concurrent delete or update of them waits. SQLite has no row locks: the database's
    single write lock is taken first (a write statement that changes nothing), so no
    other writer can commit between this read and this transaction's commit.
    """
    if session.get_bind().dialect.name == "sqlite":
        table = statement.get_final_froms()[0]
        session.execute(sa.text(f"UPDATE {table.name} SET id = id WHERE 0"))
    return session.execute(statement.with_for_update())


def scrub_deleted_rows(engine: Engine, tables: tuple[str, ...]) -> None:
    """After deleting personal data from ``tables``, make it unrecoverable from the
    database's own files, as far as the database allows (docs/erasure.md).

    SQLite (secure_delete zeroes deleted rows, but the WAL still holds the pages as they
    were written): a TRUNCATE checkpoint copies the zeroed pages into the database file
    and empties the WAL. It waits (busy timeout) for readers of older snapshots; if one
    outlasts that, the next maintenance pass tries again. PostgreSQL: a plain VACUUM
    removes the dead tuples from the heap pages (not from WAL segments or backups).
    A failure is logged, not raised: the delete itself has committed.
    """
    try:
        if engine.dialect.name == "sqlite":
            _checkpoint_truncate(engine)
        elif engine.dialect.name == "postgresql":
            # VACUUM cannot run inside a transaction block
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(sa.text(f"VACUUM {', '.join(tables)}"))
    except sa.exc.DBAPIError:
        log.warning("could not scrub deleted rows of %s", ", ".join(tables), exc_info=True)


def _checkpoint_truncate(engine: Engine) -> None:
    with engine.connect() as connection:
        busy, _, _ = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:
        log.warning("WAL checkpoint incomplete (a reader held an old snapshot): deleted rows stay in the "
                    "WAL file until the next maintenance pass")


# --- migrations -------------------------------------------------------------------------

def alembic_config(url: str | sa.URL):
    """An Alembic Config for ``url`` that needs no alembic.ini."""
    from alembic.config import Config

    url_text = url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else url
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Config values go through configparser interpolation, where "%" is special; the
    # URL may contain percent-escapes (options=-csearch_path%3Dschema)
    config.set_main_option("sqlalchemy.url", url_text.replace("%", "%%"))
    # env.py prefers this unmodified copy
    config.attributes["database_url"] = url_text
    return config


def upgrade(url: str | sa.URL, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | sa.URL, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest revision in migrations/ (what ``upgrade(url)`` brings a database to)."""
    from alembic.script import ScriptDirectory

    config = alembic_config("sqlite://")
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(url: str | sa.URL) -> str | None:
    """The revision the database is at, or None for an unmigrated database."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


# --- vectors ----------------------------------------------------------------------------

class FloatVector:
    """Codec for embeddings stored as ``LargeBinary``: little-endian float32, no header.

    The dimension lives in its own column; decoding checks the blob against it so a
    vector from the wrong model can never be silently reinterpreted.
    """

    DTYPE = np.dtype("<f4")

    @classmethod
    def to_bytes(cls, vector, dim: int | None = None) -> bytes:
        array = np.asarray(vector)
        if array.ndim != 1:
            raise ValueError(f"expected a 1-D vector, got shape {array.shape}")
        if dim is not None and array.shape[0] != dim:
            raise ValueError(f"expected a vector of dimension {dim}, got {array.shape[0]}")
        if array.shape[0] == 0:
            raise ValueError("empty vector")
        array = array.astype(cls.DTYPE, copy=False)
        if not np.all(np.isfinite(array)):
            raise ValueError("vector contains NaN or infinite values")
        return array.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> np.ndarray:
        """Decode to a writable native float32 array of length ``dim``."""
        expected = dim * cls.DTYPE.itemsize
        if len(data) != expected:
            raise ValueError(
                f"vector blob has {len(data)} bytes, expected {expected} for dimension {dim}")
        return np.frombuffer(data, dtype=cls.DTYPE).astype(np.float32)
