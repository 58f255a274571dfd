"""A job table of the tests' own, so the jobqueue tests need nothing from app/: the
smallest model JobQueue accepts, plus one column of the "application's" own."""
from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from jobqueue.queue import STATUSES


class UTCTimestamp(sa.TypeDecorator):
    """Aware UTC datetimes on both databases (SQLite keeps them as naive UTC text, which
    compares chronologically), as the queue requires of its timestamps."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (sa.CheckConstraint(f"status IN {STATUSES!r}", name="task_status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tasks.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON(none_as_null=True))
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer)
    max_attempts: Mapped[int] = mapped_column(sa.Integer)
    run_after: Mapped[dt.datetime] = mapped_column(UTCTimestamp)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCTimestamp)
    worker_id: Mapped[str | None] = mapped_column(sa.String(200))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCTimestamp)
    progress: Mapped[float | None] = mapped_column(sa.Float)
    error: Mapped[str | None] = mapped_column(sa.Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON(none_as_null=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCTimestamp)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCTimestamp)
    #: not the queue's: stands for the columns an application adds (who asked, say)
    owner: Mapped[str | None] = mapped_column(sa.String(64))


def open_task_table(url: str) -> tuple[sa.Engine, sessionmaker[Session]]:
    """An engine on ``url`` with the tasks table created, and its session factory."""
    if url.startswith("sqlite"):
        # concurrent writers wait for SQLite's single write lock instead of failing
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    else:
        engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    return engine, sessionmaker(bind=engine, expire_on_commit=False)
