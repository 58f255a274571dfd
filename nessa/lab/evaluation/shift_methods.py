"""Gallery-aware scoring variants for the domain-shift evaluation (issue #12, step 2; research
code, opt-in through ``nessa eval-shift --methods``; the service does not use it).

A *gallery* is what the service would hold for a condition: the profiles of one half (and,
for test-other, of one profile draw: the k-th profile of each speaker belongs to gallery k).
Only the gallery's material (its profiles and their enrollment items) feeds a method; test
queries are only scored.

* ``gallery-snorm`` / ``gallery-snorm-only``: S-norm of the features the artifact normalises,
  with each side's cohort = the artifact's stored LibriSpeech cohort **plus** (``-only``:
  **instead of**) the gallery's other profiles. Query side: the query's raw scores against the
  gallery's profiles other than the claimed one, and other than the profile of the query's own
  speaker (``OPEN_SET``: the impostor is taken to be unenrolled, so an enrolled look-alike
  cannot help; a protocol choice, not a fit). Profile side: the claimed profile's scores
  against the other profiles as queries (their runtime vectors: fused path only; the
  alignment path stands for profiles without a runtime vector, so its profile side keeps the
  stored cohort). The artifact's calibration is then applied unchanged. ``-only`` falls back to
  the stored cohort where a side would have fewer than ``MIN_COHORT`` gallery scores.
* ``gallery-cal-shift`` / ``gallery-cal-refit`` (``-strict``): in-domain non-target LLRs from
  the gallery alone (each enrollment item of a profile, scored as a query against every other
  profile of the gallery), a Gaussian fitted to them, and the LLR mapped so that the Gaussian
  tail above each stored threshold is its promised FAR: ``shift`` moves the bias only (matched
  at the 1 % point), ``refit`` moves bias and scale (matched at 1 % and 0.1 %). ``-strict``
  never accepts what the shipped calibration rejects (min of both LLRs). A gallery with fewer
  than ``MIN_PROFILES`` profiles or ``MIN_NONTARGETS`` such scores keeps the shipped calibration.
"""
from __future__ import annotations

import numpy as np

from nessa.calibration import FAR_TARGETS
from nessa.gallery_calibration import MIN_NONTARGETS, MIN_PROFILES
from nessa.gallery_calibration import fit_map as fit_gallery_map
from nessa.lab.evaluation import shift_quality as quality
from nessa.lab.evaluation import shift_suspect as suspect_rules
from nessa.lab.evaluation.systems import mean_vectors
from nessa.snorm import top_k_stats

METHODS = ("baseline", "gallery-snorm", "gallery-snorm-only", "gallery-cal-shift", "gallery-cal-refit",
           "gallery-cal-shift-strict", "gallery-cal-refit-strict")
#: gallery-only S-norm: the fewest gallery cohort scores per side (else the stored cohort)
MIN_COHORT = 3
#: query-side gallery cohort leaves out the profile of the query's own speaker
OPEN_SET = True


# ----------------------------------------------------------------------------- galleries
def gallery_ids(condition) -> np.ndarray:
    """(M,) gallery number per profile: its half and which of its speaker's profiles it is."""
    seen: dict = {}
    keys = []
    for (speaker, _), half in zip(condition.profiles, _profile_halves(condition)):
        seen[speaker] = seen.get(speaker, -1) + 1
        keys.append((half, seen[speaker]))
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return np.array([index[key] for key in keys], dtype=np.int64)


def _profile_halves(condition) -> list[str]:
    halves = {}
    for (_, p), half in zip(condition.trials, condition.half):
        halves[int(p)] = half
    return [halves.get(p, "none") for p in range(len(condition.profiles))]


def profile_vectors(condition, vectors) -> tuple[np.ndarray, np.ndarray]:
    """(enroll (M, d_e), runtime (M, d_r)) profile vectors, as the service stores them."""
    return (mean_vectors([np.stack([vectors[i][0] for i in items]) for _, items in condition.profiles]),
            mean_vectors([np.stack([vectors[i][1] for i in items]) for _, items in condition.profiles]))


def _calibration(artifact, fused: bool):
    scorer = artifact.scorer
    if artifact.scoring.get("duration_bands"):
        raise NotImplementedError("gallery methods are written for artifacts without duration bands")
    return scorer.bands.pooled(fused)


def _raw_features(scorer, queries: np.ndarray, enroll: np.ndarray, runtime, names) -> dict:
    """Raw (un-normalised) features of ``queries`` against candidate profiles."""
    prepared = scorer.prepare_candidates(enroll, runtime)
    prepared.pop("snorm", None)  # no cohort statistics: score_features leaves every feature raw
    return scorer.score_features(queries, prepared, frozenset(names))


