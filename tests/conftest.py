"""Shared fixtures.

The database under test comes from NESSA_TEST_DATABASE (``sqlite`` or ``postgresql``);
`make test` runs the suite once per database. PostgreSQL runs get a private schema per
test session, so parallel runs against the one `test` database never collide.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def fresh_database(kind: str, tmp_dir: pathlib.Path):
    """A fresh, empty database (no tables): a SQLite file or a private PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_dir / 'test.db'}"
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


@pytest.fixture
def database_url(tmp_path, test_database_kind):
    """A fresh, empty database (no tables) for one test."""
    with fresh_database(test_database_kind, tmp_path) as url:
        yield url


# -- the service under test ----------------------------------------------------------
class ServiceHarness:
    """A real app (real database, models, index) plus keys and helpers for tests."""

    def __init__(self, settings):
        from app import create_app, db
        from app.auth import create_api_key
        from app.services.container import Services

        db.upgrade(settings.resolved_database_url)
        self.settings = settings
        self.services = Services(settings)
        self.app = create_app(settings, services=self.services, start_worker=False)
        self.client = self.app.test_client()
        self.keys = {}
        with self.services.session() as session:
            for scope in ("enroll", "identify", "admin"):
                self.keys[scope], _ = create_api_key(session, name=f"test-{scope}", scopes=[scope])
            session.commit()

    def headers(self, scope: str = "admin") -> dict:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def drain_jobs(self, max_jobs: int = 1000) -> int:
        """Run queued jobs to completion in this process (what a worker would do)."""
        from app.worker import build_worker

        worker = build_worker(self.services, worker_id="test-worker")
        done = 0
        while done < max_jobs and worker.run_once():
            done += 1
        return done

    def create_speaker(self, name: str, **extra) -> int:
        response = self.client.post("/v1/speakers", json={"name": name, **extra}, headers=self.headers("enroll"))
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def upload(self, path_or_bytes, url: str, scope: str, **fields):
        import io

        data = path_or_bytes if isinstance(path_or_bytes, bytes) else pathlib.Path(path_or_bytes).read_bytes()
        form = {k: v for k, v in fields.items()}
        form["audio"] = (io.BytesIO(data), "audio.flac")
        return self.client.post(url, data=form, headers=self.headers(scope), content_type="multipart/form-data")

    def close(self):
        self.services.close()


def make_settings(tmp_path, database_url, **overrides):
    from app.settings import Settings

    return Settings(data_dir=tmp_path / "data", database_url=database_url,
                    shared_data_dir=SHARED_DATA, **overrides)


@pytest.fixture
def harness(tmp_path, database_url):
    h = ServiceHarness(make_settings(tmp_path, database_url))
    yield h
    h.close()
