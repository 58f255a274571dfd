"""Everything a process needs to serve requests or run jobs, built once from Settings.

Building a `Services` opens the database and checks its schema, nothing more. What a
process that serves requests or runs jobs does once before its first one (the registry's
start-up writes) is `prepare()`; commands that only read or write a few rows (`nessa
keys`, `nessa db`) never pay for it. The profile index loads on first use.
"""
from __future__ import annotations

import contextlib
import functools
import threading

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.model_catalog import load_embedder
from app.services.gallery_calibration import GalleryCalibrations
from app.services.profile_index import ProfileIndex
from app.services.registry_startup import prepare_registry
from app.services.runtime_path import ActivePath, RuntimePath
from app.settings import Settings
from app.store import db
from speechcore.embedder import Embedder


class SchemaNotReady(RuntimeError):
    pass


class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    #: every space's profiles in memory, following the database's change log
    gallery: ProfileIndex
    #: the runtime path in force, read per request
    paths: ActivePath
    #: the gallery-aware calibration in force, read per request
    calibrations: GalleryCalibrations

    def __init__(self, settings: Settings):
        import torch

        torch.set_num_threads(max(1, settings.torch_threads))
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.audio_dir.mkdir(parents=True, exist_ok=True)
        self.engine = db.make_engine(self.database_url)
        self.session_factory = db.make_session_factory(self.engine)
        self._check_schema()
        self.gallery = ProfileIndex(self.session_factory, factory=settings.faiss_factory,
                                    use_gpu=settings.faiss_use_gpu)
        self.paths = ActivePath(self.session_factory)
        self.calibrations = GalleryCalibrations(settings.gallery_calibration)
        self._prepared = False
        self._prepare_lock = threading.Lock()

    @property
    def database_url(self) -> str:
        return self.settings.resolved_database_url

    def _check_schema(self) -> None:
        head = db.head_revision()
        current = db.current_revision(self.database_url)
        if current != head:
            raise SchemaNotReady(
                f"database schema is at {current or 'empty'}, expected {head}: run `nessa db upgrade`")

    def prepare(self) -> None:
        """Register the alignment artifacts found on disk and, on a database with no path in
        force, put one in force. Once (later calls return at once); processes
        starting together take turns under the registry lock."""
        with self._prepare_lock:
            if self._prepared:
                return
            settings = self.settings
            with self.session() as session:
                # settings choose the models only for a database that has no path in force
                # yet; after that the database decides (`nessa models activate` / rollback)
                prepare_registry(session, artifact_roots=[settings.bundled_artifacts_dir, settings.artifacts_dir],
                                 enroll_model=settings.enroll_model, runtime_model=settings.runtime_model,
                                 default_alignment=settings.default_alignment)
                session.commit()
            self._prepared = True

    @contextlib.contextmanager
    def session(self):
        with self.session_factory() as session:
            yield session

    def path(self) -> RuntimePath:
        """The runtime path in force, as one snapshot: use it for a whole request."""
        return self.paths.current()

    # Models are loaded lazily and once per process: the web process needs only the
    # runtime model and VAD, the worker needs the models it embeds with.
    @staticmethod
    def embedder(version: str) -> Embedder:
        return load_embedder(version)

    @property
    def runtime_embedder(self) -> Embedder:
        return load_embedder(self.path().runtime_model)

    @property
    def enroll_embedder(self) -> Embedder:
        return load_embedder(self.path().enrollment_space)

    @functools.cached_property
    def vad(self):
        from speechcore.vad import SileroVAD

        return SileroVAD()

    def close(self) -> None:
        self.engine.dispose()
