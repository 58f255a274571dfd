"""A trained alignment as a self-describing, versioned, checksummed directory.

Layout of ``<dir>/<name>/``::

    artifact.json   everything but the arrays: models on both sides (version, dim,
                    weights sha256), config, training data and its hash, dev metrics,
                    calibration (cross-model score only) and fusion (runtime + cross),
                    the command that reproduces it, creation time, and the sha256,
                    shapes and dtypes of the arrays in params.npz
    params.npz      the numeric parameters, written byte-for-byte deterministically

Loading needs nothing from training. ``kind`` (``nessa.kinds``) selects how params turn
a runtime embedding into a comparable vector; ``AlignmentArtifact.scorer``
(``nessa.scoring``) scores queries against profiles with it.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import io
import json
import os
import pathlib
import zipfile

import numpy as np

from nessa.kinds import KINDS
from nessa.network import compile_source
from nessa.scoring import CandidateScorer
from speechcore.embedder import l2_normalise

FORMAT_VERSION = 1
ARTIFACT_FILE = "artifact.json"
PARAMS_FILE = "params.npz"
#: arrays an artifact may carry besides its kind's params: the S-norm cohort (one row per
#: cohort speaker, by each model), used by the scorer when ``scoring["snorm"]``
OPTIONAL_PARAM_SHAPES = {"cohort_enroll": ("cohort", "target_dim"), "cohort_runtime": ("cohort", "source_dim")}


class ArtifactError(ValueError):
    """An artifact that cannot be used (malformed, unknown kind, wrong models)."""


class ArtifactIntegrityError(ArtifactError):
    """The files on disk do not match their recorded checksums."""


def _jsonable(value):
    """Plain JSON types only, so that the serialisation (and the sha256) is canonical."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, pathlib.PurePath):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in artifact.json")


