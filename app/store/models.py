"""ORM models. The tables are created only by the Alembic migrations in ``migrations/``;
tests/store/test_db.py checks that the two agree on SQLite and on PostgreSQL."""
from __future__ import annotations

import datetime as dt
import uuid as uuid_module
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names: identical on SQLite and PostgreSQL, so migrations can
# drop or alter constraints by name on both.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ENROLLMENT_STATUSES = ("queued", "processing", "done", "failed")
MODEL_ROLES = ("enroll", "runtime")
MODEL_STATES = ("registered", "evaluated", "active", "retired")
ARTIFACT_STATES = ("registered", "evaluated", "active", "retired")
DEPLOYMENT_ACTIONS = ("bootstrap", "activate", "rollback")
JOB_STATUSES = ("queued", "running", "succeeded", "failed")
GALLERY_OPS = ("upsert", "delete")


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC: the one clock behind every timestamp the app writes."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time zones: values are stored as
    naive UTC text (so string comparison in SQL is chronological) and come back with
    tzinfo=UTC. Naive datetimes are rejected rather than guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; use an aware UTC datetime")
        value = value.astimezone(dt.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# JSON columns store SQL NULL (not the JSON literal null) for None
JSONValue = sa.JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


#: SQLite hands out the highest rowid again after a delete unless the table says
#: AUTOINCREMENT; a public id must never name another person later (migration 0003)
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Speaker(Base):
    __tablename__ = "speakers"
    __table_args__ = (NEVER_REUSE_IDS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    external_id: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    # passive_deletes: the database's ON DELETE CASCADE removes children; the ORM does
    # not load them just to delete them
    enrollments: Mapped[list[Enrollment]] = relationship(
        back_populates="speaker", cascade="all, delete-orphan", passive_deletes=True)
    profiles: Mapped[list[Profile]] = relationship(
        back_populates="speaker", cascade="all, delete-orphan", passive_deletes=True)


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (
        sa.CheckConstraint(_one_of("status", ENROLLMENT_STATUSES), name="status"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: stable key of this enrollment, carried in its job's payload: a job writes results
    #: only for the exact enrollment (uuid and audio checksum) it was created for
    uuid: Mapped[str] = mapped_column(sa.String(32), unique=True, default=lambda: uuid_module.uuid4().hex)
    speaker_id: Mapped[int] = mapped_column(
        sa.ForeignKey("speakers.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    #: None when the audio is not retained after processing
    audio_path: Mapped[str | None] = mapped_column(sa.String(1024))
    audio_sha256: Mapped[str] = mapped_column(sa.String(64))
    audio_bytes: Mapped[int] = mapped_column(sa.Integer)
    duration_s: Mapped[float] = mapped_column(sa.Float)
    speech_s: Mapped[float | None] = mapped_column(sa.Float)
    source_format: Mapped[str | None] = mapped_column(sa.String(32))
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    speaker: Mapped[Speaker] = relationship(back_populates="enrollments")
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="enrollment", cascade="all, delete-orphan", passive_deletes=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        sa.CheckConstraint(_one_of("role", MODEL_ROLES), name="role"),
        sa.CheckConstraint(_one_of("state", MODEL_STATES), name="state"),
        # target of the (space, dim) foreign keys of embeddings and profiles: a vector can
        # only be stored in a space with the dimension of the model that defines it
        sa.Index("uq_model_versions_name_dim", "name", "dim", unique=True),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: e.g. "campplus-192"; also the name of the embedding space the model defines
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    dim: Mapped[int] = mapped_column(sa.Integer)
    weights_sha256: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16), default="registered")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    #: the latest path evaluation that involved this model (see PathEvaluation)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Embedding(Base):
    """One enrollment's vector in one space. Normally produced by the model that defines
    the space (model_version == space); a *bridged* embedding was produced by an older
    model and mapped into ``space`` by the alignment ``via_alignment`` (audio not retained)."""

    __tablename__ = "embeddings"
    __table_args__ = (
        sa.UniqueConstraint("enrollment_id", "space"),
        sa.Index(None, "space", "speaker_id"),
        sa.ForeignKeyConstraint(["space", "dim"], ["model_versions.name", "model_versions.dim"],
                                name="fk_embeddings_space_dim_model_versions"),
        sa.CheckConstraint("model_version = space OR via_alignment IS NOT NULL", name="bridged_has_alignment"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(
        sa.ForeignKey("enrollments.id", ondelete="CASCADE"))
    speaker_id: Mapped[int] = mapped_column(
        sa.ForeignKey("speakers.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(
        sa.String(100), sa.ForeignKey("model_versions.name"))
    #: the embedding space the vector lives in: the name of the model that defines it
    space: Mapped[str] = mapped_column(sa.String(100))
    dim: Mapped[int] = mapped_column(sa.Integer)
    #: float32, see app.store.db.FloatVector
    vector: Mapped[bytes] = mapped_column(sa.LargeBinary)
    #: the alignment artifact that bridged this vector into `space` (None: embedded directly)
    via_alignment: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    enrollment: Mapped[Enrollment] = relationship(back_populates="embeddings")


class Profile(Base):
    __tablename__ = "profiles"
    __table_args__ = (
        sa.UniqueConstraint("speaker_id", "space"),
        # the gallery of one space is loaded as a whole
        sa.Index(None, "space"),
        sa.ForeignKeyConstraint(["space", "dim"], ["model_versions.name", "model_versions.dim"],
                                name="fk_profiles_space_dim_model_versions"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    speaker_id: Mapped[int] = mapped_column(sa.ForeignKey("speakers.id", ondelete="CASCADE"))
    space: Mapped[str] = mapped_column(sa.String(100))
    model_version: Mapped[str] = mapped_column(
        sa.String(100), sa.ForeignKey("model_versions.name"))
    dim: Mapped[int] = mapped_column(sa.Integer)
    #: float32, see app.store.db.FloatVector
    vector: Mapped[bytes] = mapped_column(sa.LargeBinary)
    n_embeddings: Mapped[int] = mapped_column(sa.Integer)
    #: how many of those embeddings were bridged from an older space (not re-embedded)
    n_bridged: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    speaker: Mapped[Speaker] = relationship(back_populates="profiles")


class AlignmentArtifact(Base):
    __tablename__ = "alignment_artifacts"
    __table_args__ = (
        sa.CheckConstraint(_one_of("state", ARTIFACT_STATES), name="state"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    source_version: Mapped[str] = mapped_column(sa.String(100))
    target_version: Mapped[str] = mapped_column(sa.String(100))
    path: Mapped[str] = mapped_column(sa.String(1024))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16), default="registered")
    threshold: Mapped[float] = mapped_column(sa.Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    #: the latest path evaluation of this alignment (see PathEvaluation)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Deployment(Base):
    """Append-only history of the runtime path. The row with the highest id is the one
    in force: exactly one enrollment space and one runtime path (runtime model +
    alignment into that space) at a time, switched by inserting one row."""

    __tablename__ = "deployments"
    __table_args__ = (
        sa.CheckConstraint(_one_of("action", DEPLOYMENT_ACTIONS), name="action"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_space: Mapped[str] = mapped_column(sa.String(100), sa.ForeignKey("model_versions.name"))
    runtime_model: Mapped[str] = mapped_column(sa.String(100), sa.ForeignKey("model_versions.name"))
    alignment: Mapped[str] = mapped_column(sa.String(200), sa.ForeignKey("alignment_artifacts.name"))
    action: Mapped[str] = mapped_column(sa.String(16))
    actor: Mapped[str] = mapped_column(sa.String(200))
    #: the gate's figures (candidate vs the path it replaced), or why it was overridden
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PathEvaluation(Base):
    """A candidate runtime path measured against the path in force, same trials, same run."""

    __tablename__ = "path_evaluations"
    __table_args__ = (NEVER_REUSE_IDS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    alignment: Mapped[str] = mapped_column(sa.String(200), sa.ForeignKey("alignment_artifacts.name"), index=True)
    baseline_alignment: Mapped[str | None] = mapped_column(sa.String(200))
    eval_set: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    candidate: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    baseline: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    tolerance: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    passed: Mapped[bool] = mapped_column(sa.Boolean)
    actor: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegistryEvent(Base):
    """Audit log of the model registry: who changed what, when."""

    __tablename__ = "registry_events"
    __table_args__ = (sa.Index(None, "subject"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(sa.String(200))
    #: register, evaluate, activate, rollback, retire, reembed, bootstrap
    action: Mapped[str] = mapped_column(sa.String(32))
    #: model, alignment or deployment
    subject_kind: Mapped[str] = mapped_column(sa.String(16))
    subject: Mapped[str] = mapped_column(sa.String(200))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (NEVER_REUSE_IDS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    #: the first characters of the key, shown to users to tell keys apart
    prefix: Mapped[str] = mapped_column(sa.String(16), unique=True, index=True)
    #: sha256 hex of the full key; the key itself is never stored
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    #: comma-separated
    scopes: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: None: the key does not expire
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(_one_of("status", JOB_STATUSES), name="status"),
        # the claim query: runnable queued jobs in run_after order
        sa.Index(None, "status", "run_after"),
        # pruning finished jobs after the retention period
        sa.Index(None, "finished_at"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    #: a job that fans out into children (e.g. a re-embedding campaign) is their parent
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: the API key that created the job: its result is readable by that key or an admin key
    created_by_key_id: Mapped[int | None] = mapped_column(sa.ForeignKey("api_keys.id", ondelete="SET NULL"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=3)
    run_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(sa.String(200))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    progress: Mapped[float | None] = mapped_column(sa.Float)
    error: Mapped[str | None] = mapped_column(sa.Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class GalleryChange(Base):
    """Append-only change log of gallery membership per space.

    Every process keeps an in-memory FAISS index per space; it applies the rows with an
    id above the last one it has seen. No foreign key to speakers: a delete entry must
    outlive the speaker it removes.
    """

    __tablename__ = "gallery_changes"
    __table_args__ = (
        sa.CheckConstraint(_one_of("op", GALLERY_OPS), name="op"),
        sa.Index(None, "space", "id"),
        NEVER_REUSE_IDS,
    )

    # SQLite only autoincrements an INTEGER PRIMARY KEY
    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True)
    space: Mapped[str] = mapped_column(sa.String(100))
    speaker_id: Mapped[int] = mapped_column(sa.Integer)
    op: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class GalleryCalibrationFit(Base):
    """A gallery-aware calibration fitted on the gallery's own enrollments (issue #12): per
    scoring path, a strict map of the alignment's LLRs (nessa.gallery_calibration). The
    newest row for the alignment in force is what requests decide with; an empty ``maps``
    records that the gallery was too small, so the shipped calibration stays."""

    __tablename__ = "gallery_calibrations"
    __table_args__ = (sa.Index(None, "alignment", "id"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    alignment: Mapped[str] = mapped_column(sa.String(200), sa.ForeignKey("alignment_artifacts.name"))
    enrollment_space: Mapped[str] = mapped_column(sa.String(100))
    runtime_model: Mapped[str] = mapped_column(sa.String(100))
    #: speakers with a profile in the enrollment space, and enrollments scored as queries
    n_profiles: Mapped[int] = mapped_column(sa.Integer)
    n_enrollments: Mapped[int] = mapped_column(sa.Integer)
    #: the newest gallery change the fit saw: how far the gallery moved since is counted from it
    change_id: Mapped[int] = mapped_column(sa.BigInteger)
    #: scoring path -> GalleryCalibration map with its trial counts and figures ({}: shipped)
    maps: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    actor: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
