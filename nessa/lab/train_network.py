"""Train an alignment *network* (nessa.network) and save it as an artifact.

Same protocol as ``nessa.lab.train.train_alignment``: embed chunk pairs through the cache,
split the speakers of the primary corpus (the first one) into fit / dev, train on the fit
speakers (plus every speaker of the other corpora, weighted per domain), measure and
calibrate (cross-model score and fusion with the runtime cosine) on the dev trials,
then retrain the same configuration on all speakers and save.

The pieces: ``network_config`` (NetworkConfig), ``network_pairs`` (pairs, initialisation,
CCA branch, cohort), ``network_training`` (the task, the loop, checkpoints under
``<cache_dir>/../nessa-train/``), ``network_dev`` (dev scores and the scoring section).
"""
from __future__ import annotations

import os
import pathlib
import time
from typing import Callable, Sequence

import numpy as np

from nessa.artifact import AlignmentArtifact, utc_now
from nessa.lab.data import (Utterance, default_audio_loader, describe_utterances, embed_corpus, list_utterances,
                            speech_only_loader)
from nessa.lab.network_config import NetworkConfig
from nessa.lab.network_dev import network_cross_scores, scoring_section
from nessa.lab.network_pairs import add_cca_branch, build_pairs, cohort_vectors
from nessa.lab.network_training import fit_network
from nessa.lab.train import AlignmentConfig, build_dev_trials, dev_evaluation, evaluate_on_dev, split_speakers


