"""model registry: deployments, path evaluations, audit log, bridged embeddings, job fan-out

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

* deployments: append-only history of the runtime path (the newest row is in force);
* path_evaluations: a candidate path measured against the path in force;
* registry_events: who registered / evaluated / activated / rolled back / retired what;
* model_versions and alignment_artifacts: an 'evaluated' state, the latest evaluation;
* embeddings: one vector per enrollment and *space* (a bridged vector comes from an older
  model through `via_alignment`); embeddings and profiles reference (space, dim) in
  model_versions, so a vector cannot be stored in a space of another dimension;
* jobs.parent_id: a job that fans out into children (re-embedding campaigns).
Existing rows are kept; downgrade drops what this revision added.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OLD_ARTIFACT_STATES = "state IN ('registered', 'active', 'retired')"
NEW_ARTIFACT_STATES = "state IN ('registered', 'evaluated', 'active', 'retired')"


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
        batch.add_column(_timestamp("updated_at", nullable=True))
    op.create_index("uq_model_versions_name_dim", "model_versions", ["name", "dim"], unique=True)

    with op.batch_alter_table("alignment_artifacts") as batch:
        batch.drop_constraint(op.f("ck_alignment_artifacts_state"), type_="check")
        batch.create_check_constraint(op.f("ck_alignment_artifacts_state"), NEW_ARTIFACT_STATES)
        batch.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
        batch.add_column(_timestamp("updated_at", nullable=True))

    with op.batch_alter_table("embeddings") as batch:
        batch.add_column(sa.Column("via_alignment", sa.String(200), nullable=True))
        batch.drop_constraint(op.f("uq_embeddings_enrollment_id_model_version"), type_="unique")
        batch.create_unique_constraint(op.f("uq_embeddings_enrollment_id_space"), ["enrollment_id", "space"])
        batch.create_foreign_key("fk_embeddings_space_dim_model_versions", "model_versions",
                                 ["space", "dim"], ["name", "dim"])
        batch.create_check_constraint(op.f("ck_embeddings_bridged_has_alignment"),
                                      "model_version = space OR via_alignment IS NOT NULL")

    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("n_bridged", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key("fk_profiles_space_dim_model_versions", "model_versions",
                                 ["space", "dim"], ["name", "dim"])

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_jobs_parent_id_jobs"), "jobs", ["parent_id"], ["id"], ondelete="CASCADE")
    op.create_index(op.f("ix_jobs_parent_id"), "jobs", ["parent_id"])

    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enrollment_space", sa.String(100), nullable=False),
        sa.Column("runtime_model", sa.String(100), nullable=False),
        sa.Column("alignment", sa.String(200), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=True),
        _timestamp("created_at"),
        sa.CheckConstraint("action IN ('bootstrap', 'activate', 'rollback')", name=op.f("ck_deployments_action")),
        sa.ForeignKeyConstraint(["enrollment_space"], ["model_versions.name"],
                                name=op.f("fk_deployments_enrollment_space_model_versions")),
        sa.ForeignKeyConstraint(["runtime_model"], ["model_versions.name"],
                                name=op.f("fk_deployments_runtime_model_model_versions")),
        sa.ForeignKeyConstraint(["alignment"], ["alignment_artifacts.name"],
                                name=op.f("fk_deployments_alignment_alignment_artifacts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
    )

    op.create_table(
        "path_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alignment", sa.String(200), nullable=False),
        sa.Column("baseline_alignment", sa.String(200), nullable=True),
        sa.Column("eval_set", sa.JSON(), nullable=False),
        sa.Column("candidate", sa.JSON(), nullable=False),
        sa.Column("baseline", sa.JSON(), nullable=True),
        sa.Column("tolerance", sa.JSON(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(["alignment"], ["alignment_artifacts.name"],
                                name=op.f("fk_path_evaluations_alignment_alignment_artifacts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_path_evaluations")),
    )
    op.create_index(op.f("ix_path_evaluations_alignment"), "path_evaluations", ["alignment"])

    op.create_table(
        "registry_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject_kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_events")),
    )
    op.create_index(op.f("ix_registry_events_subject"), "registry_events", ["subject"])


def downgrade() -> None:
    op.drop_index(op.f("ix_registry_events_subject"), table_name="registry_events")
    op.drop_table("registry_events")
    op.drop_index(op.f("ix_path_evaluations_alignment"), table_name="path_evaluations")
    op.drop_table("path_evaluations")
    op.drop_table("deployments")

    op.drop_index(op.f("ix_jobs_parent_id"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_parent_id_jobs"), type_="foreignkey")
        batch.drop_column("parent_id")

    with op.batch_alter_table("profiles") as batch:
        batch.drop_constraint("fk_profiles_space_dim_model_versions", type_="foreignkey")
        batch.drop_column("n_bridged")

    # bridged vectors have no place in the old schema (one vector per enrollment and model)
    op.execute("DELETE FROM embeddings WHERE via_alignment IS NOT NULL")
    with op.batch_alter_table("embeddings") as batch:
        batch.drop_constraint(op.f("ck_embeddings_bridged_has_alignment"), type_="check")
        batch.drop_constraint("fk_embeddings_space_dim_model_versions", type_="foreignkey")
        batch.drop_constraint(op.f("uq_embeddings_enrollment_id_space"), type_="unique")
        batch.create_unique_constraint(op.f("uq_embeddings_enrollment_id_model_version"),
                                       ["enrollment_id", "model_version"])
        batch.drop_column("via_alignment")

    op.execute("UPDATE alignment_artifacts SET state = 'registered' WHERE state = 'evaluated'")
    with op.batch_alter_table("alignment_artifacts") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("evaluation")
        batch.drop_constraint(op.f("ck_alignment_artifacts_state"), type_="check")
        batch.create_check_constraint(op.f("ck_alignment_artifacts_state"), OLD_ARTIFACT_STATES)

    op.drop_index("uq_model_versions_name_dim", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("evaluation")
