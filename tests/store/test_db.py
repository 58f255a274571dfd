"""Migrations, model/migration parity, the vector codec and cascades (SQLite and PostgreSQL)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.store import db, models

APP_TABLES = {
    "speakers", "enrollments", "model_versions", "embeddings", "profiles",
    "alignment_artifacts", "api_keys", "jobs", "gallery_changes",
    "deployments", "path_evaluations", "registry_events", "gallery_calibrations",
}


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            return set(sa.inspect(connection).get_table_names())
    finally:
        engine.dispose()


def _schema_diff(url: str, metadata: sa.MetaData) -> list:
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(database_url):
    assert _tables(database_url) == set()
    assert db.current_revision(database_url) is None

    db.upgrade(database_url)
    assert _tables(database_url) == APP_TABLES | {"alembic_version"}
    assert db.current_revision(database_url) == db.head_revision()

    db.downgrade(database_url)
    assert _tables(database_url) <= {"alembic_version"}
    assert db.current_revision(database_url) is None

    db.upgrade(database_url)
    assert _tables(database_url) == APP_TABLES | {"alembic_version"}
    assert db.current_revision(database_url) == db.head_revision()


def test_models_match_migrations(database_url):
    db.upgrade(database_url)
    assert _schema_diff(database_url, models.Base.metadata) == []

    # the comparison does see differences: a column the migrations lack is reported
    altered = sa.MetaData(naming_convention=models.NAMING_CONVENTION)
    for table in models.Base.metadata.sorted_tables:
        table.to_metadata(altered)
    altered.tables["speakers"].append_column(sa.Column("nickname", sa.String(50)))
    diff = _schema_diff(database_url, altered)
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "speakers", "nickname")]


def test_alembic_config_keeps_percent_escapes_in_url():
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dt_abc"
    config = db.alembic_config(url)
    assert config.get_main_option("sqlalchemy.url") == url
    assert config.attributes["database_url"] == url


def test_float_vector_round_trip():
    vector = np.random.default_rng(0).standard_normal(192).astype(np.float32)
    blob = db.FloatVector.to_bytes(vector, dim=192)
    assert len(blob) == 192 * 4
    decoded = db.FloatVector.from_bytes(blob, 192)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector)
    decoded[0] = 1.0  # callers may normalise in place
    # float64 input is stored as float32
    np.testing.assert_allclose(db.FloatVector.from_bytes(db.FloatVector.to_bytes(
        vector.astype(np.float64)), 192), vector)


@pytest.mark.parametrize("vector, dim", [
    (np.zeros(191, np.float32), 192),
    (np.zeros((2, 96), np.float32), None),
    (np.zeros(0, np.float32), None),
    (np.array([1.0, np.nan], np.float32), None),
    (np.array([1.0, np.inf], np.float32), None),
])
def test_float_vector_rejects_bad_input(vector, dim):
    with pytest.raises(ValueError):
        db.FloatVector.to_bytes(vector, dim=dim)


def test_float_vector_checks_dimension_on_decode():
    blob = db.FloatVector.to_bytes(np.ones(256, np.float32))
    with pytest.raises(ValueError, match="expected 768 for dimension 192"):
        db.FloatVector.from_bytes(blob, 192)


def _speaker_with_data(session, name: str) -> models.Speaker:
    """A speaker with one enrollment, one embedding, one profile and one change-log row."""
    blob = db.FloatVector.to_bytes(np.arange(4, dtype=np.float32), 4)
    speaker = models.Speaker(name=name, external_id=f"ext-{name}")
    session.add(speaker)
    session.flush()
    enrollment = models.Enrollment(speaker_id=speaker.id, status="done", audio_sha256="0" * 64,
                                   audio_bytes=10, duration_s=1.0)
    session.add(enrollment)
    session.flush()
    session.add_all([
        models.Embedding(enrollment_id=enrollment.id, speaker_id=speaker.id, model_version="test-4",
                         space="test-4", dim=4, vector=blob),
        models.Profile(speaker_id=speaker.id, space="test-4", model_version="test-4", dim=4,
                       vector=blob, n_embeddings=1),
        models.GalleryChange(space="test-4", speaker_id=speaker.id, op="upsert"),
    ])
    session.flush()
    return speaker


def _count(session, model, **filters) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model).filter_by(**filters))


@pytest.mark.parametrize("delete_with", ["orm", "sql"])
def test_deleting_a_speaker_cascades(session_factory, delete_with):
    with session_factory() as session:
        session.add(models.ModelVersion(name="test-4", role="enroll", dim=4,
                                        weights_sha256="f" * 64, state="active"))
        doomed = _speaker_with_data(session, "doomed")
        kept = _speaker_with_data(session, "kept")
        session.commit()
        doomed_id, kept_id = doomed.id, kept.id

    with session_factory() as session:
        if delete_with == "orm":
            session.delete(session.get(models.Speaker, doomed_id))
        else:  # the database's ON DELETE CASCADE alone (SQLite needs foreign_keys=ON)
            session.execute(sa.delete(models.Speaker).where(models.Speaker.id == doomed_id))
        session.commit()

    with session_factory() as session:
        for model in (models.Enrollment, models.Embedding, models.Profile):
            assert _count(session, model, speaker_id=doomed_id) == 0, model.__tablename__
            assert _count(session, model, speaker_id=kept_id) == 1, model.__tablename__
        # the change log has no foreign key: the delete must be announced after the row is gone
        assert _count(session, models.GalleryChange, speaker_id=doomed_id) == 1
        stored = session.scalars(sa.select(models.Profile)).one()
        np.testing.assert_array_equal(db.FloatVector.from_bytes(stored.vector, stored.dim),
                                      np.arange(4, dtype=np.float32))


def test_embedding_needs_a_registered_model_version(session_factory):
    with session_factory() as session:
        with pytest.raises(sa.exc.IntegrityError):
            _speaker_with_data(session, "orphan")


def test_constraints(session_factory):
    with session_factory() as session:
        session.add(models.Speaker(name="a", external_id="same"))
        session.commit()
        session.add(models.Speaker(name="b", external_id="same"))
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
        session.rollback()
        session.add(models.Job(kind="x", payload={}, status="paused"))
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()


def test_timestamps_are_timezone_aware_utc(session_factory):
    paris = dt.timezone(dt.timedelta(hours=2))
    with session_factory() as session:
        speaker = models.Speaker(name="tz")
        session.add(speaker)
        session.flush()
        session.add(models.Enrollment(speaker_id=speaker.id, status="done", audio_sha256="0" * 64,
                                      audio_bytes=1, duration_s=1.0,
                                      completed_at=dt.datetime(2024, 5, 1, 14, 0, tzinfo=paris)))
        session.commit()
    with session_factory() as session:
        speaker = session.scalars(sa.select(models.Speaker)).one()
        assert speaker.created_at.utcoffset() == dt.timedelta(0)
        assert abs(models.utcnow() - speaker.created_at) < dt.timedelta(minutes=1)
        enrollment = session.scalars(sa.select(models.Enrollment)).one()
        assert enrollment.completed_at == dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
        assert enrollment.completed_at.tzinfo == dt.timezone.utc
        # comparisons in SQL agree with the stored instant
        later = dt.datetime(2024, 5, 1, 12, 0, 1, tzinfo=dt.timezone.utc)
        assert session.scalar(sa.select(sa.func.count()).where(
            models.Enrollment.completed_at < later)) == 1

        speaker.updated_at = dt.datetime(2024, 1, 1)  # naive: ambiguous, rejected
        with pytest.raises(sa.exc.StatementError, match="naive datetime"):
            session.commit()


def test_gallery_change_ids_increase(session_factory):
    with session_factory() as session:
        rows = [models.GalleryChange(space="s", speaker_id=i, op="upsert") for i in range(3)]
        session.add_all(rows)
        session.commit()
        ids = [row.id for row in rows]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_sqlite_connection_settings(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with engine.connect() as connection:
            def pragma(name):
                return connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()
    assert db.is_sqlite("sqlite:///x.db")
    assert not db.is_sqlite("postgresql+psycopg://postgres@127.0.0.1/test")


def test_registry_migration_keeps_existing_data(database_url):
    """A database enrolled under revision 0001 upgrades to the registry schema with its
    speakers, embeddings and profiles intact, and downgrades back."""
    db.upgrade(database_url, "0001")
    engine = db.make_engine(database_url)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    vector = np.ones(192, np.float32).tobytes()
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO model_versions (id, name, role, dim, weights_sha256, state, created_at) "
                "VALUES (1, 'campplus-192', 'enroll', 192, :sha, 'active', :now)"), {"sha": "0" * 64, "now": now})
            connection.execute(sa.text("INSERT INTO speakers (id, name, created_at, updated_at) "
                                       "VALUES (1, 'Ada', :now, :now)"), {"now": now})
            connection.execute(sa.text(
                "INSERT INTO enrollments (id, speaker_id, status, audio_sha256, audio_bytes, duration_s, created_at) "
                "VALUES (1, 1, 'done', :sha, 10, 3.5, :now)"), {"sha": "0" * 64, "now": now})
            connection.execute(sa.text(
                "INSERT INTO embeddings (id, enrollment_id, speaker_id, model_version, space, dim, vector, created_at) "
                "VALUES (1, 1, 1, 'campplus-192', 'campplus-192', 192, :v, :now)"), {"v": vector, "now": now})
            connection.execute(sa.text(
                "INSERT INTO profiles (id, speaker_id, space, model_version, dim, vector, n_embeddings, updated_at) "
                "VALUES (1, 1, 'campplus-192', 'campplus-192', 192, :v, 1, :now)"), {"v": vector, "now": now})
        db.upgrade(database_url)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT n_bridged FROM profiles")).scalar_one() == 0
            row = connection.execute(sa.text("SELECT model_version, space, via_alignment FROM embeddings")).one()
            assert tuple(row) == ("campplus-192", "campplus-192", None)
            assert connection.execute(sa.text("SELECT count(*) FROM deployments")).scalar_one() == 0
        db.downgrade(database_url, "0001")
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM embeddings")).scalar_one() == 1
            assert connection.execute(sa.text("SELECT count(*) FROM profiles")).scalar_one() == 1
    finally:
        engine.dispose()
