"""A trained alignment as a self-describing, versioned, checksummed directory.

Layout of ``<dir>/<name>/``::

    artifact.json   everything but the arrays: models on both sides (version, dim,
                    weights sha256), config, training data and its hash, dev metrics,
                    calibration (cross-model score only) and fusion (runtime + cross),
                    the command that reproduces it, creation time, and the sha256,
                    shapes and dtypes of the arrays in params.npz
    params.npz      the numeric parameters, written byte-for-byte deterministically

Loading needs nothing from training. ``kind`` selects how params turn a runtime
embedding into a comparable vector; adding a kind means adding one entry to ``KINDS``.
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
from typing import Callable

import numpy as np

from nessa.calibration import LogisticCalibration
from nessa.network import CCA_BRANCH_SHAPES, compile_source, unit_rows
from speechcore.embedder import l2_normalise

FORMAT_VERSION = 1
ARTIFACT_FILE = "artifact.json"
PARAMS_FILE = "params.npz"


class ArtifactError(ValueError):
    """An artifact that cannot be used (malformed, unknown kind, wrong models)."""


class ArtifactIntegrityError(ArtifactError):
    """The files on disk do not match their recorded checksums."""


@dataclasses.dataclass(frozen=True)
class AlignmentKind:
    #: param name -> shape, with "source_dim" / "target_dim" / "k" as symbolic sizes
    param_shapes: dict[str, tuple[str, ...]]
    #: (params, runtime embeddings) -> vectors in the comparison space (before normalising)
    transform_source: Callable[[dict, np.ndarray], np.ndarray]
    #: (params, enrollment embeddings) -> vectors in the same comparison space
    transform_target: Callable[[dict, np.ndarray], np.ndarray]


def _ridge_source(params: dict, x: np.ndarray) -> np.ndarray:
    # The predicted deviation from the enrollment-space mean; y_mean is left out on
    # purpose (see KINDS["ridge"]).
    return ((x - params["x_mean"]) / params["x_scale"]) @ params["weight"]


def _cca_source(params: dict, x: np.ndarray) -> np.ndarray:
    return ((x - params["x_mean"]) @ params["x_projection"]) * params["component_weights"]


def _cca_target(params: dict, y: np.ndarray) -> np.ndarray:
    return ((y - params["y_mean"]) @ params["y_projection"]) * params["component_weights"]


KINDS: dict[str, AlignmentKind] = {
    # Regression into the enrollment space; profiles' enrollment vectors are used as is.
    # The aligned query is the predicted deviation from the enrollment-space mean, without
    # the mean: ridge shrinks predictions towards the mean, which every profile shares, so
    # keeping it makes all cosines alike. Dropping it cut the 5-fold dev cross-model EER
    # from 9.3 % to 7.4 % (fused EER unchanged) while a plain dot product with the stored
    # profile vectors stays the right score.
    "ridge": AlignmentKind(
        param_shapes={"x_mean": ("source_dim",), "x_scale": ("source_dim",),
                      "weight": ("source_dim", "target_dim"), "y_mean": ("target_dim",)},
        transform_source=_ridge_source, transform_target=lambda params, y: y),
    # Shared space: both sides are projected onto k canonical components.
    "cca": AlignmentKind(
        param_shapes={"x_mean": ("source_dim",), "x_projection": ("source_dim", "k"),
                      "y_mean": ("target_dim",), "y_projection": ("target_dim", "k"),
                      "component_weights": ("k",)},
        transform_source=_cca_source, transform_target=_cca_target),
}


def _register_network_kinds() -> None:
    """The trained alignment networks (nessa.network): nn-linear, nn-mlp, nn-resmlp, nn-twotower."""
    from nessa.network import PARAM_SHAPES, TRANSFORMS

    for kind, shapes in PARAM_SHAPES.items():
        KINDS[kind] = AlignmentKind(param_shapes=shapes, transform_source=TRANSFORMS[kind][0],
                                    transform_target=TRANSFORMS[kind][1])


_register_network_kinds()

#: arrays an artifact may carry besides its kind's params: the S-norm cohort (one row per
#: cohort speaker, by each model), used by ``score_candidates`` when ``scoring["snorm"]``
OPTIONAL_PARAM_SHAPES = {"cohort_enroll": ("cohort", "target_dim"), "cohort_runtime": ("cohort", "source_dim")}
#: query-side S-norm: which query vector (raw runtime or aligned) meets which cohort space
QUERY_COHORT_SPACES = {"cross_cosine": ("aligned", "aligned_target"), "runtime_cosine": ("runtime", "runtime"),
                       "aligned_runtime_cosine": ("aligned", "aligned_source"),
                       "cross_cosine_tower": ("aligned_tower", "aligned_target_tower"),
                       "aligned_runtime_cosine_tower": ("aligned_tower", "aligned_source_tower")}
#: the raw scores ``score_candidates`` can fuse. ``*_tower``: the same comparison in the
#: trained tower's space alone (nn-twotower-cca, whose full space adds the CCA branch)
CANDIDATE_FEATURES = ("runtime_cosine", "cross_cosine", "aligned_runtime_cosine", "cross_cosine_tower",
                      "aligned_runtime_cosine_tower")
TOWER_FEATURES = ("cross_cosine_tower", "aligned_runtime_cosine_tower")
#: features compared in the whole space of a nn-twotower-cca artifact (tower + CCA branch)
FULL_SPACE_FEATURES = frozenset({"cross_cosine", "aligned_runtime_cosine"})
#: features that need the profile's runtime-space vector
RUNTIME_FEATURES = ("runtime_cosine", "aligned_runtime_cosine", "aligned_runtime_cosine_tower")


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


def top_k_stats(cohort_scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each row's ``top_k`` highest cohort scores (adaptive S-norm)."""
    k = max(1, min(int(top_k), cohort_scores.shape[1]))
    top = np.partition(cohort_scores, cohort_scores.shape[1] - k, axis=1)[:, -k:]
    mean = top.sum(axis=1) / k
    centred = top - mean[:, None]
    return mean, np.sqrt(np.einsum("ij,ij->i", centred, centred) / k) + 1e-6


