"""Shared fixtures.

The database under test comes from NESSA_TEST_DATABASE (``sqlite`` or ``postgresql``);
`make test` runs the suite once per database. PostgreSQL runs get a private schema per
test session, so parallel runs against the one `test` database never collide.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import uuid

import numpy as np
import pytest

from app.settings import Settings
from speechcore.embedder import Embedder, l2_normalise

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
#: real speech (NESSA_SHARED_DATA_DIR, default ../shared/data): the one definition, in app.settings
SHARED_DATA = Settings.from_env().shared_data_dir
POSTGRES_BASE_URL = os.environ.get(
    "NESSA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def hide_speechbrain_placeholders() -> dict:
    """Remove speechbrain's unloaded placeholders for optional integrations (flair, k2,
    transformers: not installed) from sys.modules and return them. Hypothesis scans every
    module in sys.modules with getattr(module, "__file__", None), at collection and while
    fuzzing; those placeholders raise ImportError there instead of AttributeError
    (speechbrain issue #2995), which breaks the whole run once any test imported speechbrain."""
    import sys

    if "speechbrain" not in sys.modules:
        return {}
    from speechbrain.utils.importutils import LazyModule

    hidden = {name: module for name, module in sys.modules.items()
              if isinstance(module, LazyModule) and module.lazy_module is None}
    for name in hidden:
        del sys.modules[name]
    return hidden


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    hide_speechbrain_placeholders()  # before hypothesis' own hook scans sys.modules


def requires_shared_data(*parts: str) -> pathlib.Path:
    """Return ../shared/data/<parts> or skip the test with a clear message."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real speech data not found at {path} "
                    "(clone the project with ../shared beside it, or set NESSA_SHARED_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    return requires_shared_data()


@pytest.fixture(scope="module")
def single_torch_thread():
    """Torch on one thread for a module, as the service runs (Settings.torch_threads = 1);
    keeps model timings sane on a busy machine. Use with pytest.mark.usefixtures."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Two utterances of each of three test-other speakers: enough to check that an embedder
# separates speakers, small enough to stay fast.
TEST_OTHER_SAMPLE = {"1688": "1688-142285", "2033": "2033-164914", "1998": "1998-15444"}
TEST_OTHER_SAMPLE_UTTERANCES = ("0000", "0001")


def load_test_other_sample(samples: slice = slice(None)):
    """(speaker labels, 16 kHz waveforms[samples]) of the sample above, or skip without data."""
    from speechcore.audio import load_audio_file

    speakers, wavs = [], []
    for speaker, prefix in TEST_OTHER_SAMPLE.items():
        for utterance in TEST_OTHER_SAMPLE_UTTERANCES:
            path = requires_shared_data("librispeech", "test-other", speaker, f"{prefix}-{utterance}.flac")
            speakers.append(speaker)
            wavs.append(load_audio_file(path)[samples])
    return speakers, wavs


def assert_speakers_separate(speakers, vectors, margin: float = 0.2) -> None:
    """Same-speaker cosines exceed different-speaker ones by `margin` on average, and every
    utterance's nearest other utterance is its own speaker's."""
    import numpy as np

    speakers = np.array(speakers)
    similarity = vectors @ vectors.T
    same = (speakers[:, None] == speakers[None, :]) & ~np.eye(len(speakers), dtype=bool)
    different = speakers[:, None] != speakers[None, :]
    assert similarity[same].mean() > similarity[different].mean() + margin
    for i in range(len(speakers)):
        others = np.where(np.arange(len(speakers)) == i, -np.inf, similarity[i])
        assert speakers[np.argmax(others)] == speakers[i]


# Synthetic speech for alignment training (tests/nessa): each speaker has its own tones and
# a fixed random layer stands in for each model, so training runs in seconds.
SR = 16000


class SpectralEmbedder(Embedder):
    """Deterministic fake model: band energies of the waveform through a fixed random layer."""

    sample_rate = SR

    def __init__(self, version: str, dim: int, seed: int):
        self.version, self.dim, self.role = version, dim, "runtime"
        self.weights_sha256 = f"{seed:064x}"
        self.projection = np.random.default_rng(seed).normal(size=(32, dim))

    def embed(self, batch):
        features = []
        for wav in batch:
            frames = np.lib.stride_tricks.sliding_window_view(wav, 512)[::256]
            spectrum = np.abs(np.fft.rfft(frames * np.hanning(512), axis=1)).mean(axis=0)[:256]
            bands = np.log(spectrum.reshape(32, 8).sum(axis=1) + 1e-6)
            features.append(np.tanh((bands - bands.mean()) @ self.projection / 8.0))
        return l2_normalise(np.stack(features))


def write_synthetic_corpus(root, n_speakers: int = 10, seconds: float = 6.0):
    """One file per speaker; each speaker has its own set of tone frequencies."""
    import soundfile as sf

    rng = np.random.default_rng(123)
    t = np.arange(int(seconds * SR)) / SR
    for speaker in range(n_speakers):
        frequencies = rng.uniform(200, 3500, size=4)
        wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t * (k + 1)))
                   for k, f in enumerate(frequencies))
        wave = 0.1 * wave / 4 + 0.01 * rng.normal(size=len(t))
        folder = root / f"spk{speaker:02d}"
        folder.mkdir(parents=True)
        sf.write(folder / "utt.wav", wave.astype(np.float32), SR)
    return root