def _median_clip_seconds(utterances: Sequence[Utterance], sample: int = 50) -> float:
    import soundfile as sf

    picked = list(utterances)[:: max(1, len(utterances) // sample)]
    return float(np.median([sf.info(path).duration for _, path in picked]))


def prepare_corpora(train_dirs: Sequence[str], config: NetworkConfig,
                    concat_dir: str | os.PathLike) -> list[tuple[str, list[Utterance]]]:
    """[(domain, utterances)] per training corpus; short-clip corpora concatenated per speaker."""
    from nessa.lab.corpora import concatenate_speaker_clips

    corpora = []
    for directory in train_dirs:
        domain = pathlib.Path(directory).name
        utterances = list_utterances(directory)
        if config.concatenate_below_seconds and _median_clip_seconds(utterances) < config.concatenate_below_seconds:
            root = concatenate_speaker_clips(directory, pathlib.Path(concat_dir) / f"{domain}-concat")
            utterances = list_utterances(root)
        corpora.append((domain, sorted(utterances)))
    return corpora


def train_network_alignment(source, target, corpora: Sequence[tuple[str, list[Utterance]]], *,
                            out_dir: str | os.PathLike, name: str, config: NetworkConfig | dict | None = None,
                            seed: int = 0, cache_dir: str | os.PathLike, progress: bool = True, command: str = "",
                            load_audio: Callable[[str], np.ndarray] | None = None,
                            data_sources: Sequence[str] = (),
                            base: AlignmentConfig | dict | None = None) -> AlignmentArtifact:
    """Embed, train on fit speakers, calibrate + fuse on dev speakers of the first corpus,
    retrain on all speakers, save ``<out_dir>/<name>/``. ``base`` carries the chunking,
    dev split and calibration settings of ``nessa.lab.train.AlignmentConfig`` (defaults: the
    shipped ridge's)."""
    config = NetworkConfig.from_any(config)
    base = AlignmentConfig.from_any(base)
    started = time.monotonic()
    all_utterances = sorted({u for _, utterances in corpora for u in utterances})
    data_description, data_sha256 = describe_utterances(all_utterances)
    load_audio = load_audio or default_audio_loader()
    if base.speech_only:
        load_audio = speech_only_loader(load_audio)
    files, domains = [], {}
    for domain, utterances in corpora:
        embedded = embed_corpus(utterances, source, target, base.chunk_spec(seed), cache_dir=cache_dir,
                                load_audio=load_audio, audio_tag="speech_only" if base.speech_only else "raw",
                                batch_size=base.batch_size, progress=progress)
        files += embedded
        domains.update({item.path: domain for item in embedded})
    embedded_at = time.monotonic()

    primary = {item.speaker for item in files if domains[item.path] == corpora[0][0]}
    fit_primary, dev_speakers = split_speakers(sorted(primary), base.dev_fraction, seed)
    all_speakers = {item.speaker for item in files}
    fit_speakers = all_speakers - set(dev_speakers)
    trials = build_dev_trials(files, set(dev_speakers))
    checkpoints = pathlib.Path(cache_dir).parent / "nessa-train"

    dev_log: list = []
    fit_pairs = build_pairs(files, domains, fit_speakers, config)
    params_dev = fit_network(fit_pairs, config, seed, checkpoint_dir=checkpoints, progress=progress, log=dev_log)
    primary_files = [item for item in files if domains[item.path] == corpora[0][0]]
    params_dev = add_cca_branch(params_dev, primary_files, set(fit_primary), config, base.cca_components)
    cross = network_cross_scores(config.kind, params_dev, trials)
    cross_calibration, fused_calibration, dev_report = evaluate_on_dev(cross, trials, base)

    all_pairs = build_pairs(files, domains, all_speakers, config)
    params = fit_network(all_pairs, config, seed, checkpoint_dir=checkpoints, progress=progress)
    params = add_cca_branch(params, primary_files, primary, config, base.cca_components)
    scoring = {}
    if config.rich_scoring:
        dev_cohort = cohort_vectors(primary_files, set(fit_primary)) if config.snorm_top_k else None
        scoring = scoring_section(config.kind, params_dev, dev_cohort, trials, config, base)
        if config.snorm_top_k:  # the shipped cohort: every speaker of the primary corpus
            params = {**params, **dict(zip(("cohort_enroll", "cohort_runtime"),
                                           cohort_vectors(primary_files, primary)))}
    finished = time.monotonic()
    evaluation = dev_evaluation(
        {"fit_speakers": len(fit_speakers), "dev_speakers": len(dev_speakers),
         "fit_pairs": int(len(fit_pairs.x)), "final_pairs": int(len(all_pairs.x))},
        dev_report, trials, extra={"training_log_dev_fit": dev_log},
        timing={"embedding": round(embedded_at - started, 1), "fitting": round(finished - embedded_at, 1)})
    domain_counts = {}
    for item in files:
        domain_counts.setdefault(domains[item.path], set()).add(item.speaker)
    artifact = AlignmentArtifact(
        name=name, kind=config.kind,
        source_version=source.version, source_dim=int(source.dim), source_weights_sha256=source.weights_sha256,
        target_version=target.version, target_dim=int(target.dim), target_weights_sha256=target.weights_sha256,
        params=params, config={**base.as_dict(), "kind": config.kind, "network": config.as_dict(), "seed": seed},
        data={**data_description, "n_utterances_used": len(files),
              "sources": [str(pathlib.PurePath(s)) for s in data_sources],
              "domains": {d: len(s) for d, s in sorted(domain_counts.items())},
              "fit_speakers": sorted(fit_speakers), "dev_speakers": dev_speakers},
        data_sha256=data_sha256, metrics=evaluation,
        calibration=cross_calibration.to_dict(), fusion=fused_calibration.to_dict(),
        command=command, created_at=utc_now(), scoring=scoring)
    artifact.save(out_dir)
    return artifact


def train_network_from_folders(source, target, train_dirs: Sequence[str], out_dir: str | os.PathLike, name: str,
                               config: NetworkConfig | dict | None = None, seed: int = 0,
                               cache_dir: str | os.PathLike = "var/cache/embeddings", command: str = "",
                               progress: bool = True, concat_dir: str | os.PathLike = "var/corpora",
                               base: AlignmentConfig | dict | None = None) -> AlignmentArtifact:
    """What ``nessa align train --arch ...`` calls. The first folder is the primary corpus
    (its speakers provide the dev split); the others only add training speakers, weighted by
    ``config.domain_weights`` (domain = folder name). Short-clip corpora (Speech Commands)
    are concatenated per speaker under ``concat_dir`` first."""
    if not train_dirs:
        raise ValueError("give at least one training corpus")
    config = NetworkConfig.from_any(config)
    corpora = prepare_corpora(train_dirs, config, concat_dir)
    return train_network_alignment(source, target, corpora, out_dir=out_dir, name=name, config=config, seed=seed,
                                   cache_dir=cache_dir, progress=progress, command=command,
                                   data_sources=[str(d) for d in train_dirs], base=base)