def snorm_with_stats(scores: np.ndarray, query_stats, profile_stats) -> np.ndarray:
    (mean_q, sd_q), (mean_p, sd_p) = query_stats, profile_stats
    return 0.5 * ((scores - mean_q[:, None]) / sd_q[:, None] + (scores - mean_p[None, :]) / sd_p[None, :])


def adaptive_snorm(scores: np.ndarray, query_cohort: np.ndarray, profile_cohort: np.ndarray,
                   top_k: int) -> np.ndarray:
    """Adaptive symmetric score normalisation: ``scores`` (N, M); ``query_cohort`` (N, C) and
    ``profile_cohort`` (M, C) each side's scores against the cohort; the mean and sd of each
    side's ``top_k`` highest cohort scores normalise, and the two z-scores are averaged."""
    return snorm_with_stats(scores, top_k_stats(query_cohort, top_k), top_k_stats(profile_cohort, top_k))


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
    #: optional richer runtime scoring for ``score_candidates`` (empty: plain ``fusion`` /
    #: ``calibration`` on raw cosines). Keys: ``fused_features`` (names from
    #: CANDIDATE_FEATURES), ``snorm`` ({"top_k", "features"}: adaptive S-norm of those
    #: features against the stored cohort), ``fused`` / ``cross`` (LogisticCalibration
    #: dicts with thresholds, on the normalised features), ``duration_bands`` (list of
    #: {"max_seconds": float | None, "fused": dict, "cross": dict}: per query-duration
    #: calibrations, the last band open-ended), ``metrics`` (its dev figures)
    scoring: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ArtifactError(f"unknown alignment kind {self.kind!r}; known: {sorted(KINDS)}")
        # float32 on both sides of save/load, so transforms match exactly after a round trip
        self.params = {key: np.asarray(value, dtype=np.float32) for key, value in self.params.items()}
        self._check_params()

    # ----------------------------------------------------------------- structure
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
        return l2_normalise(self._source_transform(l2_normalise(x)))

    @functools.cached_property
    def _tower_source_transform(self):
        """nn-twotower-cca: the source transform of its tower alone (compiled)."""
        return compile_source("nn-twotower", {k: v for k, v in self._kind_params().items()
                                              if k not in CCA_BRANCH_SHAPES})

    @functools.cached_property
    def _source_transform(self):
        """The kind's source transform bound to these params (a compiled fast path where
        the kind has one)."""
        kind_params = self._kind_params()
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
    @property
    def cross_calibration(self) -> LogisticCalibration:
        return LogisticCalibration.from_dict(self.calibration)

    @property
    def fused_calibration(self) -> LogisticCalibration:
        return LogisticCalibration.from_dict(self.fusion)

    def score_cross(self, cross_cos) -> np.ndarray:
        """Calibrated LLR from the cross-model cosine alone (profiles without a runtime vector)."""
        return self.cross_calibration.llr(cross_cos)

    def score_fused(self, runtime_cos, cross_cos) -> np.ndarray:
        """Calibrated LLR fusing the symmetric runtime cosine and the cross-model cosine."""
        return self.fused_calibration.llr(runtime_cos, cross_cos)

    @property
    def operating_threshold(self) -> float:
        """The default LLR threshold of the fused score (the path most profiles take)."""
        return self.threshold(fused=True)

    def threshold(self, fused: bool = True, name: str | None = None) -> float:
        """LLR threshold (accept when ``llr >= threshold``); default operating point if no name."""
        return (self.fused_calibration if fused else self.cross_calibration).threshold(name)

    # ----------------------------------------------------------------- candidate scoring
    def _kind_params(self) -> dict:
        return {key: value for key, value in self.params.items() if key not in OPTIONAL_PARAM_SHAPES}

    @functools.cached_property
    def _cohort(self) -> dict:
        """Cohort statistics in every space the S-norm needs, computed once per artifact."""
        enroll = l2_normalise(self.params["cohort_enroll"])
        runtime = l2_normalise(self.params["cohort_runtime"])
        cohort = {"runtime": runtime, "aligned_target": self.transform_target(enroll),
                  "aligned_source": self.transform(runtime)}
        if self.has_tower_space:
            for space in ("aligned_target", "aligned_source"):
                cohort[f"{space}_tower"] = self._tower_part(cohort[space])
        return cohort

    @property
    def has_tower_space(self) -> bool:
        """Whether the comparison space is a trained tower plus a CCA branch (nn-twotower-cca),
        so the ``*_tower`` features exist."""
        return self.kind == "nn-twotower-cca"

    def _tower_part(self, aligned: np.ndarray) -> np.ndarray:
        """Unit vectors of the tower block of nn-twotower-cca outputs (their first k dims)."""
        return unit_rows(aligned[:, :self.params["weight"].shape[1]])

    def prepare_candidates(self, profile_enroll: np.ndarray, profile_runtime: np.ndarray | None = None) -> dict:
        """Everything about the candidate profiles that does not depend on the query (their
        vectors in the comparison space, and their S-norm cohort statistics). A service may
        compute it once per profile set and reuse it for every query (``score_prepared``).
        Rows of ``profile_runtime`` that are all-NaN mark profiles without a runtime vector."""
        enroll = np.atleast_2d(np.asarray(profile_enroll, dtype=np.float32))
        prepared = {"aligned_enroll": self.transform_target(enroll), "m": len(enroll),
                    "fused": np.zeros(len(enroll), dtype=bool)}
        if profile_runtime is not None:
            runtime = np.atleast_2d(np.asarray(profile_runtime, dtype=np.float32))
            present = ~np.isnan(runtime).any(axis=1)
            runtime = l2_normalise(np.where(present[:, None], runtime, 1.0).astype(np.float32))
            prepared.update(fused=present, runtime=runtime, aligned_runtime=self.transform(runtime))
        if self.has_tower_space:
            for key in ("aligned_enroll", "aligned_runtime"):
                if key in prepared:
                    prepared[f"{key}_tower"] = self._tower_part(prepared[key])
        snorm = self.scoring.get("snorm")
        if snorm:
            cohort, k = self._cohort, int(snorm["top_k"])
            profile_sides = {"cross_cosine": ("aligned_enroll", "aligned_source"),
                             "runtime_cosine": ("runtime", "runtime"),
                             "aligned_runtime_cosine": ("aligned_runtime", "aligned_source"),
                             "cross_cosine_tower": ("aligned_enroll_tower", "aligned_source_tower"),
                             "aligned_runtime_cosine_tower": ("aligned_runtime_tower", "aligned_source_tower")}
            prepared["snorm"] = {}
            for name in snorm["features"]:
                vectors, cohort_space = profile_sides[name]
                if vectors in prepared:
                    prepared["snorm"][name] = top_k_stats(prepared[vectors] @ cohort[cohort_space].T, k)
        return prepared

    def score_features(self, query_runtime: np.ndarray, prepared: dict,
                       needed: frozenset | None = None) -> dict[str, np.ndarray]:
        """Raw (N queries, M profiles) scores against prepared candidates, S-normalised where
        ``scoring["snorm"]`` says (NaN for profiles without a runtime vector). ``needed``:
        only these features are S-normalised (the others are left raw; None: all)."""
        q = unit_rows(np.atleast_2d(np.asarray(query_runtime, dtype=np.float32)))
        if q.shape[1] != self.source_dim:
            raise ValueError(f"expected (N, {self.source_dim}) {self.source_version} embeddings, got {q.shape}")
        want = (lambda name: True) if needed is None else needed.__contains__
        tower_space = "aligned_enroll_tower" in prepared
        # the full comparison space only when a feature reads it: the fused path of a
        # nn-twotower-cca artifact needs its tower alone (no CCA branch per query)
        full_space = needed is None or not tower_space or bool(needed & FULL_SPACE_FEATURES)
        queries, out = {"runtime": q}, {}
        if full_space:
            queries["aligned"] = aligned_q = unit_rows(self._source_transform(q))
            out["cross_cosine"] = aligned_q @ prepared["aligned_enroll"].T
            if tower_space:  # [mix0 * unit(tower), mix1 * unit(cca)]: the tower block over mix0 is unit
                queries["aligned_tower"] = aligned_q[:, :prepared["aligned_enroll_tower"].shape[1]] * (
                    1.0 / self.params["mix"][0])
        else:
            queries["aligned_tower"] = unit_rows(self._tower_source_transform(q))
        if tower_space and want("cross_cosine_tower"):
            out["cross_cosine_tower"] = queries["aligned_tower"] @ prepared["aligned_enroll_tower"].T
        if "runtime" in prepared:
            if want("runtime_cosine"):
                out["runtime_cosine"] = q @ prepared["runtime"].T
            if full_space and want("aligned_runtime_cosine"):
                out["aligned_runtime_cosine"] = queries["aligned"] @ prepared["aligned_runtime"].T
            if tower_space and want("aligned_runtime_cosine_tower"):
                out["aligned_runtime_cosine_tower"] = queries["aligned_tower"] @ prepared["aligned_runtime_tower"].T
        snorm = self.scoring.get("snorm")
        if snorm and prepared.get("snorm"):
            k = int(snorm["top_k"])
            cohort = self._cohort_transposed
            names = [name for name in prepared["snorm"] if name in out and want(name)]
            if names:
                # every normalised feature's query-side cohort scores in one top-k pass (rows
                # stacked feature by feature; the cohort has the same speakers in every space)
                stacked = np.concatenate([queries[QUERY_COHORT_SPACES[name][0]] @ cohort[QUERY_COHORT_SPACES[name][1]]
                                          for name in names])
                mean, sd = top_k_stats(stacked, k)
                n = len(q)
                for i, name in enumerate(names):
                    out[name] = snorm_with_stats(out[name], (mean[i * n:(i + 1) * n], sd[i * n:(i + 1) * n]),
                                                 prepared["snorm"][name])
        if "runtime" in prepared and not prepared["fused"].all():
            for name in RUNTIME_FEATURES:
                if name not in out:
                    continue
                out[name] = out[name].copy()
                out[name][:, ~prepared["fused"]] = np.nan
        return out

    @functools.cached_property
    def _cohort_transposed(self) -> dict:
        """The cohort matrices transposed and contiguous, for the per-query products
        (computed once per artifact; the profile side is prepared per candidate set)."""
        return {space: np.ascontiguousarray(vectors.T) for space, vectors in self._cohort.items()}

    def candidate_features(self, query_runtime: np.ndarray, profile_enroll: np.ndarray,
                           profile_runtime: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``score_features`` of freshly prepared candidates."""
        return self.score_features(query_runtime, self.prepare_candidates(profile_enroll, profile_runtime))

    def _band_index(self, seconds: float | None) -> int | None:
        bands = self.scoring.get("duration_bands")
        if not bands or seconds is None:
            return None
        for index, band in enumerate(bands):
            if band["max_seconds"] is None or seconds < band["max_seconds"]:
                return index
        return len(bands) - 1

    def _band_calibrations(self, band: int | None) -> tuple[LogisticCalibration, LogisticCalibration]:
        cache = self.__dict__.setdefault("_calibration_cache", {})
        if band not in cache:
            cache[band] = self._parse_band_calibrations(band)
        return cache[band]

    def _parse_band_calibrations(self, band: int | None) -> tuple[LogisticCalibration, LogisticCalibration]:
        if band is not None:
            entry = self.scoring["duration_bands"][band]
            return LogisticCalibration.from_dict(entry["fused"]), LogisticCalibration.from_dict(entry["cross"])
        if "fused" in self.scoring:
            return (LogisticCalibration.from_dict(self.scoring["fused"]),
                    LogisticCalibration.from_dict(self.scoring["cross"]))
        return self.fused_calibration, self.cross_calibration

    def _features_needed(self, fused: np.ndarray) -> frozenset:
        """The features the calibrations in play read (fused ones if any profile is fused,
        the cross-model ones if any is not), over every duration band."""
        key = (bool(fused.any()), bool(fused.all()))
        cache = self.__dict__.setdefault("_needed_cache", {})
        if key not in cache:
            names: set[str] = set()
            for band in [None] + list(range(len(self.scoring.get("duration_bands") or []))):
                fused_cal, cross_cal = self._band_calibrations(band)
                names |= set(fused_cal.features) if key[0] else set()
                names |= set() if key[1] else set(cross_cal.features)
            cache[key] = frozenset(names)
        return cache[key]

    @staticmethod
    def split_prepared(prepared: dict) -> list[dict]:
        """``prepare_candidates`` output as one entry per profile, so a service can cache the
        query-independent half of the scoring per profile (``merge_prepared`` reassembles)."""
        rows = []
        for i in range(prepared["m"]):
            row = {"m": 1}
            for key, value in prepared.items():
                if key == "snorm":
                    row[key] = {name: (mean[i:i + 1], sd[i:i + 1]) for name, (mean, sd) in value.items()}
                elif key != "m":
                    row[key] = value[i:i + 1]
            rows.append(row)
        return rows

    @staticmethod
    def merge_prepared(rows: list[dict]) -> dict:
        """Entries of ``split_prepared`` (from calls with the same kind of input: all with or
        all without runtime vectors) as one prepared candidate set, in the given order."""
        merged = {"m": sum(row["m"] for row in rows)}
        for key in rows[0]:
            if key == "snorm":
                merged[key] = {name: (np.concatenate([row[key][name][0] for row in rows]),
                                      np.concatenate([row[key][name][1] for row in rows]))
                               for name in rows[0][key]}
            elif key != "m":
                merged[key] = np.concatenate([row[key] for row in rows])
        return merged

    def score_candidates(self, query_runtime: np.ndarray, profile_enroll: np.ndarray,
                         profile_runtime: np.ndarray | None = None, *,
                         seconds=None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated LLRs of runtime queries against candidate profiles, vectorised.

        ``query_runtime``: (d_r,) or (N, d_r) runtime-model embeddings; ``profile_enroll``:
        (M, d_e) profiles' enrollment-space vectors; ``profile_runtime``: (M, d_r) their
        runtime-space vectors, a row of NaN (or None for all) where a profile has none;
        ``seconds``: the query's speech duration, or one per query (selects a duration
        band where the artifact has them). Returns ``(llr (N, M) or (M,), fused (M,) bool)``:
        fused profiles are scored with the fused calibration, the others with the
        cross-model one. Compare with ``candidate_threshold``."""
        return self.score_prepared(query_runtime, self.prepare_candidates(profile_enroll, profile_runtime),
                                   seconds=seconds)

    def score_prepared(self, query_runtime: np.ndarray, prepared: dict, *,
                       seconds=None) -> tuple[np.ndarray, np.ndarray]:
        """``score_candidates`` against ``prepare_candidates`` output (the per-query work only)."""
        single = np.asarray(query_runtime).ndim == 1
        fused = prepared["fused"]
        features = self.score_features(query_runtime, prepared, self._features_needed(fused))
        n = np.atleast_2d(np.asarray(query_runtime)).shape[0]
        if seconds is None or not self.scoring.get("duration_bands"):
            groups = {None: None}
        else:
            durations = np.broadcast_to(np.asarray(seconds, dtype=np.float64), (n,))
            groups = {}
            for row, value in enumerate(durations):
                groups.setdefault(self._band_index(None if np.isnan(value) else float(value)), []).append(row)
        llr = None
        for band, rows in groups.items():
            fused_cal, cross_cal = self._band_calibrations(band)
            part = {name: value if rows is None else value[rows] for name, value in features.items()}
            if fused.all():
                scores = fused_cal.llr(*[part[name] for name in fused_cal.features])
            else:
                scores = cross_cal.llr(*[part[name] for name in cross_cal.features])
                if fused.any():
                    scores = np.where(fused[None, :], fused_cal.llr(*[part[name] for name in fused_cal.features]),
                                      scores)
            if rows is None:
                llr = scores
            else:
                llr = np.empty((n, len(fused))) if llr is None else llr
                llr[rows] = scores
        return (llr[0] if single else llr), fused

    def candidate_threshold(self, fused: bool = True, name: str | None = None) -> float:
        """The LLR threshold for ``score_candidates`` scores (its own calibration's)."""
        if "fused" in self.scoring:
            return LogisticCalibration.from_dict(self.scoring["fused" if fused else "cross"]).threshold(name)
        return self.threshold(fused=fused, name=name)

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
