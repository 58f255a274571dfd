"""`nessa eval` in one call: load the artifacts, embed the corpora, build every system, run
both protocols on every condition (see ``nessa.lab.evaluation`` for what is compared)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Sequence

from nessa.artifact import AlignmentArtifact, ArtifactError
from nessa.lab.evaluation.baselines import anchor_logit_system, anchor_vectors, fit_in_run_maps, map_system
from nessa.lab.evaluation.conditions import DEFAULT_CROPS, NoiseSpec, make_conditions
from nessa.lab.evaluation.embeddings import AudioEmbeddingProvider, EmbeddingProvider, EvalEmbeddings
from nessa.lab.evaluation.gallery_systems import gallery_systems
from nessa.lab.evaluation.protocols import (DEFAULT_DRAWS, DEFAULT_ENROLL_UTTERANCES, gain_recovered, not_run_row,
                                            profile_draws, run_all_pairs, run_profile)
from nessa.lab.evaluation.report import ROW_KEYS, EvaluationResult
from nessa.lab.evaluation.systems import PROTOCOLS, System, artifact_systems, symmetric_system

#: the artifacts bundled with the code
DEFAULT_ARTIFACTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "artifacts"
ENROLL_SYM, RUNTIME_SYM = "enroll_sym", "runtime_sym"


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What one run measures. ``eval_dir`` / ``anchors_dir`` / ``cache_dir`` are read only
    when the embeddings come from audio (no ``provider`` given to ``evaluate``)."""

    #: the evaluation corpus (<speaker>/<utterance> folders or a list file)
    eval_dir: str | os.PathLike | None = None
    #: the anchor speakers, also the corpus the in-run ridge / CCA are fitted on
    anchors_dir: str | os.PathLike | None = None
    cache_dir: str | os.PathLike | None = None
    #: paths or loaded artifacts (None: every artifact under nessa/artifacts that fits the
    #: embedders; given ones must load and fit)
    artifacts: Sequence | None = None
    #: test-side crop lengths (seconds), besides the full length
    crops: Sequence[float] = DEFAULT_CROPS
    #: profile protocol: seeded draws, utterances per profile
    draws: int = DEFAULT_DRAWS
    n_enroll: int = DEFAULT_ENROLL_UTTERANCES
    seed: int = 0
    #: noise added to the test side of every condition
    noise: NoiseSpec | None = None
    #: also ``<artifact>+adapted`` / ``+adapted+fused`` per artifact (profile protocol only):
    #: the alignment adapted on each draw's enrollment utterances alone (a dict: its AdaptConfig)
    adapt: bool | dict = False
    progress: bool = True


def discover_artifacts(directory: str | os.PathLike = DEFAULT_ARTIFACTS_DIR) -> list[pathlib.Path]:
    directory = pathlib.Path(directory)
    return sorted(p for p in directory.iterdir() if (p / "artifact.json").is_file()) if directory.is_dir() else []


def _load_artifacts(artifacts, explicit: bool) -> list[AlignmentArtifact]:
    loaded = []
    for item in artifacts:
        if isinstance(item, AlignmentArtifact):
            loaded.append(item)
            continue
        try:
            loaded.append(AlignmentArtifact.load(item))
        except ArtifactError as exc:
            if explicit:
                raise
            print(f"nessa eval: skipping {item}: {exc}")
    return loaded


def _fitting(artifacts: list[AlignmentArtifact], enroll_embedder, runtime_embedder,
             explicit: bool) -> list[AlignmentArtifact]:
    """The artifacts made for these two models (all of them when no embedders are given)."""
    if enroll_embedder is None or runtime_embedder is None:
        return artifacts
    fitting = []
    for artifact in artifacts:
        try:
            artifact.check_embedders(runtime_embedder, enroll_embedder)
            fitting.append(artifact)
        except ArtifactError as exc:
            if explicit:
                raise
            print(f"nessa eval: skipping {artifact.name}: {exc}")
    return fitting


