"""The clock leases are measured by.

On PostgreSQL lease times come from the database clock, so hosts with skewed clocks
still agree on when a lease has expired; SQLite is single-host and uses the local clock.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def database_now(session: Session) -> dt.datetime:
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(sa.select(sa.func.now())).astimezone(dt.timezone.utc)
    return utcnow()
