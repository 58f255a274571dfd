"""Gallery calibration fits: the SQL the services share about them."""
from __future__ import annotations

import sqlalchemy as sa

from app.store import models


def add(session, **values) -> models.GalleryCalibrationFit:
    row = models.GalleryCalibrationFit(**values)
    session.add(row)
    session.flush()
    return row


def newest_id(session, alignment: str) -> int | None:
    """The id of the newest fit for an alignment (one small indexed query, run per request)."""
    return session.scalar(sa.select(models.GalleryCalibrationFit.id)
                          .where(models.GalleryCalibrationFit.alignment == alignment)
                          .order_by(models.GalleryCalibrationFit.id.desc()).limit(1))


def get(session, fit_id: int) -> models.GalleryCalibrationFit | None:
    return session.get(models.GalleryCalibrationFit, fit_id)


def newest(session, alignment: str) -> models.GalleryCalibrationFit | None:
    fit_id = newest_id(session, alignment)
    return None if fit_id is None else get(session, fit_id)


def changes_since(session, space: str, change_id: int) -> int:
    """Gallery membership changes in `space` logged after `change_id`."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(models.GalleryChange)
                              .where(models.GalleryChange.space == space, models.GalleryChange.id > change_id)))