def _systems(artifacts: list[AlignmentArtifact], data: EvalEmbeddings, anchors, maps,
             config: EvaluationConfig, extra_systems: Sequence[System]) -> list[System]:
    _, anchors_e, anchors_r = anchors
    systems = [symmetric_system(ENROLL_SYM, True), symmetric_system(RUNTIME_SYM, False),
               anchor_logit_system(anchors_e, anchors_r), map_system("ridge", "ridge", maps.ridge),
               map_system("cca", "cca", maps.cca)]
    for artifact in artifacts:
        systems += artifact_systems(artifact)
    if config.adapt:
        for artifact in artifacts:
            systems += gallery_systems(artifact, data, config.adapt if isinstance(config.adapt, dict) else None)
    systems += list(extra_systems)
    names = [system.name for system in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate system names: {names}")
    return systems


def _run_protocols(systems: list[System], data: EvalEmbeddings, conditions, config: EvaluationConfig):
    """(rows with the gain recovered, trials) of every system, condition and protocol."""
    draw_sets = profile_draws(data.speakers, config.n_enroll, config.draws, config.seed)
    rows, trials = [], {}
    for protocol in PROTOCOLS:
        for condition in conditions:
            for system in systems:
                if protocol not in system.protocols:
                    row, trial = not_run_row(), None
                elif protocol == "all_pairs":
                    row, trial = run_all_pairs(system, data, condition.name)
                else:
                    row, trial = run_profile(system, data, condition.name, draw_sets)
                rows.append({"system": system.name, "condition": condition.name, "protocol": protocol, **row})
                trials[(system.name, condition.name, protocol)] = trial
    by_key = {(r["system"], r["condition"], r["protocol"]): r for r in rows}
    for row in rows:
        runtime = by_key[(RUNTIME_SYM, row["condition"], row["protocol"])]["eer"]
        enroll = by_key[(ENROLL_SYM, row["condition"], row["protocol"])]["eer"]
        row["gain_recovered"] = gain_recovered(runtime, enroll, row["eer"])
    rows = [{key: row[key] for key in ROW_KEYS} | {k: v for k, v in row.items() if k not in ROW_KEYS}
            for row in rows]
    return rows, trials


def evaluate(config: EvaluationConfig, enroll_embedder=None, runtime_embedder=None, *,
             provider: EmbeddingProvider | None = None, extra_systems: Sequence[System] = ()) -> EvaluationResult:
    """Evaluate every system on every condition under both protocols.

    Artifacts are checked against the two embedders (when given). ``provider`` replaces
    audio + models (the embedders may then be None); ``extra_systems`` are scored too."""
    started = time.monotonic()
    explicit = config.artifacts is not None
    artifacts = _load_artifacts(discover_artifacts() if config.artifacts is None else config.artifacts, explicit)
    artifacts = _fitting(artifacts, enroll_embedder, runtime_embedder, explicit)
    if provider is None:
        provider = AudioEmbeddingProvider(enroll_embedder, runtime_embedder, config.eval_dir,
                                          anchors_dir=config.anchors_dir, cache_dir=config.cache_dir,
                                          crops=config.crops, seed=config.seed, progress=config.progress)
    conditions = make_conditions(config.crops, config.noise)
    data = provider.evaluation_set(conditions)
    anchor_files = provider.anchor_files()
    embedded = time.monotonic()

    anchors = anchor_vectors(anchor_files)
    maps = fit_in_run_maps(anchor_files)
    systems = _systems(artifacts, data, anchors, maps, config, extra_systems)
    rows, trials = _run_protocols(systems, data, conditions, config)
    info = {"seed": config.seed, "draws": config.draws, "n_enroll": config.n_enroll, "crops": list(config.crops),
            "noise": None if config.noise is None else dataclasses.asdict(config.noise),
            "n_utterances": len(data.speakers), "n_speakers": len(set(data.speakers.tolist())),
            "anchors": len(anchors[0]), "in_run_maps": maps.report,
            "artifacts": {a.name: a.sha256 for a in artifacts},
            "timing_seconds": {"embedding": round(embedded - started, 1),
                               "scoring": round(time.monotonic() - embedded, 1)}}
    return EvaluationResult(rows=rows, systems=[system.name for system in systems],
                            conditions=[c.name for c in conditions], protocols=list(PROTOCOLS), trials=trials,
                            info=info)
