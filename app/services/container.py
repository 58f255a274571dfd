"""Everything a process needs to serve requests or run jobs, built once from Settings."""
from __future__ import annotations

import contextlib
import functools
import logging

from app.store import db
from app.model_catalog import load_embedder
from app.services import registry
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
        self.paths = registry.ActivePath(self.session_factory)
        with self.session() as session:
            # settings choose the models only for a database that has no path in force yet;
            # after that the database decides (`nessa models activate` / rollback)
            registry.prepare_registry(session, artifact_roots=[settings.bundled_artifacts_dir, settings.artifacts_dir],
                                      enroll_model=settings.enroll_model, runtime_model=settings.runtime_model,
                                      default_alignment=settings.default_alignment)
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

    def path(self) -> registry.RuntimePath:
        """The runtime path in force, as one snapshot: use it for a whole request."""
        return self.paths.current()

    # Models are loaded lazily and once per process: the web process needs only the
    # runtime model and VAD, the worker needs the models it embeds with.
    @staticmethod
    def embedder(version: str):
        return load_embedder(version)

    @property
    def runtime_embedder(self):
        return load_embedder(self.path().runtime_model)

    @property
    def enroll_embedder(self):
        return load_embedder(self.path().enrollment_space)

    @functools.cached_property
    def vad(self):
        from speechcore.vad import SileroVAD

        return SileroVAD()

    def close(self) -> None:
        self.engine.dispose()
