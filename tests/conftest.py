"""Shared fixtures.

The database under test comes from NESSA_TEST_DATABASE (``sqlite`` or ``postgresql``);
`make test` runs the suite once per database. PostgreSQL runs get a private schema per
test session, so parallel runs against the one `test` database never collide.
"""
from __future__ import annotations

import os
import pathlib
import uuid

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = pathlib.Path(os.environ.get("NESSA_SHARED_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
POSTGRES_BASE_URL = os.environ.get(
    "NESSA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def requires_shared_data(*parts: str) -> pathlib.Path:
    """Return ../shared/data/<parts> or skip the test with a clear message."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real speech data not found at {path} "
                    "(clone the project with ../shared beside it, or set NESSA_SHARED_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    return requires_shared_data()


def _postgres_schema_url(base_url: str) -> tuple[str, str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options=-csearch_path%3D{schema}", schema


@pytest.fixture(scope="session")
def test_database_kind() -> str:
    return os.environ.get("NESSA_TEST_DATABASE", "sqlite")


@pytest.fixture
def database_url(tmp_path, test_database_kind):
    """A fresh, empty database (no tables) for one test."""
    if test_database_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    import sqlalchemy as sa

    url, schema = _postgres_schema_url(POSTGRES_BASE_URL)
    admin = sa.create_engine(POSTGRES_BASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL at {POSTGRES_BASE_URL} is not reachable: {exc}")
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