def _stats_masked(scores: np.ndarray, keep: np.ndarray, top_k: int):
    """top-k (mean, sd) of each row's kept entries."""
    k = max(1, min(top_k, int(keep.sum(axis=1).min())))
    return top_k_stats(np.where(keep, scores, -np.inf), k)


# ----------------------------------------------------------------------------- (a) gallery S-norm
def gallery_snorm_llr(artifact, condition, vectors, fused: bool, mode: str = "combined") -> np.ndarray:
    """Per-trial LLRs with the gallery in the S-norm cohort (``mode``: ``combined`` = stored
    cohort + gallery, ``gallery`` = the gallery alone, ``stored`` = the stored cohort alone,
    which is the service's scoring: a check of this code)."""
    scorer, cal = artifact.scorer, _calibration(artifact, fused)
    snorm = artifact.scoring.get("snorm") or {"features": [], "top_k": 1}
    normalised = [f for f in cal.features if f in snorm["features"]]
    enroll, runtime = profile_vectors(condition, vectors)
    tests_r = np.stack([vectors[item][1] for _, item in condition.tests])
    test_speakers = np.array([s for s, _ in condition.tests])
    profile_speakers = np.array([s for s, _ in condition.profiles])
    cohort_e, cohort_r = artifact.params["cohort_enroll"], artifact.params["cohort_runtime"]
    query_stored = _raw_features(scorer, tests_r, cohort_e, cohort_r, normalised)
    galleries = gallery_ids(condition)
    out = np.full(len(condition.trials), np.nan)
    for g in np.unique(galleries):
        members = np.flatnonzero(galleries == g)
        rows = np.flatnonzero(np.isin(condition.trials[:, 1], members))
        if not len(rows):
            continue
        tests, local = condition.trials[rows, 0], np.searchsorted(members, condition.trials[rows, 1])
        g_runtime = runtime[members] if fused else None
        raw = _raw_features(scorer, tests_r, enroll[members], g_runtime, cal.features)
        keep = np.ones((len(rows), len(members)), dtype=bool)
        keep[np.arange(len(rows)), local] = False
        if OPEN_SET:
            keep &= profile_speakers[members][None, :] != test_speakers[tests][:, None]
        sides = {"query_gallery": {n: raw[n][tests] for n in normalised}, "keep": keep,
                 "query_stored": {n: query_stored[n][tests] for n in normalised},
                 "profile_stored": _raw_features(scorer, cohort_r, enroll[members], g_runtime, normalised),
                 "profile_gallery": _raw_features(scorer, runtime[members], enroll[members], g_runtime, normalised)}
        features = {}
        for name in cal.features:
            score = raw[name][tests, local]
            if name in normalised:
                (mq, sq), (mp, sp) = _cohort_stats(sides, name, mode, fused, int(snorm["top_k"]))
                score = 0.5 * ((score - mq) / sq + (score - mp[local]) / sp[local])
            features[name] = score
        out[rows] = cal.llr(*[features[name] for name in cal.features])
    return out


def _cohort_stats(sides: dict, name: str, mode: str, fused: bool, top_k: int):
    """((query mean, sd) per trial, (profile mean, sd) per gallery profile) of one feature."""
    q_sto, q_gal, keep = sides["query_stored"][name], sides["query_gallery"][name], sides["keep"]
    p_sto, p_gal = sides["profile_stored"][name].T, sides["profile_gallery"][name].T  # row p: p's cohort
    off_diagonal = ~np.eye(len(p_gal), dtype=bool)
    too_small = len(p_gal) - 1 < MIN_COHORT or int(keep.sum(axis=1).min()) < MIN_COHORT
    if mode == "stored" or (mode == "gallery" and too_small):
        return top_k_stats(q_sto, top_k), top_k_stats(p_sto, top_k)
    if mode == "combined":
        q_stats = _stats_masked(np.hstack([q_sto, q_gal]), np.hstack([np.ones_like(q_sto, bool), keep]), top_k)
    else:
        q_stats = _stats_masked(q_gal, keep, top_k)
    if not fused:  # profiles without a runtime vector: the gallery has no query form of them
        return q_stats, top_k_stats(p_sto, top_k)
    if mode == "combined":
        return q_stats, _stats_masked(np.hstack([p_sto, p_gal]),
                                      np.hstack([np.ones_like(p_sto, bool), off_diagonal]), top_k)
    return q_stats, _stats_masked(p_gal, off_diagonal, top_k)


