"""Scoring runtime queries against candidate profiles with an alignment artifact.

``CandidateScorer`` is what identification, verification and diarization call: it turns
profiles into their query-independent half once (``prepare_candidates``), then scores
queries against them (``score_prepared``): raw features, S-norm against the artifact's
stored cohort where ``scoring["snorm"]`` says, and the calibration of the query's
duration band. Profiles with a runtime-space vector are scored with the fused
calibration, the others with the cross-model one.

The artifact is passed in (``AlignmentArtifact.scorer`` holds one per artifact), so the
cohort is transformed and the calibrations parsed once per artifact.
"""
from __future__ import annotations

import functools

import numpy as np

from nessa.duration_bands import DurationBands
from nessa.network import CCA_BRANCH_SHAPES, compile_source, unit_rows
from nessa.snorm import snorm_with_stats, top_k_stats
from speechcore.embedder import l2_normalise

#: query-side S-norm: which query vector (raw runtime or aligned) meets which cohort space
QUERY_COHORT_SPACES = {"cross_cosine": ("aligned", "aligned_target"), "runtime_cosine": ("runtime", "runtime"),
                       "aligned_runtime_cosine": ("aligned", "aligned_source"),
                       "cross_cosine_tower": ("aligned_tower", "aligned_target_tower"),
                       "aligned_runtime_cosine_tower": ("aligned_tower", "aligned_source_tower")}
#: profile-side S-norm: which prepared profile vectors meet which cohort space
PROFILE_COHORT_SPACES = {"cross_cosine": ("aligned_enroll", "aligned_source"),
                         "runtime_cosine": ("runtime", "runtime"),
                         "aligned_runtime_cosine": ("aligned_runtime", "aligned_source"),
                         "cross_cosine_tower": ("aligned_enroll_tower", "aligned_source_tower"),
                         "aligned_runtime_cosine_tower": ("aligned_runtime_tower", "aligned_source_tower")}
#: the raw scores ``score_candidates`` can fuse. ``*_tower``: the same comparison in the
#: trained tower's space alone (nn-twotower-cca, whose full space adds the CCA branch)
CANDIDATE_FEATURES = ("runtime_cosine", "cross_cosine", "aligned_runtime_cosine", "cross_cosine_tower",
                      "aligned_runtime_cosine_tower")
TOWER_FEATURES = ("cross_cosine_tower", "aligned_runtime_cosine_tower")
#: features compared in the whole space of a nn-twotower-cca artifact (tower + CCA branch)
FULL_SPACE_FEATURES = frozenset({"cross_cosine", "aligned_runtime_cosine"})
#: features that need the profile's runtime-space vector
RUNTIME_FEATURES = ("runtime_cosine", "aligned_runtime_cosine", "aligned_runtime_cosine_tower")


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


