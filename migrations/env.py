"""Alembic environment for app.store.models.

The database URL comes, in order, from: the Config attribute ``database_url`` (set by
app.store.db.alembic_config), ``alembic -x url=...``, ``sqlalchemy.url`` in alembic.ini, and
finally the service settings (NESSA_DATABASE_URL or the embedded SQLite default).
A caller may also hand over an open connection as the Config attribute ``connection``.
"""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

from app.store import db
from app.store.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return url
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.settings import Settings

    return Settings.from_env().resolved_database_url


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = _database_url()
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
               render_as_batch=db.is_sqlite(url))
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead,
        # and dropping the old copy of a table other tables reference would trip (or, with
        # ON DELETE CASCADE, empty) them: keys are checked once, after the migration
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
        connection.commit()  # end the autobegun transaction, so the migration's own commits
    _configure(connection=connection, render_as_batch=sqlite)
    with context.begin_transaction():
        context.run_migrations()
    if sqlite:
        problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        connection.commit()
        if problems:
            raise RuntimeError(f"migration left rows violating foreign keys: {problems[:5]}")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = db.make_engine(_database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