def full_llr(artifact, condition, vectors, fused: bool) -> np.ndarray:
    """(tests, profiles) LLRs of every query against every profile, as the service scores them."""
    enroll, runtime = profile_vectors(condition, vectors)
    tests_r = np.stack([vectors[item][1] for _, item in condition.tests])
    seconds = np.array([vectors[item][2] for _, item in condition.tests])
    llr, _ = artifact.scorer.score_candidates(tests_r, enroll, runtime if fused else None, seconds=seconds)
    return llr


def stored_snorm_llr(artifact, condition, vectors, fused: bool) -> np.ndarray:
    """Per-trial LLRs as the service scores them (the baseline)."""
    return full_llr(artifact, condition, vectors, fused)[condition.trials[:, 0], condition.trials[:, 1]]


# ----------------------------------------------------------------------------- (b) gallery calibration
def gallery_nontargets(artifact, condition, vectors, fused: bool, members: np.ndarray) -> np.ndarray:
    """Shipped LLRs of every enrollment item of a gallery profile against every OTHER profile."""
    enroll, runtime = profile_vectors(condition, vectors)
    items, owner = [], []
    for local, p in enumerate(members):
        for item in condition.profiles[p][1]:
            items.append(item)
            owner.append(local)
    queries = np.stack([vectors[i][1] for i in items])
    seconds = np.array([vectors[i][2] for i in items])
    llr, _ = artifact.scorer.score_candidates(queries, enroll[members], runtime[members] if fused else None,
                                              seconds=seconds)
    return llr[np.asarray(owner)[:, None] != np.arange(len(members))[None, :]]


def gallery_calibrated_llr(artifact, condition, vectors, fused: bool, kind: str, strict: bool,
                           fits: list | None = None) -> np.ndarray:
    """Per-trial LLRs through each gallery's own map (the shipped LLR for small galleries)."""
    base = stored_snorm_llr(artifact, condition, vectors, fused)
    cal = _calibration(artifact, fused)
    thresholds = {name: cal.threshold(name) for name in FAR_TARGETS}
    galleries = gallery_ids(condition)
    out = base.copy()
    for g in np.unique(galleries):
        members = np.flatnonzero(galleries == g)
        rows = np.isin(condition.trials[:, 1], members)
        if not rows.any():
            continue
        nontargets = gallery_nontargets(artifact, condition, vectors, fused, members)
        fit = fit_gallery_map(nontargets, thresholds, kind) if len(members) >= MIN_PROFILES else None
        if fits is not None:
            fits.append({"gallery": int(g), "profiles": int(len(members)), "nontargets": int(len(nontargets)),
                         "scale_bias": fit})
        if fit is None:
            continue
        mapped = fit[0] * base[rows] + fit[1]
        out[rows] = np.minimum(mapped, base[rows]) if strict else mapped
    return out


def method_llr(method: str, artifact, condition, vectors, fused: bool, fits: list | None = None) -> np.ndarray:
    """Per-trial LLRs of ``condition`` under one of ``METHODS``."""
    if method == "baseline":
        return stored_snorm_llr(artifact, condition, vectors, fused)
    if method.startswith("gallery-snorm"):
        return gallery_snorm_llr(artifact, condition, vectors, fused,
                                 "gallery" if method.endswith("-only") else "combined")
    if method.startswith("gallery-cal-"):
        kind = method.split("-")[2]
        return gallery_calibrated_llr(artifact, condition, vectors, fused, kind, method.endswith("-strict"), fits)
    raise ValueError(f"unknown method {method!r}: one of {METHODS}")


# ----------------------------------------------------------------------------- the suspect-claim rule
def suspect_rows(method: str, artifact, condition, vectors, fused: bool, thresholds: dict, halves) -> list[dict]:
    """Figures of a ``suspect-...`` rule (``shift_suspect``) on the shipped LLRs, per half."""
    closed, margin = suspect_rules.parse_rule(method)
    llr_full = full_llr(artifact, condition, vectors, fused)
    trials = condition.trials
    galleries = gallery_ids(condition)
    profile_speakers = np.array([s for s, _ in condition.profiles])
    test_speakers = np.array([s for s, _ in condition.tests])
    other = suspect_rules.other_max(llr_full, trials, galleries, profile_speakers, test_speakers, closed)
    own = suspect_rules.own_enrolled(trials, galleries, profile_speakers, test_speakers)
    llr = llr_full[trials[:, 0], trials[:, 1]]
    rows = []
    for half in halves:
        mask = condition.half == half
        row = suspect_rules.suspect_figures(llr[mask], other[mask], condition.is_target[mask], thresholds, margin)
        row["own_enrolled"] = int((own[mask] & ~condition.is_target[mask]).sum()) if closed else 0
        rows.append({"condition": condition.name, "path": "fused" if fused else "alignment", "method": method,
                     "half": half, **row})
    return rows


