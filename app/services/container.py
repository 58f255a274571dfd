"""Everything a process needs to serve requests or run jobs, built once from Settings."""
from __future__ import annotations

import contextlib
import functools
import logging

import sqlalchemy as sa

from app import db, models
from app.model_registry import load_embedder, model_identity, spec_for
from app.services.alignment import ActiveAlignment, register_discovered
from app.services.gallery import Gallery
from app.settings import Settings

log = logging.getLogger(__name__)


class SchemaNotReady(RuntimeError):
    pass


class Services:
    def __init__(self, settings: Settings):
        import torch

        torch.set_num_threads(max(1, settings.torch_threads))
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.audio_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = settings.resolved_database_url
        self.engine = db.make_engine(self.database_url)
        self.session_factory = db.make_session_factory(self.engine)
        self._check_schema()
        self.gallery = Gallery(self.session_factory, factory=settings.faiss_factory,
                               use_gpu=settings.faiss_use_gpu)
        self.alignment = ActiveAlignment(self.session_factory, settings.runtime_model, settings.enroll_model)
        with self.session() as session:
            register_discovered(session, [settings.bundled_artifacts_dir, settings.artifacts_dir],
                                source_version=settings.runtime_model, target_version=settings.enroll_model,
                                default_name=settings.default_alignment)
            session.commit()
        self.gallery.rebuild()

    def _check_schema(self) -> None:
        head = db.head_revision()
        current = db.current_revision(self.database_url)
        if current != head:
            raise SchemaNotReady(
                f"database schema is at {current or 'empty'}, expected {head}: run `nessa db upgrade`")

    @contextlib.contextmanager
    def session(self):
        with self.session_factory() as session:
            yield session

    # Models are loaded lazily: the web process needs only the runtime model and VAD,
    # the worker needs both embedders.
    @property
    def runtime_embedder(self):
        return load_embedder(self.settings.runtime_model)

    @property
    def enroll_embedder(self):
        return load_embedder(self.settings.enroll_model)

    @functools.cached_property
    def vad(self):
        from speechcore.vad import SileroVAD

        return SileroVAD()

    def ensure_model_version(self, session, version: str, *, state: str = "active") -> models.ModelVersion:
        """Record a model version the first time this database sees it."""
        row = session.scalar(sa.select(models.ModelVersion).filter_by(name=version))
        if row is None:
            spec = spec_for(version)
            row = models.ModelVersion(name=version, role=spec.role, dim=spec.dim,
                                      weights_sha256=model_identity(version).weights_sha256, state=state,
                                      details={"entry_point": spec.entry_point, "weights": "/".join(spec.weights),
                                               "licence": spec.licence})
            session.add(row)
            session.flush()
        return row

    def close(self) -> None:
        self.engine.dispose()
