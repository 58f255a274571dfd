"""The only module that reads the environment. Everything else receives a Settings."""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping

from nessa.calibration import threshold_name

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PREFIX = "NESSA_"


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: pathlib.Path = REPO_ROOT / "var"
    #: SQLAlchemy URL; empty means the embedded default, a SQLite file under data_dir
    database_url: str = ""
    #: real speech for training and evaluation, read by tests, bench and scripts too: the one
    #: definition of where it lives (../shared/data beside the repository)
    shared_data_dir: pathlib.Path = REPO_ROOT.parent / "shared" / "data"
    #: directory of bundled (committed) alignment artifacts registered at start
    bundled_artifacts_dir: pathlib.Path = REPO_ROOT / "nessa" / "artifacts"
    #: the alignment activated on a database that has none active yet (a bundled artifact)
    default_alignment: str = "nessa-twotower-cca-ge2e256-to-campplus192-v3"
    enroll_model: str = "campplus-192"
    runtime_model: str = "ge2e-256"
    #: FAISS index factory string, e.g. "Flat", "HNSW32,Flat", "IVF1024,Flat"
    faiss_factory: str = "Flat"
    #: use a FAISS GPU build when one is installed and a GPU is visible
    faiss_use_gpu: bool = True
    max_upload_bytes: int = 50 * 1024 * 1024
    max_audio_seconds: float = 600.0
    #: uploads are rejected from their header, before decoding, outside these bounds: a
    #: declared rate or channel count decides how much work and memory decoding costs
    min_sample_rate: int = 4000
    max_sample_rate: int = 192000
    max_channels: int = 8
    #: the false-accept rate verify and identify decide at unless a request names another
    #: (0.01 or 0.001: the operating points every calibration carries a threshold for)
    far_target: float = 0.01
    #: refit the calibration on the gallery's own enrollments in the background and decide
    #: with it (stricter than the shipped one only; docs/calibration.md)
    gallery_calibration: bool = False
    #: verify refuses a claim as suspect when another enrolled profile scores at least the
    #: claimed profile's LLR plus this margin (negative: also when it comes within that of
    #: it); chosen on development speakers, docs/calibration-quality-suspect.md
    suspect_check: bool = True
    suspect_margin: float = -1.0
    min_enroll_speech_seconds: float = 3.0
    min_runtime_speech_seconds: float = 0.5
    retain_enrollment_audio: bool = True
    #: recordings longer than this are diarized by a background job (202) instead of inline
    diarize_inline_max_seconds: float = 120.0
    #: detect overlapped speech (pyannote segmentation-3.0) and label a second speaker there
    diarize_overlap_detection: bool = True
    #: run a job worker thread inside the web process (the `make run` default)
    in_process_worker: bool = False
    job_lease_seconds: float = 30.0
    job_max_attempts: int = 3
    worker_poll_seconds: float = 0.5
    torch_threads: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    #: HTTP server: request threads, open connections, and seconds a connection may stay
    #: silent (a client that stops sending its body is dropped after this)
    web_threads: int = 8
    #: server processes on the one port (each with its own models and profile index): a
    #: Python process uses about one core; 0 means one per CPU core (docs/architecture.md)
    web_workers: int = 1
    http_connection_limit: int = 1000
    http_channel_timeout_seconds: float = 20.0
    #: finished jobs (and their results) and old gallery change-log rows are deleted after
    #: these many days; 0 keeps them forever
    job_retention_days: float = 7.0
    gallery_change_retention_days: float = 1.0
    log_level: str = "INFO"

    def __post_init__(self):
        try:
            threshold_name(self.far_target)  # a target no calibration has a threshold for
        except ValueError as exc:
            raise ValueError(f"{PREFIX}FAR_TARGET: {exc}") from None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'nessa.db'}"

    @property
    def audio_dir(self) -> pathlib.Path:
        """Every voice recording the service keeps lives here (erasure and the orphan
        sweep rely on it): audio/<speaker id>/ for enrollments, audio/diarize/ for jobs."""
        return self.data_dir / "audio"

    @property
    def diarize_audio_dir(self) -> pathlib.Path:
        return self.audio_dir / "diarize"

    @property
    def artifacts_dir(self) -> pathlib.Path:
        return self.data_dir / "artifacts"

    @property
    def cache_dir(self) -> pathlib.Path:
        return self.data_dir / "cache"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Build settings from ``NESSA_*`` variables (e.g. NESSA_DATABASE_URL)."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(PREFIX + field.name.upper())
            if raw is None:
                continue
            values[field.name] = _coerce(field, raw)
        values.update(overrides)
        return cls(**values)


def _coerce(field: dataclasses.Field, raw: str):
    default = field.default
    if isinstance(default, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{PREFIX}{field.name.upper()} must be a boolean, got {raw!r}")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{field.name.upper()} must be a number, got {raw!r}") from None
    if isinstance(default, pathlib.Path):
        return pathlib.Path(raw).expanduser().resolve()
    return raw
