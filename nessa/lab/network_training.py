"""Training an alignment network: the task, the training loop, checkpoints, soups and WiSE-FT.

As pyannote's Model hands its training to a Task, ``train_run`` hands what a run optimises
to an ``AlignmentTask`` (the model it starts from, its batches, learning-rate schedule and
losses) and keeps only the loop, with ``Checkpoints`` to resume it.

Training is seeded and resumable: one checkpoint per epoch under
``<checkpoint_dir>/<run key>/`` (the run key hashes config, seed and data); a rerun resumes
after the last completed epoch, with the same result as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Callable

import numpy as np
from tqdm import tqdm

from nessa.lab import losses
from nessa.lab.network_config import NetworkConfig
from nessa.lab.network_pairs import PairSet, initial_params
from nessa.lab.torch_alignment import build_module
from speechcore.embedder import l2_normalise

#: bump when the parameterisation changes, so that old checkpoints are not resumed
CHECKPOINT_VERSION = 2
#: NetworkConfig fields applied after a training run (they do not change a run's checkpoints)
POST_TRAINING_FIELDS = ("wise_alpha", "soup", "snorm_top_k", "fused_features", "snorm_features", "duration_bands",
                        "cca_branch", "cca_branch_shrinkage", "cca_branch_pairs")


class AlignmentTask:
    """What one run optimises on ``pairs`` as ``config`` says."""

    def __init__(self, pairs: PairSet, config: NetworkConfig):
        import torch

        self.pairs, self.config = pairs, config
        self.x, self.y = torch.from_numpy(pairs.x), torch.from_numpy(pairs.y)
        self.labels = torch.from_numpy(pairs.speaker.astype(np.int64))
        self.rows_by_speaker = [np.flatnonzero(pairs.speaker == s) for s in range(len(pairs.speakers))]
        # each speaker's mean target, the prototypes of the global (AAM) term
        self.centroids = torch.from_numpy(l2_normalise(np.stack([pairs.y[r].mean(axis=0)
                                                                 for r in self.rows_by_speaker])))
        self.sample_weight = torch.from_numpy(pairs.speaker_weight.astype(np.float32))[self.labels]

    def build_model(self, seed: int):
        """The module at its initial weights (``seed``; linear parts from ridge / CCA as the
        config says), with its training noise and frozen parts set."""
        config, pairs = self.config, self.pairs
        model = build_module(config.arch, pairs.x.shape[1], pairs.y.shape[1], hidden=config.hidden,
                             shared_dim=config.shared_dim, target_hidden=config.target_hidden,
                             init=initial_params(config, pairs), seed=seed)
        model.input_noise, model.dropout = config.input_noise, config.dropout
        if config.freeze_linear:
            for name in ("weight", "t_weight"):
                if hasattr(model, name):
                    getattr(model, name).requires_grad_(False)
        return model

    def learning_rate(self, global_step: int) -> float:
        """Cosine decay with one epoch of warm-up."""
        config = self.config
        warm = min(1.0, (global_step + 1) / max(1, config.steps_per_epoch))
        total_steps = config.epochs * config.steps_per_epoch
        return config.lr * warm * 0.5 * (1 + np.cos(np.pi * global_step / total_steps))

    def batches(self, batch_seed: int, epoch: int):
        """Row indices of each step of ``epoch``: ``speakers_per_batch`` speakers drawn by
        their weight, ``chunks_per_speaker`` pairs of each."""
        pairs, config = self.pairs, self.config
        rng = np.random.default_rng([batch_seed, epoch, 7])
        n_speakers = len(pairs.speakers)
        p = pairs.speaker_weight / pairs.speaker_weight.sum()
        per_batch = min(config.speakers_per_batch, n_speakers)
        row_p = None
        if config.long_pair_weight != 1.0:  # (the uniform case keeps its exact random stream)
            if pairs.seconds is None:
                raise ValueError("long_pair_weight needs pair durations")
            row_p = []
            for rows in self.rows_by_speaker:
                w = np.where(pairs.seconds[rows] >= config.long_seconds, config.long_pair_weight, 1.0)
                row_p.append(w / w.sum())
        for _ in range(config.steps_per_epoch):
            chosen = rng.choice(n_speakers, size=per_batch, replace=False, p=p)
            rows = [rng.choice(self.rows_by_speaker[s], size=config.chunks_per_speaker,
                               replace=len(self.rows_by_speaker[s]) < config.chunks_per_speaker,
                               p=None if row_p is None else row_p[s]) for s in chosen]
            yield np.concatenate(rows)

    def losses(self, model, rows: np.ndarray, anchors: dict) -> dict:
        """The weighted loss terms of one step on ``rows`` (``anchors``: the initial weights,
        for the L2-SP pull)."""
        import torch

        config = self.config
        normalize = torch.nn.functional.normalize
        index = torch.from_numpy(rows)
        xb, yb, lb, wb = self.x[index], self.y[index], self.labels[index], self.sample_weight[index]
        raw_a, raw_t = model.source(xb), model.target(yb)
        a, t = normalize(raw_a, dim=1), normalize(raw_t, dim=1)
        parts = {}
        if config.w_cosine:
            parts["cosine"] = config.w_cosine * losses.cosine_fidelity(a, t, wb)
        if config.w_mse:
            parts["mse"] = config.w_mse * losses.mse_fidelity(raw_a, raw_t, wb)
        if config.w_contrastive:
            parts["contrastive"] = config.w_contrastive * losses.supervised_contrastive(
                a, t, lb, config.temperature, wb)
        if config.w_target_contrastive:
            parts["target_contrastive"] = config.w_target_contrastive * losses.supervised_contrastive(
                t, t, lb, config.temperature, wb, exclude_self=True)
        if config.w_global:
            prototypes = normalize(model.target(self.centroids), dim=1)
            parts["global"] = config.w_global * losses.prototype_classification(
                a, prototypes, lb, config.global_scale, config.global_margin, wb)
        if config.l2_init:
            parts["l2_init"] = config.l2_init * sum(((value - anchors[name]) ** 2).sum()
                                                    for name, value in model.named_parameters())
        return parts


class Checkpoints:
    """One checkpoint per epoch in ``run_dir`` (None: no checkpoints), only the last kept."""

    def __init__(self, run_dir: pathlib.Path | None):
        self.run_dir = run_dir
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)

    def resume(self, model, optimiser, log: list | None) -> int:
        """Load the last checkpoint into ``model`` and ``optimiser`` (and its log into
        ``log``); returns the epoch to start from."""
        import torch

        done = sorted(self.run_dir.glob("epoch_*.pt")) if self.run_dir is not None else []
        if not done:
            return 0
        state = torch.load(done[-1], weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        if log is not None:
            log.extend(state.get("log", []))
        return state["epoch"] + 1

    def save(self, epoch: int, model, optimiser, log: list | None) -> None:
        import torch

        if self.run_dir is None:
            return
        path = self.run_dir / f"epoch_{epoch:03d}.pt"
        temporary = path.with_suffix(".tmp")
        torch.save({"epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "log": list(log or [])}, temporary)
        os.replace(temporary, path)
        for old in self.run_dir.glob("epoch_*.pt"):
            if old != path:
                old.unlink()


def run_key(config: NetworkConfig, seed: int, pairs: PairSet, batch_seed: int | None = None) -> str:
    """What shapes one training run, hashed (post-hoc soup / WiSE-FT settings do not)."""
    trained = {k: v for k, v in config.as_dict().items() if k not in POST_TRAINING_FIELDS}
    if config.long_pair_weight == 1.0:  # uniform sampling: the same runs (and keys) as before the option
        trained.pop("long_pair_weight"), trained.pop("long_seconds")
    identity = {"version": CHECKPOINT_VERSION, "config": trained, "seed": seed, "n": len(pairs.x),
                "x": hashlib.sha256(pairs.x.tobytes()).hexdigest(), "y": hashlib.sha256(pairs.y.tobytes()).hexdigest(),
                "speaker": hashlib.sha256(pairs.speaker.astype(np.int64).tobytes()).hexdigest(),
                "weights": pairs.speaker_weight.tolist()}
    if batch_seed is not None and batch_seed != seed:
        identity["batch_seed"] = batch_seed
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def train_run(pairs: PairSet, config: NetworkConfig, seed: int, batch_seed: int, *,
              checkpoint_dir: str | os.PathLike | None = None, progress: bool = True, log: list | None = None,
              eval_fn: Callable[[dict], dict] | None = None) -> tuple[dict, dict]:
    """One training run: (initial params, trained params). ``seed`` sets the initial
    weights, ``batch_seed`` the batch order (equal for a plain run)."""
    import torch

    torch.manual_seed(batch_seed)
    task = AlignmentTask(pairs, config)
    model = task.build_model(seed)
    initial = model.export_params()
    anchors = {name: value.detach().clone() for name, value in model.named_parameters()}
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    checkpoints = Checkpoints(None if checkpoint_dir is None
                              else pathlib.Path(checkpoint_dir) / run_key(config, seed, pairs, batch_seed))
    start_epoch = checkpoints.resume(model, optimiser, log)
    model.train()
    bar = tqdm(range(start_epoch, config.epochs), desc=f"training {config.kind}", unit="epoch",
               disable=not progress, initial=start_epoch, total=config.epochs)
    for epoch in bar:
        entry = _train_epoch(task, model, optimiser, anchors, batch_seed, epoch)
        if eval_fn is not None:
            entry.update(eval_fn(model.export_params()))
        if log is not None:
            log.append(entry)
        bar.set_postfix({k: v for k, v in entry.items() if k != "epoch"})
        checkpoints.save(epoch, model, optimiser, log)
    model.eval()
    return initial, model.export_params()


def _train_epoch(task: AlignmentTask, model, optimiser, anchors: dict, batch_seed: int, epoch: int) -> dict:
    """One epoch of steps; returns its mean losses."""
    steps = task.config.steps_per_epoch
    model.train()
    totals = {}
    for step, rows in enumerate(task.batches(batch_seed, epoch)):
        for group in optimiser.param_groups:
            group["lr"] = task.learning_rate(epoch * steps + step)
        parts = task.losses(model, rows, anchors)
        loss = sum(parts.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for key, value in {"loss": loss, **parts}.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach()) / steps
    return {"epoch": epoch, **{k: round(v, 5) for k, v in totals.items()}}


def fit_network(pairs: PairSet, config: NetworkConfig | dict | None = None, seed: int = 0, *,
                checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
                log: list | None = None, eval_fn: Callable[[dict], dict] | None = None) -> dict:
    """Train on ``pairs``; returns numpy params of kind ``config.kind``.

    ``eval_fn(params) -> dict`` is called after each epoch if given and its output appended
    to ``log``. ``config.soup`` > 1 averages that many runs (same initial weights, batch
    orders from seeds ``seed, seed+1, ...``); ``config.wise_alpha`` < 1 then interpolates
    the result towards the initial weights (WiSE-FT).
    """
    config = NetworkConfig.from_any(config)
    runs = [train_run(pairs, config, seed, batch_seed, checkpoint_dir=checkpoint_dir, progress=progress,
                      log=log if batch_seed == seed else None, eval_fn=eval_fn)
            for batch_seed in range(seed, seed + config.soup)]
    initial, trained = runs[0]
    if config.soup > 1:
        trained = {key: np.mean([run[1][key] for run in runs], axis=0).astype(np.float32) for key in trained}
    if config.wise_alpha != 1.0:
        alpha = np.float32(config.wise_alpha)
        trained = {key: (initial[key] + alpha * (value - initial[key])).astype(np.float32)
                   for key, value in trained.items()}
    return trained
