"""initial schema

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Mirrors app/store/models.py; tests/store/test_db.py compares the two on SQLite and PostgreSQL.
Constraint names follow app.store.models.NAMING_CONVENTION and are spelled out (op.f) so the
same names exist on both databases.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "speakers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_speakers")),
        sa.UniqueConstraint("external_id", name=op.f("uq_speakers_external_id")),
    )

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        _timestamp("created_at"),
        sa.CheckConstraint("role IN ('enroll', 'runtime')", name=op.f("ck_model_versions_role")),
        sa.CheckConstraint("state IN ('registered', 'evaluated', 'active', 'retired')",
                           name=op.f("ck_model_versions_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
    )

    op.create_table(
        "enrollments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("speaker_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("audio_path", sa.String(1024), nullable=True),
        sa.Column("audio_sha256", sa.String(64), nullable=False),
        sa.Column("audio_bytes", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("speech_s", sa.Float(), nullable=True),
        sa.Column("source_format", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("completed_at", nullable=True),
        sa.CheckConstraint("status IN ('queued', 'processing', 'done', 'failed')",
                           name=op.f("ck_enrollments_status")),
        sa.ForeignKeyConstraint(["speaker_id"], ["speakers.id"], ondelete="CASCADE",
                                name=op.f("fk_enrollments_speaker_id_speakers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollments")),
    )
    op.create_index(op.f("ix_enrollments_speaker_id"), "enrollments", ["speaker_id"])

    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enrollment_id", sa.Integer(), nullable=False),
        sa.Column("speaker_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("space", sa.String(100), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(["enrollment_id"], ["enrollments.id"], ondelete="CASCADE",
                                name=op.f("fk_embeddings_enrollment_id_enrollments")),
        sa.ForeignKeyConstraint(["speaker_id"], ["speakers.id"], ondelete="CASCADE",
                                name=op.f("fk_embeddings_speaker_id_speakers")),
        sa.ForeignKeyConstraint(["model_version"], ["model_versions.name"],
                                name=op.f("fk_embeddings_model_version_model_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embeddings")),
        sa.UniqueConstraint("enrollment_id", "model_version",
                            name=op.f("uq_embeddings_enrollment_id_model_version")),
    )
    op.create_index(op.f("ix_embeddings_speaker_id"), "embeddings", ["speaker_id"])
    op.create_index(op.f("ix_embeddings_space_speaker_id"), "embeddings", ["space", "speaker_id"])

    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("speaker_id", sa.Integer(), nullable=False),
        sa.Column("space", sa.String(100), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("n_embeddings", sa.Integer(), nullable=False),
        _timestamp("updated_at"),
        sa.ForeignKeyConstraint(["speaker_id"], ["speakers.id"], ondelete="CASCADE",
                                name=op.f("fk_profiles_speaker_id_speakers")),
        sa.ForeignKeyConstraint(["model_version"], ["model_versions.name"],
                                name=op.f("fk_profiles_model_version_model_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiles")),
        sa.UniqueConstraint("speaker_id", "space", name=op.f("uq_profiles_speaker_id_space")),
    )
    op.create_index(op.f("ix_profiles_space"), "profiles", ["space"])

    op.create_table(
        "alignment_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source_version", sa.String(100), nullable=False),
        sa.Column("target_version", sa.String(100), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=True),
        _timestamp("created_at"),
        _timestamp("activated_at", nullable=True),
        sa.CheckConstraint("state IN ('registered', 'active', 'retired')",
                           name=op.f("ck_alignment_artifacts_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alignment_artifacts")),
        sa.UniqueConstraint("name", name=op.f("uq_alignment_artifacts_name")),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(500), nullable=False),
        _timestamp("created_at"),
        _timestamp("last_used_at", nullable=True),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_prefix"), "api_keys", ["prefix"], unique=True)

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        _timestamp("run_after"),
        _timestamp("lease_expires_at", nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        _timestamp("heartbeat_at", nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        _timestamp("created_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')",
                           name=op.f("ck_jobs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_status_run_after"), "jobs", ["status", "run_after"])

    op.create_table(
        "gallery_changes",
        # SQLite only autoincrements an INTEGER PRIMARY KEY
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("space", sa.String(100), nullable=False),
        sa.Column("speaker_id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("op IN ('upsert', 'delete')", name=op.f("ck_gallery_changes_op")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gallery_changes")),
    )
    op.create_index(op.f("ix_gallery_changes_space_id"), "gallery_changes", ["space", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_gallery_changes_space_id"), table_name="gallery_changes")
    op.drop_table("gallery_changes")
    op.drop_index(op.f("ix_jobs_status_run_after"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_api_keys_prefix"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("alignment_artifacts")
    op.drop_index(op.f("ix_profiles_space"), table_name="profiles")
    op.drop_table("profiles")
    op.drop_index(op.f("ix_embeddings_space_speaker_id"), table_name="embeddings")
    op.drop_index(op.f("ix_embeddings_speaker_id"), table_name="embeddings")
    op.drop_table("embeddings")
    op.drop_index(op.f("ix_enrollments_speaker_id"), table_name="enrollments")
    op.drop_table("enrollments")
    op.drop_table("model_versions")
    op.drop_table("speakers")
