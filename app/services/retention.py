"""What the service keeps, and for how long: nothing of a person's voice outlives the rows
that need it, and the job queue and the gallery change log do not grow forever.

Workers run `Maintenance` between jobs (at start, then every MAINTENANCE_INTERVAL_SECONDS):
* audio files that no row owns are removed (a crash between writing an upload and
  committing its row, or between a delete's commit and the file removal, leaves such
  files), once they are older than ORPHAN_AUDIO_GRACE_SECONDS;
* finished jobs older than `job_retention_days` and change-log rows older than
  `gallery_change_retention_days` are deleted in small batches (0 keeps them forever).
Failed jobs give up their audio at once (`release_failed_enrollment_audio`, `remove_audio`).
docs/erasure.md explains what erasure guarantees on each database.
"""
from __future__ import annotations

import datetime as dt
import logging
import pathlib
import time

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from app.store import db, models
from app.services.diarization import DIARIZE_JOB

log = logging.getLogger(__name__)

#: an upload's file is written before the row that owns it commits, so a file without a
#: row may belong to a request still in flight. Only files older than this are orphans:
#: far longer than any request can take (upload, decoding and VAD of the longest audio
#: accepted), and longer than the clocks of hosts sharing the audio volume drift apart.
ORPHAN_AUDIO_GRACE_SECONDS = 3600.0
MAINTENANCE_INTERVAL_SECONDS = 3600.0
#: rows deleted per transaction: short transactions never hold SQLite's write lock long
PRUNE_BATCH_SIZE = 500
FINISHED_JOB_STATUSES = ("succeeded", "failed")
#: tables whose deleted rows the maintenance pass scrubs after pruning (db.scrub_deleted_rows)
PRUNED_TABLES = ("jobs", "gallery_changes")


def _days_ago(days: float) -> dt.datetime:
    return models.utcnow() - dt.timedelta(days=days)


# -- audio files --------------------------------------------------------------------------
def remove_audio(path: str | pathlib.Path | None) -> None:
    if path:
        pathlib.Path(path).unlink(missing_ok=True)


def release_failed_enrollment_audio(session, enrollment_id: int) -> str | None:
    """A failed enrollment is never embedded again, so its audio is not needed: forget it
    in the caller's transaction; the caller removes the returned file after committing."""
    failed = sa.and_(models.Enrollment.id == enrollment_id, models.Enrollment.status == "failed")
    path = session.scalar(sa.select(models.Enrollment.audio_path).where(failed))
    if path:
        session.execute(sa.update(models.Enrollment).where(failed).values(audio_path=None))
    return path


def remove_orphan_audio(services, *, grace_seconds: float = ORPHAN_AUDIO_GRACE_SECONDS) -> int:
    """Remove audio files under settings.audio_dir that no row owns and that are older than
    `grace_seconds`; returns how many. Files are matched to rows by name (a uuid), so a
    data directory mounted elsewhere does not make every file look orphaned. Folders this
    code does not know are left alone."""
    audio_dir = services.settings.audio_dir
    if not audio_dir.is_dir():
        return 0
    cutoff = time.time() - grace_seconds
    removed = 0
    for folder in sorted(p for p in audio_dir.iterdir() if p.is_dir()):
        with services.session() as session:
            owned = _owned_file_names(session, folder, services.settings)
            speaker_gone = folder.name.isdigit() and session.get(models.Speaker, int(folder.name)) is None
        if owned is None:
            continue
        for path in folder.glob("*.flac"):
            if path.name not in owned and _modified_before(path, cutoff):
                path.unlink(missing_ok=True)
                removed += 1
        if speaker_gone:
            # only a deleted speaker's folder: an upload for a live speaker may be about to write into its own
            _remove_if_empty(folder)
    if removed:
        log.info("removed %d orphaned audio files", removed)
    return removed


def _owned_file_names(session, folder: pathlib.Path, settings) -> set[str] | None:
    """Names of the files in `folder` that rows own, or None for a folder we do not manage."""
    if folder == settings.diarize_audio_dir:
        payloads = session.scalars(sa.select(models.Job.payload).where(
            models.Job.kind == DIARIZE_JOB, models.Job.status.in_(["queued", "running"])))
        return {pathlib.Path(p["audio_path"]).name for p in payloads if p and p.get("audio_path")}
    if folder.name.isdigit():
        paths = session.scalars(sa.select(models.Enrollment.audio_path).where(
            models.Enrollment.speaker_id == int(folder.name), models.Enrollment.audio_path.is_not(None)))
        return {pathlib.Path(p).name for p in paths}
    return None