def params_to_bytes(params: dict[str, np.ndarray]) -> bytes:
    """An .npz archive whose bytes depend only on the arrays (np.savez stamps the time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(params):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            array_bytes = io.BytesIO()
            np.lib.format.write_array(array_bytes, np.ascontiguousarray(params[key]), allow_pickle=False)
            archive.writestr(info, array_bytes.getvalue())
    return buffer.getvalue()


def params_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@dataclasses.dataclass
class AlignmentArtifact:
    name: str
    kind: str
    source_version: str
    source_dim: int
    source_weights_sha256: str
    target_version: str
    target_dim: int
    target_weights_sha256: str
    params: dict[str, np.ndarray]
    config: dict = dataclasses.field(default_factory=dict)
    #: what it was trained on: sources, counts, speakers of the dev split
    data: dict = dataclasses.field(default_factory=dict)
    #: sha256 of the sorted list of "<speaker>/<file name> <size in bytes>" lines
    data_sha256: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)
    #: LogisticCalibration dict for the cross-model score alone
    calibration: dict = dataclasses.field(default_factory=dict)
    #: LogisticCalibration dict for (runtime cosine, cross-model cosine)
    fusion: dict = dataclasses.field(default_factory=dict)
    command: str = ""
    created_at: str = dataclasses.field(default_factory=utc_now)
    format_version: int = FORMAT_VERSION
    #: optional richer runtime scoring for ``scorer`` (empty: plain ``fusion`` /
    #: ``calibration`` on raw cosines). Keys: ``fused_features`` (names from
    #: nessa.scoring.CANDIDATE_FEATURES), ``snorm`` ({"top_k", "features"}: adaptive
    #: S-norm of those features against the stored cohort), ``fused`` / ``cross``
    #: (LogisticCalibration dicts with thresholds, on the normalised features),
    #: ``duration_bands`` (list of {"max_seconds": float | None, "fused": dict, "cross":
    #: dict}: per query-duration calibrations, the last band open-ended), ``metrics``
    #: (its dev figures)
    scoring: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ArtifactError(f"unknown alignment kind {self.kind!r}; known: {sorted(KINDS)}")
        # float32 on both sides of save/load, so transforms match exactly after a round trip
        self.params = {key: np.asarray(value, dtype=np.float32) for key, value in self.params.items()}
        self._check_params()

    def _check_params(self) -> None:
        expected = dict(KINDS[self.kind].param_shapes)
        expected.update({key: shape for key, shape in OPTIONAL_PARAM_SHAPES.items() if key in self.params})
        missing = sorted(set(expected) - set(self.params))
        extra = sorted(set(self.params) - set(expected))
        if missing or extra:
            raise ArtifactError(f"{self.kind} artifact {self.name!r}: missing params {missing}, unexpected {extra}")
        sizes = {"source_dim": self.source_dim, "target_dim": self.target_dim}
        for key, symbolic in expected.items():
            shape = self.params[key].shape
            if len(shape) != len(symbolic):
                raise ArtifactError(f"param {key} has shape {shape}, expected {symbolic}")
            for size, symbol in zip(shape, symbolic):
                if sizes.setdefault(symbol, size) != size:
                    raise ArtifactError(f"param {key} has shape {shape}, expected {symbolic} with {sizes}")

    @property
    def kind_params(self) -> dict:
        """The params of the kind's transforms (without the optional S-norm cohort)."""
        return {key: value for key, value in self.params.items() if key not in OPTIONAL_PARAM_SHAPES}

    @property
    def output_dim(self) -> int:
        """Dimension of the space where aligned queries and profiles are compared."""
        probe = self.transform(np.ones((1, self.source_dim), dtype=np.float32))
        return int(probe.shape[1])

    # ----------------------------------------------------------------- transforms
    def transform(self, x_source: np.ndarray) -> np.ndarray:
        """Runtime-model embeddings (N, source_dim) -> L2-normalised comparison vectors.

        For ``ridge`` these are (N, target_dim): their dot product with a profile's stored
        enrollment-space vector is the cross-model cosine. Kinds with a shared space (cca)
        also need ``transform_target`` on the profile side; ``cross_cosine`` does both.
        Inputs are L2-normalised first, as every embedder's outputs are during training.
        """
        x = np.asarray(x_source, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.source_dim:
            raise ValueError(f"expected (N, {self.source_dim}) {self.source_version} embeddings, got {x.shape}")
        return l2_normalise(self.source_transform(l2_normalise(x)))

    @functools.cached_property
    def source_transform(self):
        """The kind's source transform bound to these params, before normalising (a compiled
        fast path where the kind has one)."""
        kind_params = self.kind_params
        return compile_source(self.kind, kind_params) or (
            lambda x: KINDS[self.kind].transform_source(kind_params, x))

    def transform_target(self, y_target: np.ndarray) -> np.ndarray:
        """Enrollment-model embeddings -> the comparison space (only L2-normalised, for ridge)."""
        y = np.asarray(y_target, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] != self.target_dim:
            raise ValueError(f"expected (N, {self.target_dim}) {self.target_version} embeddings, got {y.shape}")
        return l2_normalise(KINDS[self.kind].transform_target(self.params, l2_normalise(y)))

    def cross_cosine(self, runtime_embeddings: np.ndarray, enrollment_vectors: np.ndarray) -> np.ndarray:
        """(N queries, M profiles) cosine between aligned queries and profiles' enrollment vectors."""
        return self.transform(runtime_embeddings) @ self.transform_target(enrollment_vectors).T

    # ----------------------------------------------------------------- scoring
    @functools.cached_property
    def scorer(self) -> CandidateScorer:
        """Scores runtime queries against candidate profiles with this alignment (one per
        artifact, so its cohort and calibrations are prepared once)."""
        return CandidateScorer(self)

    # ----------------------------------------------------------------- embedders
    def check_embedders(self, source, target) -> None:
        """Raise unless ``source``/``target`` are the exact models this alignment was trained for."""
        problems = []
        for side, model, version, dim, sha in (
                ("source", source, self.source_version, self.source_dim, self.source_weights_sha256),
                ("target", target, self.target_version, self.target_dim, self.target_weights_sha256)):
            if model.version != version or model.dim != dim:
                problems.append(f"{side} model is {model.version} ({model.dim}-d), artifact needs {version} ({dim}-d)")
            elif model.weights_sha256 != sha:
                problems.append(f"{side} model {version} weights sha256 {model.weights_sha256[:12]}... "
                                f"differ from the artifact's {sha[:12]}...")
        if problems:
            raise ArtifactError(f"alignment {self.name!r} does not fit these models: " + "; ".join(problems))

    # ----------------------------------------------------------------- persistence
    def _params_bytes(self) -> bytes:
        return params_to_bytes(self.params)

    def _manifest(self, params_bytes: bytes) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        if not fields["scoring"]:
            del fields["scoring"]  # artifacts without it keep their bytes (and sha256) unchanged
        fields["params_file"] = PARAMS_FILE
        fields["params_sha256"] = _sha256(params_bytes)
        fields["params_shapes"] = {key: list(value.shape) for key, value in sorted(self.params.items())}
        fields["params_dtype"] = "float32"
        return _jsonable(fields)

    def _json_bytes(self, params_bytes: bytes) -> bytes:
        return (json.dumps(self._manifest(params_bytes), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @property
    def sha256(self) -> str:
        """sha256 over artifact.json then params.npz, exactly as ``save`` writes them."""
        params_bytes = self._params_bytes()
        return _sha256(self._json_bytes(params_bytes) + params_bytes)

    @property
    def params_sha256(self) -> str:
        return _sha256(self._params_bytes())

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Write ``<directory>/<name>/``; returns that path. Files are replaced atomically."""
        target = pathlib.Path(directory) / self.name
        target.mkdir(parents=True, exist_ok=True)
        params_bytes = self._params_bytes()
        for file_name, data in ((PARAMS_FILE, params_bytes), (ARTIFACT_FILE, self._json_bytes(params_bytes))):
            temporary = target / f".{file_name}.tmp"
            temporary.write_bytes(data)
            os.replace(temporary, target / file_name)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "AlignmentArtifact":
        """Load ``directory`` (the ``<name>/`` folder), verifying the params checksum."""
        directory = pathlib.Path(directory)
        manifest_path, params_path = directory / ARTIFACT_FILE, directory / PARAMS_FILE
        if not manifest_path.is_file() or not params_path.is_file():
            raise ArtifactError(f"{directory} is not an alignment artifact (needs {ARTIFACT_FILE} and {PARAMS_FILE})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ArtifactIntegrityError(f"{manifest_path} is not valid JSON: {exc}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{manifest_path}: format_version {manifest.get('format_version')!r} "
                                f"is not supported (this code reads {FORMAT_VERSION})")
        params_bytes = params_path.read_bytes()
        actual = _sha256(params_bytes)
        if actual != manifest.get("params_sha256"):
            raise ArtifactIntegrityError(
                f"{params_path} has sha256 {actual}, but {ARTIFACT_FILE} records {manifest.get('params_sha256')}: "
                "the parameters were modified or corrupted; retrain or restore the artifact")
        fields = {f.name for f in dataclasses.fields(cls)} - {"params"}
        unknown = set(manifest) - fields - {"params_file", "params_sha256", "params_shapes", "params_dtype"}
        if unknown:
            raise ArtifactError(f"{manifest_path}: unknown fields {sorted(unknown)}")
        return cls(params=params_from_bytes(params_bytes), **{key: manifest[key] for key in fields if key in manifest})

    def summary(self) -> dict:
        """A short description for logs and the API (no arrays)."""
        return {"name": self.name, "kind": self.kind, "sha256": self.sha256,
                "source": f"{self.source_version} ({self.source_dim}-d)",
                "target": f"{self.target_version} ({self.target_dim}-d)",
                "created_at": self.created_at, "metrics": self.metrics.get("summary", {})}