def read_wav(path):
    import soundfile as sf

    wave, rate = sf.read(path, dtype="float32")
    assert rate == SR
    return wave


#: an AlignmentConfig small enough for the synthetic corpus
SMALL_CONFIG = {"speech_only": False, "chunk_seconds": [0.5, 1.0], "chunks_per_length": 3,
                "profile_window_seconds": 1.0, "test_seconds": [0.5, 1.0], "dev_fraction": 0.4,
                "ridge_alphas": [1e-3, 1e-1]}


# Synthetic embeddings for the evaluation harness (tests/nessa): speakers are latent
# vectors, each model a fixed linear view of them plus noise.
D_LATENT, D_ENROLL, D_RUNTIME = 16, 10, 14


class SyntheticProvider:
    """Speakers are latent vectors; each model is a fixed linear view plus noise. The
    enrollment model is noiseless when ``enroll_noise`` is 0 (a perfect system); shorter
    crops get more runtime noise."""

    def __init__(self, seed: int = 0, n_speakers: int = 5, per_speaker: int = 5, n_anchor_speakers: int = 20,
                 enroll_noise: float = 0.0, runtime_noise: float = 0.6):
        rng = np.random.default_rng(seed)
        self.rng_seed = seed
        self.view_e = rng.normal(size=(D_LATENT, D_ENROLL))
        self.view_r = rng.normal(size=(D_LATENT, D_RUNTIME))
        self.centres = rng.normal(size=(n_speakers, D_LATENT))
        self.per_speaker, self.n_anchor = per_speaker, n_anchor_speakers
        self.enroll_noise, self.runtime_noise = enroll_noise, runtime_noise

    def _views(self, rng, latent, noise_scale):
        """Enrollment-model and runtime-model embeddings of utterances of speakers ``latent``."""
        e = (latent + self.enroll_noise * noise_scale * rng.normal(size=latent.shape)) @ self.view_e
        r = (latent + self.runtime_noise * noise_scale * rng.normal(size=latent.shape)) @ self.view_r
        return l2_normalise(e), l2_normalise(r)

    def evaluation_set(self, conditions):
        from nessa.lab.evaluation.embeddings import EvalEmbeddings

        rng = np.random.default_rng([self.rng_seed, 1])
        labels = np.repeat(np.arange(len(self.centres)), self.per_speaker)
        enroll_full, runtime_full = self._views(rng, self.centres[labels], 1.0)
        tests = {}
        for condition in conditions:
            scale = 1.0 if condition.crop_seconds is None else 1.0 + 1.0 / condition.crop_seconds
            tests[condition.name] = (enroll_full, runtime_full) if condition.crop_seconds is None \
                else self._views(rng, self.centres[labels], scale)
        return EvalEmbeddings(speakers=np.asarray([f"s{i}" for i in labels]),
                              names=[f"s{i}/{k}" for k, i in enumerate(labels)],
                              enroll_full=enroll_full, runtime_full=runtime_full, tests=tests)

    def anchor_files(self):
        from nessa.lab.data import ROLE_CHUNK, ROLE_FULL, ROLE_PROFILE, ROLE_TEST, FileEmbeddings, SegmentPlan

        rng = np.random.default_rng([self.rng_seed, 2])
        roles = np.array([ROLE_CHUNK] * 6 + [ROLE_FULL] + [ROLE_PROFILE] * 2 + [ROLE_TEST] * 3, dtype=np.int8)
        files = []
        for speaker in range(self.n_anchor):
            centre = rng.normal(size=D_LATENT)
            e, r = self._views(rng, np.repeat(centre[None, :], len(roles), axis=0), 1.0)
            if self.enroll_noise == 0.0:  # a perfect enrollment model still varies a little in training
                e = l2_normalise(e + 0.05 * rng.normal(size=e.shape))
            plan = SegmentPlan(bounds=np.zeros((len(roles), 2), dtype=np.int64), roles=roles,
                               seconds=np.ones(len(roles), dtype=np.float32))
            files.append(FileEmbeddings(speaker=f"a{speaker:02d}", path=f"a{speaker:02d}.wav", plan=plan,
                                        source=r, target=e))
        return files


