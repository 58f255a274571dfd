"""`nessa align learning-curve`: what more real training speakers buy.

For each count ``n`` of real training speakers (seeded subsets, ``repeats`` per count) an
alignment is fitted exactly as ``nessa align train`` fits it (ridge or CCA, the
regularisation chosen on held-out speakers *of the subset*; fusion weights fitted on those
dev trials), then measured on an evaluation corpus (test-other by default: a measurement,
nothing is selected on it) with the all-pairs protocol of ``nessa eval`` (enrollment:
full clean utterance, enrollment model; test: full / cropped speech, runtime model), for
the cross-model score alone and fused with the runtime cosine.

A trend ``EER(n) = a * n**-b + c`` (``scipy.optimize.curve_fit``; log-linear
``EER = a - b*ln n`` as fallback) is fitted per condition and inverted to project the
number of speakers at which the cross-model EER would reach the light model's own EER
(runtime model on both sides). ``inf`` means the fitted floor ``c`` lies above it.

Embedders are passed in; nessa/ imports neither the service nor the model packages.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Sequence

import numpy as np

from nessa import metrics
from nessa.calibration import LogisticCalibration
from nessa.kinds import KINDS
from nessa.lab.calibration_fit import fit_logistic_calibration
from nessa.lab.data import FileEmbeddings, default_audio_loader, embed_corpus, list_utterances, speech_only_loader
from nessa.lab.evaluation.conditions import DEFAULT_CROPS, make_conditions
from nessa.lab.evaluation.embeddings import AudioEmbeddingProvider
from nessa.lab.train import (AlignmentConfig, build_dev_trials, candidate_params, cross_scores, fit_params,
                            regression_pairs, split_speakers)
from speechcore.embedder import l2_normalise

DEFAULT_COUNTS = (25, 50, 100, 150, 200, 251)
METHODS = ("ridge", "cca", "twotower")
#: the shipped two-tower recipe (nessa/artifacts/nessa-twotower-...-v1), one corpus only
TWOTOWER_CONFIG = {"arch": "twotower", "shared_dim": 96, "init": "cca", "cca_shrinkage": 0.8, "epochs": 6,
                   "lr": 3e-4, "w_cosine": 1.0, "w_contrastive": 1.0, "w_global": 0.5}


# ============================================================================ trend
def power_law(n, a, b, c):
    return a * np.power(np.asarray(n, dtype=np.float64), -b) + c


def fit_trend(counts: Sequence[float], eers: Sequence[float], form: str = "power") -> dict:
    """Fit ``EER = a n^-b + c`` (c >= 0; ``form="power"``, falls back to log-linear if it
    fails) or ``EER = a - b ln n`` (``form="loglinear"``)."""
    from scipy.optimize import curve_fit

    n = np.asarray(counts, dtype=np.float64)
    y = np.asarray(eers, dtype=np.float64)
    try:
        if form != "power" or len(np.unique(n)) < 3:
            raise RuntimeError("need 3 distinct counts for a power law")
        start = (max(y.max() - y.min(), 1e-3) * n.min() ** 0.5, 0.5, max(y.min() * 0.5, 0.0))
        (a, b, c), _ = curve_fit(power_law, n, y, p0=start, bounds=([0, 0.01, 0], [np.inf, 5.0, np.inf]),
                                 maxfev=20000)
        residual = float(np.sqrt(np.mean((power_law(n, a, b, c) - y) ** 2)))
        return {"form": "power", "a": float(a), "b": float(b), "c": float(c), "rmse": residual}
    except (RuntimeError, ValueError):
        slope, intercept = np.polyfit(np.log(n), y, 1)
        residual = float(np.sqrt(np.mean((intercept + slope * np.log(n) - y) ** 2)))
        return {"form": "loglinear", "a": float(intercept), "b": float(-slope), "c": None, "rmse": residual}


def trend_value(trend: dict, n) -> np.ndarray:
    n = np.asarray(n, dtype=np.float64)
    if trend["form"] == "power":
        return power_law(n, trend["a"], trend["b"], trend["c"])
    return trend["a"] - trend["b"] * np.log(n)


def projected_speakers(trend: dict, target_eer: float) -> float:
    """Speakers at which the trend reaches ``target_eer`` (inf if it never does)."""
    if trend["form"] == "power":
        a, b, c = trend["a"], trend["b"], trend["c"]
        if target_eer <= c or a <= 0:
            return math.inf
        return float((a / (target_eer - c)) ** (1.0 / b))
    a, b = trend["a"], trend["b"]
    if b <= 0:
        return math.inf
    return float(math.exp((a - target_eer) / b))


# ============================================================================ fit + measure
@dataclasses.dataclass
class FittedAlignment:
    kind: str
    params: dict
    hyper: dict
    fusion: LogisticCalibration
    dev_eer: dict  # {"cross": %, "fused": %}


def fit_alignment(files: Sequence[FileEmbeddings], speakers: Sequence[str], method: str, seed: int = 0,
                  config: AlignmentConfig | None = None) -> FittedAlignment:
    """Ridge / CCA on ``speakers`` as nessa.lab.train does it: choose on a dev split of them,
    fit fusion weights on those dev trials, refit the map on every one of them."""
    if method == "twotower" or isinstance(method, dict):
        return _fit_network(files, speakers, TWOTOWER_CONFIG if method == "twotower" else method, seed)
    config = config or AlignmentConfig(kind=method)
    subset = [f for f in files if f.speaker in set(speakers)]
    fit, dev = split_speakers(sorted(set(speakers)), config.dev_fraction, seed)
    x_fit, y_fit = regression_pairs(subset, set(fit), config.regression_target)
    trials = build_dev_trials(subset, set(dev))
    mask = trials.is_target
    best = None
    for order, (hyper, params) in enumerate(candidate_params(method, x_fit, y_fit, config)):
        scores = cross_scores(method, params, trials)
        eer = metrics.equal_error_rate(scores[mask], scores[~mask])[0]
        key = (eer, -order)
        if best is None or key < best[0]:
            best = (key, hyper, params, scores)
    _, hyper, params, cross = best
    runtime = trials.test_source @ trials.profile_source.T
    stacked = np.stack([runtime.ravel(), cross.ravel()], axis=1)
    fusion = fit_logistic_calibration(stacked[mask.ravel()], stacked[~mask.ravel()],
                                          ("runtime_cosine", "cross_cosine"))
    fused = fusion.llr(runtime, cross)
    dev_eer = {"cross": 100 * best[0][0], "fused": 100 * metrics.equal_error_rate(fused[mask], fused[~mask])[0]}
    x_all, y_all = regression_pairs(subset, set(speakers), config.regression_target)
    return FittedAlignment(method, fit_params(method, x_all, y_all, hyper), hyper, fusion, dev_eer)


def _fit_network(files, speakers, network_config: dict, seed: int) -> FittedAlignment:
    """A network alignment: trained on the fit split for dev fusion weights, then on every speaker."""
    from nessa.lab.network_config import NetworkConfig
    from nessa.lab.network_dev import network_cross_scores
    from nessa.lab.network_pairs import build_pairs
    from nessa.lab.network_training import fit_network

    config = NetworkConfig.from_any(network_config)
    subset = [f for f in files if f.speaker in set(speakers)]
    domains = {f.path: "train" for f in subset}
    fit, dev = split_speakers(sorted(set(speakers)), AlignmentConfig().dev_fraction, seed)
    trials = build_dev_trials(subset, set(dev))
    mask = trials.is_target
    dev_params = fit_network(build_pairs(subset, domains, set(fit), config), config, seed, progress=False)
    cross = network_cross_scores(config.kind, dev_params, trials)
    runtime = trials.test_source @ trials.profile_source.T
    stacked = np.stack([runtime.ravel(), cross.ravel()], axis=1)
    fusion = fit_logistic_calibration(stacked[mask.ravel()], stacked[~mask.ravel()],
                                          ("runtime_cosine", "cross_cosine"))
    fused = fusion.llr(runtime, cross)
    dev_eer = {"cross": 100 * metrics.equal_error_rate(cross[mask], cross[~mask])[0],
               "fused": 100 * metrics.equal_error_rate(fused[mask], fused[~mask])[0]}
    params = fit_network(build_pairs(subset, domains, set(speakers), config), config, seed, progress=False)
    return FittedAlignment(config.kind, params, config.as_dict(), fusion, dev_eer)


def all_pairs_eers(data, score_fn) -> dict:
    """EER % per condition, all-pairs protocol of ``nessa eval``. ``score_fn(enroll_e, enroll_r,
    test_e, test_r) -> (tests, enrolled)`` scores."""
    n = len(data.speakers)
    same = data.speakers[:, None] == data.speakers[None, :]
    valid = ~np.eye(n, dtype=bool)
    out = {}
    for condition, (test_e, test_r) in data.tests.items():
        scores = np.asarray(score_fn(data.enroll_full, data.runtime_full, test_e, test_r), dtype=np.float64)
        out[condition] = 100 * metrics.equal_error_rate(scores[same & valid], scores[~same & valid])[0]
    return out


def measure(fitted: FittedAlignment, data) -> dict:
    """{"cross": {cond: EER %}, "fused": {...}} on the evaluation embeddings."""
    kind, params = fitted.kind, {k: np.asarray(v, dtype=np.float64) for k, v in fitted.params.items()}

    def cross(enroll_e, enroll_r, test_e, test_r):
        a = l2_normalise(KINDS[kind].transform_source(params, l2_normalise(test_r).astype(np.float64)))
        p = l2_normalise(KINDS[kind].transform_target(params, l2_normalise(enroll_e).astype(np.float64)))
        return a @ p.T

    def fused(enroll_e, enroll_r, test_e, test_r):
        return fitted.fusion.llr(l2_normalise(test_r) @ l2_normalise(enroll_r).T, cross(enroll_e, enroll_r,
                                                                                           test_e, test_r))

    return {"cross": all_pairs_eers(data, cross), "fused": all_pairs_eers(data, fused)}


def reference_eers(data) -> dict:
    """The light model alone (runtime_sym) and the enrollment model alone (enroll_sym)."""
    return {"runtime_sym": all_pairs_eers(data, lambda ee, er, te, tr: l2_normalise(tr) @ l2_normalise(er).T),
            "enroll_sym": all_pairs_eers(data, lambda ee, er, te, tr: l2_normalise(te) @ l2_normalise(ee).T)}


def learning_curve(files: Sequence[FileEmbeddings], data, *, counts: Sequence[int] = DEFAULT_COUNTS,
                   method: str = "ridge", repeats: int = 3, seed: int = 0, extra_points: dict | None = None,
                   progress: bool = False) -> dict:
    """The curve on precomputed embeddings: ``files`` (training corpus, nessa.lab.data chunking)
    and ``data`` (``nessa.lab.evaluation.embeddings.EvalEmbeddings``). ``extra_points``: label -> files
    of a larger corpus (e.g. every training corpus together), measured once and reported
    next to the curve (not used in the fit)."""
    if not (method in METHODS or isinstance(method, dict)):
        raise ValueError(f"method must be one of {METHODS} or a NetworkConfig dict")
    label = method if isinstance(method, str) else "network"
    started = time.monotonic()
    speakers = sorted({f.speaker for f in files})
    counts = sorted({min(int(c), len(speakers)) for c in counts})
    points = []
    for count in counts:
        n_repeats = 1 if count == len(speakers) else repeats
        for repeat in range(n_repeats):
            rng = np.random.default_rng([seed, count, repeat])
            subset = sorted(rng.choice(speakers, size=count, replace=False).tolist())
            fitted = fit_alignment(files, subset, method, seed=seed + repeat)
            result = measure(fitted, data)
            points.append({"n_speakers": count, "repeat": repeat, "hyper": fitted.hyper,
                           "dev_eer": fitted.dev_eer, **result})
            if progress:
                print(f"  {method} n={count} r={repeat}: cross {result['cross']} fused {result['fused']}", flush=True)
    references = reference_eers(data)
    conditions = list(data.tests)
    # Cross-model score: when does it match the light model alone? Fused score (already
    # below it): when would it match the enrollment model alone?
    goal = {"cross": "runtime_sym", "fused": "enroll_sym"}
    trends, projections = {}, {}
    for score in ("cross", "fused"):
        for condition in conditions:
            for form in ("power", "loglinear"):
                trend = fit_trend([p["n_speakers"] for p in points], [p[score][condition] for p in points], form)
                key = f"{score}/{condition}" + ("" if form == "power" else "/loglinear")
                trends[key] = trend
                projections[key] = projected_speakers(trend, references[goal[score]][condition])
    extra = {}
    for label, extra_files in (extra_points or {}).items():
        n_extra = len({f.speaker for f in extra_files})
        fitted = fit_alignment(extra_files, sorted({f.speaker for f in extra_files}), method, seed=seed)
        extra[label] = {"n_speakers": n_extra, "hyper": fitted.hyper, "dev_eer": fitted.dev_eer,
                        **measure(fitted, data)}
    return {"method": label, "counts": counts, "repeats": repeats, "seed": seed, "conditions": conditions,
            "points": points, "references": references, "trends": trends,
            "projection_goal": goal, "projected_speakers": projections, "extra_points": extra,
            "seconds": round(time.monotonic() - started, 1)}


def summary_table(curve: dict) -> str:
    """Markdown: mean EER per count (cross / fused), the trend and its projection."""
    conditions = curve["conditions"]
    lines = [f"Method `{curve['method']}`; EER % on the evaluation set (all pairs), mean over repeats "
             f"(cross-model only / fused).", "",
             "| speakers | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
    for count in curve["counts"]:
        rows = [p for p in curve["points"] if p["n_speakers"] == count]
        cells = [f"{np.mean([r['cross'][c] for r in rows]):.2f} / {np.mean([r['fused'][c] for r in rows]):.2f}"
                 for c in conditions]
        lines.append(f"| {count} (×{len(rows)}) | " + " | ".join(cells) + " |")
    for label, extra in curve["extra_points"].items():
        cells = [f"{extra['cross'][c]:.2f} / {extra['fused'][c]:.2f}" for c in conditions]
        lines.append(f"| {label}: {extra['n_speakers']} | " + " | ".join(cells) + " |")
    ref = curve["references"]
    lines.append("| light model alone (runtime_sym) | " + " | ".join(f"{ref['runtime_sym'][c]:.2f}"
                                                                    for c in conditions) + " |")
    lines.append("| enrollment model alone (enroll_sym) | " + " | ".join(f"{ref['enroll_sym'][c]:.2f}"
                                                                        for c in conditions) + " |")
    lines += ["", "| trend | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
    for score in ("cross", "fused"):
        for suffix in ("", "/loglinear"):
            fits, proj = [], []
            for c in conditions:
                t = curve["trends"][f"{score}/{c}{suffix}"]
                fits.append(f"{t['a']:.3g}·n^-{t['b']:.2f} + {t['c']:.2f}" if t["form"] == "power"
                            else f"{t['a']:.3g} − {t['b']:.2f}·ln n")
                value = curve["projected_speakers"][f"{score}/{c}{suffix}"]
                proj.append("never (floor above it)" if not math.isfinite(value)
                        else "> 10^6 (flat)" if value > 1e6 else f"{value:,.0f}")
            lines.append(f"| {score}: fit (rmse {np.mean([curve['trends'][f'{score}/{c}{suffix}']['rmse'] for c in conditions]):.2f}) | "
                         + " | ".join(fits) + " |")
            lines.append(f"| {score}: speakers to reach {curve['projection_goal'][score]} | " + " | ".join(proj) + " |")
    return "\n".join(lines)


def plot(curve: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = curve["conditions"]
    figure, axes = plt.subplots(1, len(conditions), figsize=(4.6 * len(conditions), 4), squeeze=False)
    grid = np.geomspace(min(curve["counts"]), max(curve["counts"]) * 8, 100)
    for axis, condition in zip(axes[0], conditions):
        for score, colour in (("cross", "C0"), ("fused", "C1")):
            n = [p["n_speakers"] for p in curve["points"]]
            axis.scatter(n, [p[score][condition] for p in curve["points"]], s=12, color=colour, label=score)
            axis.plot(grid, trend_value(curve["trends"][f"{score}/{condition}"], grid), color=colour, lw=1)
        axis.axhline(curve["references"]["runtime_sym"][condition], color="grey", ls="--", lw=1,
                     label="light model alone")
        axis.axhline(curve["references"]["enroll_sym"][condition], color="grey", ls=":", lw=1,
                     label="enrollment model alone")
        axis.set_xscale("log")
        axis.set_xlabel("real training speakers")
        axis.set_ylabel("EER %")
        axis.set_title(f"{curve['method']}, test {condition}")
        axis.grid(True, lw=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


# ============================================================================ from audio
def learning_curve_from_audio(source, target, train_dirs: Sequence[str], eval_dir, *, cache_dir,
                              counts: Sequence[int] = DEFAULT_COUNTS, method: str = "ridge", repeats: int = 3,
                              seed: int = 0, progress: bool = True) -> dict:
    """The curve from audio: ``source`` = runtime model, ``target`` = enrollment model. The
    first of ``train_dirs`` is subsampled; with more, all of them together give one extra
    "all corpora" point. ``eval_dir`` is embedded as ``nessa eval`` embeds it (speech only,
    full length and its 2-s / 1-s crops, seed 0)."""
    loader = speech_only_loader(default_audio_loader())
    spec = AlignmentConfig().chunk_spec(0)

    def embed(directory):
        return embed_corpus(list_utterances(directory), source, target, spec, cache_dir=cache_dir,
                            load_audio=loader, audio_tag="speech_only", progress=progress)

    files = embed(train_dirs[0])
    extra = {}
    if len(train_dirs) > 1:
        extra["all corpora"] = files + [f for d in train_dirs[1:] for f in embed(d)]
    provider = AudioEmbeddingProvider(target, source, eval_dir, anchors_dir=None, cache_dir=cache_dir,
                                      crops=DEFAULT_CROPS, seed=0, progress=progress)
    data = provider.evaluation_set(make_conditions(DEFAULT_CROPS, None))
    return learning_curve(files, data, counts=counts, method=method, repeats=repeats, seed=seed,
                          extra_points=extra, progress=progress)