def is_method(method: str) -> bool:
    """A name ``evaluate_methods`` knows: one of ``METHODS``, a ``suspect-...`` rule, a ``quality-...`` map."""
    return method in METHODS or suspect_rules.parse_rule(method) is not None or quality.parse_method(method) is not None


# ----------------------------------------------------------------------------- the comparison
def evaluate_methods(conditions, artifact, embedder, methods, halves=("dev",), context: dict | None = None
                     ) -> tuple[list[dict], dict]:
    """(rows: one per condition x path x method x half, info: thresholds, gallery fits).
    ``context``: what the quality maps need (``shift_quality_train.method_context``)."""
    from nessa.lab.evaluation.shift_eval import PATHS, figures, operating_thresholds

    info = {"artifact": artifact.name, "thresholds": {}, "halves": list(halves), "methods": list(methods),
            "fits": {}, "min_profiles": MIN_PROFILES, "min_nontargets": MIN_NONTARGETS, "open_set": OPEN_SET}
    for path in PATHS:
        info["thresholds"][path] = operating_thresholds(artifact, path == "fused")
    rows = []
    for condition in conditions:
        embedder.embed(condition.items())
        for path in PATHS:
            for method in methods:
                if suspect_rules.parse_rule(method) is not None:
                    rows += suspect_rows(method, artifact, condition, embedder.vectors, path == "fused",
                                         info["thresholds"][path], halves)
                    continue
                fits: list = []
                if quality.parse_method(method) is not None:
                    base = stored_snorm_llr(artifact, condition, embedder.vectors, path == "fused")
                    llr = quality.adjust(method, base, condition, embedder.vectors, path == "fused", context or {})
                else:
                    llr = method_llr(method, artifact, condition, embedder.vectors, path == "fused", fits)
                if fits:
                    info["fits"][f"{condition.name} | {path} | {method}"] = fits
                for half in halves:
                    mask = condition.half == half
                    scores, target = llr[mask], condition.is_target[mask]
                    rows.append({"condition": condition.name, "path": path, "method": method, "half": half,
                                 **figures(scores[target], scores[~target], info["thresholds"][path])})
    return rows, info


#: the issue's bar: measured FAR (%) at most this at each operating point
FAR_BARS = {"far_1pct": 2.0, "far_0.1pct": 0.3}
#: conditions too small to measure a 1 % FAR, left out of the summary
SUMMARY_SKIP = ("extra-speakers",)


def bars_summary(rows: list[dict]) -> str:
    """Per method and half: how many (condition, path, operating point) rows meet the FAR bar,
    and the mean FRR at each point over the rows counted."""
    groups: dict = {}
    for r in rows:
        if r["condition"].startswith(SUMMARY_SKIP):
            continue
        groups.setdefault((r["method"], r["half"]), []).append(r)
    lines = ["| method | half | bars met | mean FRR @far_0.1pct | mean FRR @far_1pct |", "|---|---|---|---|---|"]
    for (method, half), group in groups.items():
        met = sum(r[f"far@{n}"] <= bar for r in group for n, bar in FAR_BARS.items())
        frr = [np.mean([r[f"frr@{n}"] for r in group]) for n in ("far_0.1pct", "far_1pct")]
        lines.append(f"| {method} | {half} | {met} / {len(group) * len(FAR_BARS)} | {frr[0]:.1f} | {frr[1]:.1f} |")
    return "\n".join(lines)


def methods_markdown(rows: list[dict], info: dict) -> str:
    """A row per condition, path, method and half."""
    names = list(info["thresholds"]["fused"])
    header = ["condition", "path", "method", "half", "EER"] + [f"FAR / FRR @{n}" for n in names] + [
        "FA @" + names[-1], "trials (tgt / non)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["condition"], r["path"], r["method"], r["half"], f"{r['eer']:.2f}"]
        cells += [f"{r[f'far@{n}']:.2f} / {r[f'frr@{n}']:.2f}" for n in names]
        cells += [str(r[f"fa@{names[-1]}"]), f"{r['n_target']} / {r['n_nontarget']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Rates in %; FA = false accepts counted at the last threshold."])