def synthetic_artifact(provider: SyntheticProvider):
    """A ridge artifact fitted on the provider's anchor corpus, with fixed calibrations."""
    from nessa import calibration as cal
    from nessa.artifact import AlignmentArtifact
    from nessa.lab.linear import fit_ridge

    x = np.concatenate([f.source for f in provider.anchor_files()])
    y = np.concatenate([f.target for f in provider.anchor_files()])
    ridge = fit_ridge(x, y, 0.1)
    calibration = cal.LogisticCalibration(("cross_cosine",), (10.0,), -5.0,
                                          thresholds={"far_1pct": 2.0, "far_0.1pct": 3.0})
    fusion = cal.LogisticCalibration(("runtime_cosine", "cross_cosine"), (8.0, 6.0), -7.0,
                                     thresholds={"far_1pct": 2.5, "far_0.1pct": 4.0})
    return AlignmentArtifact(name="synthetic-ridge", kind="ridge", source_version="fake-r", source_dim=D_RUNTIME,
                             source_weights_sha256="a" * 64, target_version="fake-e", target_dim=D_ENROLL,
                             target_weights_sha256="b" * 64, params=ridge.params(),
                             calibration=calibration.to_dict(), fusion=fusion.to_dict())


def _postgres_schema_url(base_url: str) -> tuple[str, str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options=-csearch_path%3D{schema}", schema


@pytest.fixture(scope="session")
def test_database_kind() -> str:
    return os.environ.get("NESSA_TEST_DATABASE", "sqlite")


@contextlib.contextmanager
def fresh_database(kind: str, tmp_dir: pathlib.Path):
    """A fresh, empty database (no tables): a SQLite file or a private PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_dir / 'test.db'}"
        return
    import sqlalchemy as sa

    url, schema = _postgres_schema_url(POSTGRES_BASE_URL)
    admin = sa.create_engine(POSTGRES_BASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL at {POSTGRES_BASE_URL} is not reachable: {exc}")
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def database_url(tmp_path, test_database_kind):
    """A fresh, empty database (no tables) for one test."""
    with fresh_database(test_database_kind, tmp_path) as url:
        yield url


@pytest.fixture
def session_factory(database_url):
    """A session factory on a fresh database migrated to head."""
    from app.store import db

    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    yield db.make_session_factory(engine)
    engine.dispose()


# -- the service under test ----------------------------------------------------------
class ServiceHarness:
    """A real app (real database, models, index) plus keys and helpers for tests."""

    def __init__(self, settings):
        from app import create_app
        from app.store import db
        from app.services.keys import create_api_key
        from app.services.container import Services

        db.upgrade(settings.resolved_database_url)
        self.settings = settings
        self.services = Services(settings)
        self.app = create_app(settings, services=self.services, start_worker=False)
        self.client = self.app.test_client()
        self.keys = {}
        with self.services.session() as session:
            for scope in ("enroll", "identify", "admin"):
                self.keys[scope], _ = create_api_key(session, name=f"test-{scope}", scopes=[scope])
            session.commit()

    def headers(self, scope: str = "admin") -> dict:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def drain_jobs(self, max_jobs: int = 1000, *, wait: bool = False, timeout_s: float = 600) -> int:
        """Run queued jobs to completion in this process (what a worker would do); with
        ``wait``, also jobs queued for later (a parent waiting on its children)."""
        from app.worker import run_pending

        return run_pending(self.services, worker_id="test-worker", wait=wait, timeout_s=timeout_s,
                           max_jobs=max_jobs)

    def create_speaker(self, name: str, **extra) -> int:
        response = self.client.post("/v1/speakers", json={"name": name, **extra}, headers=self.headers("enroll"))
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def upload(self, path_or_bytes, url: str, scope: str, **fields):
        import io

        data = path_or_bytes if isinstance(path_or_bytes, bytes) else pathlib.Path(path_or_bytes).read_bytes()
        form = {k: v for k, v in fields.items()}
        form["audio"] = (io.BytesIO(data), "audio.flac")
        return self.client.post(url, data=form, headers=self.headers(scope), content_type="multipart/form-data")

    def close(self):
        self.services.close()


def run_nessa(args, database_url, data_dir, check_ok=True):
    """The `nessa` command in a child process, on this database and data folder."""
    import subprocess
    import sys

    env = {**os.environ, "NESSA_DATABASE_URL": database_url, "NESSA_DATA_DIR": str(data_dir)}
    result = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    if check_ok:
        assert result.returncode == 0, result.stderr
    return result


def make_settings(tmp_path, database_url, **overrides):
    return Settings(data_dir=tmp_path / "data", database_url=database_url,
                    shared_data_dir=SHARED_DATA, **overrides)


@pytest.fixture
def harness(tmp_path, database_url):
    h = ServiceHarness(make_settings(tmp_path, database_url))
    yield h
    h.close()