def _modified_before(path: pathlib.Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:  # another worker's sweep, or its job, removed it meanwhile
        return False


def _remove_if_empty(folder: pathlib.Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# -- pruning ------------------------------------------------------------------------------
def prune_finished_jobs(session_factory, *, retention_days: float, batch_size: int = PRUNE_BATCH_SIZE) -> int:
    """Delete jobs that finished more than `retention_days` ago; returns how many.

    A family (a parent that fanned out and its children) goes only once all of it is old
    enough: a running parent counts its children and a finished one shows their summary.
    Children go first, so no batch cascades into an unbounded number of rows.
    """
    if retention_days <= 0:
        return 0
    cutoff = _days_ago(retention_days)
    child, parent, sibling = aliased(models.Job), aliased(models.Job), aliased(models.Job)

    def finished_before_cutoff(job):
        return sa.and_(job.status.in_(FINISHED_JOB_STATUSES), job.finished_at < cutoff)

    def not_finished_before_cutoff(job):  # spelled out: NOT of a NULL comparison is NULL
        return sa.or_(job.status.not_in(FINISHED_JOB_STATUSES), job.finished_at.is_(None), job.finished_at >= cutoff)

    parent_done = sa.exists().where(
        parent.id == models.Job.parent_id, finished_before_cutoff(parent),
        ~sa.exists().where(sibling.parent_id == parent.id, not_finished_before_cutoff(sibling)))
    prunable = sa.and_(finished_before_cutoff(models.Job),
                       ~sa.exists().where(child.parent_id == models.Job.id),
                       sa.or_(models.Job.parent_id.is_(None), parent_done))
    return _delete_in_batches(session_factory, models.Job, prunable, batch_size)


def prune_gallery_changes(session_factory, *, retention_days: float, batch_size: int = PRUNE_BATCH_SIZE) -> int:
    """Delete change-log rows older than `retention_days`; returns how many.

    Always a prefix of the ids (up to the newest old row), never a row above a kept one:
    a process that had not yet applied a pruned row then finds the oldest remaining id
    beyond the next one it expects, and rebuilds its index (ProfileIndex.sync).
    """
    if retention_days <= 0:
        return 0
    with session_factory() as session:
        newest_old = session.scalar(sa.select(sa.func.max(models.GalleryChange.id))
                                    .where(models.GalleryChange.created_at < _days_ago(retention_days)))
    if newest_old is None:
        return 0
    return _delete_in_batches(session_factory, models.GalleryChange, models.GalleryChange.id <= newest_old,
                              batch_size)


def _delete_in_batches(session_factory, table, condition, batch_size: int) -> int:
    deleted = 0
    while True:
        with session_factory() as session:
            ids = list(session.scalars(sa.select(table.id).where(condition).order_by(table.id).limit(batch_size)))
            if not ids:
                return deleted
            deleted += session.execute(sa.delete(table).where(table.id.in_(ids))
                                       .execution_options(synchronize_session=False)).rowcount
            session.commit()


# -- the periodic pass --------------------------------------------------------------------
def run_maintenance(services) -> dict:
    """One maintenance pass; returns what it removed."""
    settings = services.settings
    done = {"orphan_audio_files": remove_orphan_audio(services),
            "jobs": prune_finished_jobs(services.session_factory, retention_days=settings.job_retention_days),
            "gallery_changes": prune_gallery_changes(services.session_factory,
                                                     retention_days=settings.gallery_change_retention_days)}
    if done["jobs"] or done["gallery_changes"] or services.engine.dialect.name == "sqlite":
        # on SQLite also retries a checkpoint that a speaker delete could not complete
        db.scrub_deleted_rows(services.engine, PRUNED_TABLES)
    return done


class Maintenance:
    """Runs `run_maintenance` when due: at the first call, then every `interval_s`."""

    def __init__(self, services, *, interval_s: float = MAINTENANCE_INTERVAL_SECONDS):
        self._services = services
        self._interval_s = interval_s
        self._next_run = 0.0

    def run_if_due(self) -> None:
        if time.monotonic() < self._next_run:
            return
        self._next_run = time.monotonic() + self._interval_s
        try:
            done = run_maintenance(self._services)
        except Exception:  # a database hiccup must not stop the worker; next pass retries
            log.exception("maintenance pass failed")
            return
        if any(done.values()):
            log.info("maintenance: removed %s", done)
