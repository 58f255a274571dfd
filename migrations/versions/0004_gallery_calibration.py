"""gallery calibration: fits of the calibration on the gallery's own enrollments

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

* gallery_calibrations: one row per fit (issue #12): the alignment it maps, the gallery it
  saw (profiles, enrollments, newest change id) and the per-path maps with their figures.
  Requests decide with the newest row of the alignment in force; an empty map keeps the
  shipped calibration. Downgrade drops the table (decisions fall back to the shipped one).
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "gallery_calibrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alignment", sa.String(200), nullable=False),
        sa.Column("enrollment_space", sa.String(100), nullable=False),
        sa.Column("runtime_model", sa.String(100), nullable=False),
        sa.Column("n_profiles", sa.Integer(), nullable=False),
        sa.Column("n_enrollments", sa.Integer(), nullable=False),
        sa.Column("change_id", sa.BigInteger(), nullable=False),
        sa.Column("maps", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["alignment"], ["alignment_artifacts.name"],
                                name=op.f("fk_gallery_calibrations_alignment_alignment_artifacts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gallery_calibrations")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_gallery_calibrations_alignment_id"), "gallery_calibrations", ["alignment", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_gallery_calibrations_alignment_id"), table_name="gallery_calibrations")
    op.drop_table("gallery_calibrations")