class CandidateScorer:
    def __init__(self, artifact):
        self.artifact = artifact
        self.bands = DurationBands(artifact.scoring, artifact.fusion, artifact.calibration)
        #: nn-twotower-cca: the comparison space is a trained tower plus a CCA branch, so
        #: the ``*_tower`` features exist
        self.has_tower_space = artifact.kind == "nn-twotower-cca"

    # ----------------------------------------------------------------- spaces
    @functools.cached_property
    def _tower_source_transform(self):
        """nn-twotower-cca: the source transform of its tower alone (compiled)."""
        return compile_source("nn-twotower", {k: v for k, v in self.artifact.kind_params.items()
                                              if k not in CCA_BRANCH_SHAPES})

    def _tower_part(self, aligned: np.ndarray) -> np.ndarray:
        """Unit vectors of the tower block of nn-twotower-cca outputs (their first k dims)."""
        return unit_rows(aligned[:, :self.artifact.params["weight"].shape[1]])

    @functools.cached_property
    def _cohort(self) -> dict:
        """The S-norm cohort in every space it is compared in, computed once per artifact."""
        artifact = self.artifact
        enroll = l2_normalise(artifact.params["cohort_enroll"])
        runtime = l2_normalise(artifact.params["cohort_runtime"])
        cohort = {"runtime": runtime, "aligned_target": artifact.transform_target(enroll),
                  "aligned_source": artifact.transform(runtime)}
        if self.has_tower_space:
            for space in ("aligned_target", "aligned_source"):
                cohort[f"{space}_tower"] = self._tower_part(cohort[space])
        return cohort

    @functools.cached_property
    def _cohort_transposed(self) -> dict:
        """The cohort matrices transposed and contiguous, for the per-query products
        (the profile side is prepared per candidate set)."""
        return {space: np.ascontiguousarray(vectors.T) for space, vectors in self._cohort.items()}

    # ----------------------------------------------------------------- profiles
    def prepare_candidates(self, profile_enroll: np.ndarray, profile_runtime: np.ndarray | None = None) -> dict:
        """Everything about the candidate profiles that does not depend on the query (their
        vectors in the comparison space, and their S-norm cohort statistics). A service may
        compute it once per profile set and reuse it for every query (``score_prepared``).
        Rows of ``profile_runtime`` that are all-NaN mark profiles without a runtime vector."""
        artifact = self.artifact
        enroll = np.atleast_2d(np.asarray(profile_enroll, dtype=np.float32))
        prepared = {"aligned_enroll": artifact.transform_target(enroll), "m": len(enroll),
                    "fused": np.zeros(len(enroll), dtype=bool)}
        if profile_runtime is not None:
            runtime = np.atleast_2d(np.asarray(profile_runtime, dtype=np.float32))
            present = ~np.isnan(runtime).any(axis=1)
            runtime = l2_normalise(np.where(present[:, None], runtime, 1.0).astype(np.float32))
            prepared.update(fused=present, runtime=runtime, aligned_runtime=artifact.transform(runtime))
        if self.has_tower_space:
            for key in ("aligned_enroll", "aligned_runtime"):
                if key in prepared:
                    prepared[f"{key}_tower"] = self._tower_part(prepared[key])
        snorm = artifact.scoring.get("snorm")
        if snorm:
            cohort, k = self._cohort, int(snorm["top_k"])
            prepared["snorm"] = {}
            for name in snorm["features"]:
                vectors, cohort_space = PROFILE_COHORT_SPACES[name]
                if vectors in prepared:
                    prepared["snorm"][name] = top_k_stats(prepared[vectors] @ cohort[cohort_space].T, k)
        return prepared

    # ----------------------------------------------------------------- queries
    def score_features(self, query_runtime: np.ndarray, prepared: dict,
                       needed: frozenset | None = None) -> dict[str, np.ndarray]:
        """Raw (N queries, M profiles) scores against prepared candidates, S-normalised where
        ``scoring["snorm"]`` says (NaN for profiles without a runtime vector). ``needed``:
        only these features are S-normalised (the others are left raw; None: all)."""
        artifact = self.artifact
        q = unit_rows(np.atleast_2d(np.asarray(query_runtime, dtype=np.float32)))
        if q.shape[1] != artifact.source_dim:
            raise ValueError(f"expected (N, {artifact.source_dim}) {artifact.source_version} embeddings, "
                             f"got {q.shape}")
        want = (lambda name: True) if needed is None else needed.__contains__
        queries, out = self._query_scores(q, prepared, needed, want)
        self._normalise(queries, out, prepared, want)
        if "runtime" in prepared and not prepared["fused"].all():
            for name in RUNTIME_FEATURES:
                if name not in out:
                    continue
                out[name] = out[name].copy()
                out[name][:, ~prepared["fused"]] = np.nan
        return out

    def _query_scores(self, q: np.ndarray, prepared: dict, needed, want) -> tuple[dict, dict]:
        """(the query in every space a feature reads, the raw features)."""
        tower_space = "aligned_enroll_tower" in prepared
        # the full comparison space only when a feature reads it: the fused path of a
        # nn-twotower-cca artifact needs its tower alone (no CCA branch per query)
        full_space = needed is None or not tower_space or bool(needed & FULL_SPACE_FEATURES)
        queries, out = {"runtime": q}, {}
        if full_space:
            queries["aligned"] = aligned_q = unit_rows(self.artifact.source_transform(q))
            out["cross_cosine"] = aligned_q @ prepared["aligned_enroll"].T
            if tower_space:  # [mix0 * unit(tower), mix1 * unit(cca)]: the tower block over mix0 is unit
                queries["aligned_tower"] = aligned_q[:, :prepared["aligned_enroll_tower"].shape[1]] * (
                    1.0 / self.artifact.params["mix"][0])
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
        return queries, out

    def _normalise(self, queries: dict, out: dict, prepared: dict, want) -> None:
        """S-norm of the features ``scoring["snorm"]`` names, in place."""
        snorm = self.artifact.scoring.get("snorm")
        if not (snorm and prepared.get("snorm")):
            return
        names = [name for name in prepared["snorm"] if name in out and want(name)]
        if not names:
            return
        cohort = self._cohort_transposed
        # every normalised feature's query-side cohort scores in one top-k pass (rows
        # stacked feature by feature; the cohort has the same speakers in every space)
        stacked = np.concatenate([queries[QUERY_COHORT_SPACES[name][0]] @ cohort[QUERY_COHORT_SPACES[name][1]]
                                  for name in names])
        mean, sd = top_k_stats(stacked, int(snorm["top_k"]))
        n = len(queries["runtime"])
        for i, name in enumerate(names):
            out[name] = snorm_with_stats(out[name], (mean[i * n:(i + 1) * n], sd[i * n:(i + 1) * n]),
                                         prepared["snorm"][name])

    def candidate_features(self, query_runtime: np.ndarray, profile_enroll: np.ndarray,
                           profile_runtime: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``score_features`` of freshly prepared candidates."""
        return self.score_features(query_runtime, self.prepare_candidates(profile_enroll, profile_runtime))

    # ----------------------------------------------------------------- calibrated scores
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
        features = self.score_features(query_runtime, prepared, self.bands.features_needed(fused))
        n = np.atleast_2d(np.asarray(query_runtime)).shape[0]
        llr = None
        for band, rows in self.bands.queries_by_band(seconds, n).items():
            fused_cal, cross_cal = self.bands.calibrations(band)
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
        """The LLR threshold for ``score_candidates`` scores (accept when ``llr >= threshold``;
        the calibration's default operating point if no ``name``)."""
        return self.bands.pooled(fused).threshold(name)
