"""Round 3 of the NESSA alignment levers, on a development protocol with *long* queries.

Why: the dev trials of `nessa align train` (and of round 2) test only 1/2/3-s tiles, so a
network that hurts long queries (test-other "full": 3-35 s) is never caught on dev. This
protocol adds a long condition from the same training speakers, nothing from test-other:

* 5 folds over train-clean-100 speakers (and, for the report only, over Speech Commands
  speakers); the network is trained on everything outside the fold (Speech Commands at its
  shipped weight 0.3).
* ``tc-long``: the whole first half of a held-out utterance (about 6 s, embedded as one
  segment by the runtime model) is the query; profiles are the means of the 3-s tiles of
  the second halves (both models). ``tc-3s/2s/1s``: the usual tiles of the second half
  against first-half profiles (``nessa.lab.train.build_dev_trials``).
* Scores: the cross-model cosine (aligned runtime query vs aligned enrollment profile),
  adaptive S-norm (top 50) against the fold's training speakers (as the artifact does).
  Fused: runtime_sn + cross_sn + aligned-runtime, weights fitted on the other folds.
* **Choice rule (fixed before the run): lowest mean S-normed cross EER over tc-long,
  tc-2s and tc-1s** (the three test-other conditions' counterparts); SC columns are
  reported, not used.

Run: ``.venv/bin/python scripts/nessa_levers.py --out var/eval/levers-r3.json`` (embedding
caches warm; each network setting trains 5 folds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from app.settings import Settings  # noqa: E402
from nessa import metrics  # noqa: E402
from nessa.kinds import KINDS  # noqa: E402
from nessa.lab.calibration_fit import fit_logistic_calibration  # noqa: E402
from nessa.lab.data import ROLE_PROFILE, ROLE_TEST, default_audio_loader, embed_corpus, speech_only_loader  # noqa: E402
from nessa.lab.linear import fit_cca  # noqa: E402
from nessa.lab.network_config import NetworkConfig  # noqa: E402
from nessa.lab.network_pairs import build_pairs, cohort_vectors, segment_pairs  # noqa: E402
from nessa.lab.network_training import train_run  # noqa: E402
from nessa.lab.train import AlignmentConfig, DevTrials, build_dev_trials, regression_pairs  # noqa: E402
from nessa.lab.train_network import prepare_corpora  # noqa: E402
from nessa.snorm import snorm_with_stats, top_k_stats  # noqa: E402
from speechcore.embedder import l2_normalise  # noqa: E402

TC, SC = "train-clean-100", "speech-commands"
CONDITIONS = ("long", "3s", "2s", "1s")
RULE = ("long", "2s", "1s")
TOP_K = 50


# ----------------------------------------------------------------------------- data
def load_files(shared: pathlib.Path, cache_dir: pathlib.Path, concat_dir: pathlib.Path):
    from app.model_catalog import load_embedder  # the script may use the app's registry

    base = AlignmentConfig()
    source, target = load_embedder("ge2e-256"), load_embedder("campplus-192")
    corpora = prepare_corpora([str(shared / "librispeech" / TC), str(shared / SC)], NetworkConfig(), concat_dir)
    files, domains = [], {}
    loader = speech_only_loader(default_audio_loader())
    for domain, utterances in corpora:
        embedded = embed_corpus(utterances, source, target, base.chunk_spec(0), cache_dir=cache_dir,
                                load_audio=loader, audio_tag="speech_only", batch_size=base.batch_size,
                                progress=False)
        files += embedded
        domains.update({item.path: domain for item in embedded})
    return files, domains


def long_trials(files, speakers: set[str]) -> DevTrials:
    """Whole first half as the query; profile = mean of the second half's 3-s tiles."""
    names, p_src, p_tgt, t_src, t_tgt = [], [], [], [], []
    for item in files:
        if item.speaker not in speakers:
            continue
        prof = np.flatnonzero(item.plan.roles == ROLE_PROFILE)
        tiles = (item.plan.roles == ROLE_TEST) & (item.plan.seconds == 3.0)
        if len(prof) == 0 or not tiles.any():
            continue
        names.append(item.speaker)
        p_src.append(item.source[tiles].mean(axis=0))
        p_tgt.append(item.target[tiles].mean(axis=0))
        t_src.append(item.source[prof[0]])
        t_tgt.append(item.target[prof[0]])
    names = np.asarray(names)
    return DevTrials(profile_speakers=names, profile_source=l2_normalise(np.stack(p_src)),
                     profile_target=l2_normalise(np.stack(p_tgt)), test_speakers=names.copy(),
                     test_seconds=np.full(len(names), 99.0), test_source=np.stack(t_src), test_target=np.stack(t_tgt))


@dataclasses.dataclass
class Fold:
    fit: set                 # training speakers (both corpora)
    tc_pairs_xy: tuple       # (x, y) tc regression pairs of the fit speakers (for the in-run style CCA)
    cohort: tuple            # (enroll, runtime) vectors of the fit tc speakers
    trials: dict             # (domain, condition) -> DevTrials


def make_folds(files, domains, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    by_domain = {d: sorted({f.speaker for f in files if domains[f.path] == d}) for d in (TC, SC)}
    parts = {}
    for d, speakers in by_domain.items():
        order = np.random.default_rng([seed, len(speakers)]).permutation(len(speakers))
        parts[d] = [set(np.asarray(speakers)[order[i::n_folds]].tolist()) for i in range(n_folds)]
    folds = []
    for j in range(n_folds):
        held = parts[TC][j] | parts[SC][j]
        fit = {f.speaker for f in files} - held
        tc_files = [f for f in files if domains[f.path] == TC]
        sc_files = [f for f in files if domains[f.path] == SC]
        trials = {}
        for domain, domain_files in ((TC, tc_files), (SC, sc_files)):
            short = build_dev_trials(domain_files, parts[domain][j])
            for cond in ("3s", "2s", "1s"):
                rows = short.test_seconds == float(cond[:-1])
                trials[(domain, cond)] = dataclasses.replace(
                    short, test_speakers=short.test_speakers[rows], test_seconds=short.test_seconds[rows],
                    test_source=short.test_source[rows], test_target=short.test_target[rows])
            trials[(domain, "long")] = long_trials(domain_files, parts[domain][j])
        tc_fit = fit & set(by_domain[TC])
        folds.append(Fold(fit=fit, tc_pairs_xy=regression_pairs(tc_files, tc_fit, "chunk"),
                          cohort=cohort_vectors(tc_files, tc_fit), trials=trials))
    return folds


# ----------------------------------------------------------------------------- scoring
class Aligner:
    """Source / target transforms of one alignment (or a cosine-weighted ensemble of two)."""

    def __init__(self, parts: list[tuple[str, dict, float]]):
        self.parts = [(kind, {k: np.asarray(v, np.float32) for k, v in p.items()}, w) for kind, p, w in parts]

    def _apply(self, side: int, x: np.ndarray) -> np.ndarray:
        outs = []
        for kind, params, weight in self.parts:
            fn = KINDS[kind].transform_source if side == 0 else KINDS[kind].transform_target
            outs.append(np.sqrt(weight) * l2_normalise(fn(params, l2_normalise(x.astype(np.float32)))))
        return np.concatenate(outs, axis=1)

    def source(self, x):
        return self._apply(0, x)

    def target(self, y):
        return self._apply(1, y)


def features(aligner: Aligner, trials: DevTrials, cohort) -> dict:
    q = l2_normalise(trials.test_source.astype(np.float32))
    aq, ap = aligner.source(q), aligner.target(trials.profile_target)
    ac_t, ac_s = aligner.target(cohort[0]), aligner.source(cohort[1])
    cross = aq @ ap.T
    cross_sn = snorm_with_stats(cross, top_k_stats(aq @ ac_t.T, TOP_K), top_k_stats(ap @ ac_s.T, TOP_K))
    pr = l2_normalise(trials.profile_source.astype(np.float32))
    runtime = q @ pr.T
    rc = l2_normalise(cohort[1])
    runtime_sn = snorm_with_stats(runtime, top_k_stats(q @ rc.T, TOP_K), top_k_stats(pr @ rc.T, TOP_K))
    arun = aq @ aligner.source(pr).T
    return {"cross": cross, "cross_sn": cross_sn, "runtime": runtime, "runtime_sn": runtime_sn, "arun": arun}


def eer(targets, nontargets) -> float:
    return round(100 * metrics.equal_error_rate(np.asarray(targets), np.asarray(nontargets))[0], 3)


def evaluate(aligners: list[Aligner], folds: list[Fold]) -> dict:
    """aligners[j] scores fold j. Pooled-over-folds EER per (domain, condition) for the
    cross score, the S-normed cross score and the cross-fitted fusion."""
    per_fold = []
    for aligner, fold in zip(aligners, folds):
        per_fold.append({key: (features(aligner, t, fold.cohort), t.is_target) for key, t in fold.trials.items()})
    out = {}
    fused_names = ("runtime_sn", "cross_sn", "arun")
    for key in per_fold[0]:
        label = f"{'tc' if key[0] == TC else 'sc'}-{key[1]}"
        for feat in ("cross", "cross_sn"):
            t = np.concatenate([f[key][0][feat][f[key][1]] for f in per_fold])
            n = np.concatenate([f[key][0][feat][~f[key][1]] for f in per_fold])
            out[f"{feat}:{label}"] = eer(t, n)
        if key[0] != TC:
            continue
        t_all, n_all = [], []
        for j, fold_scores in enumerate(per_fold):  # fusion fitted on the other folds' tc trials
            tab_t, tab_n = [], []
            for i, other in enumerate(per_fold):
                if i == j:
                    continue
                for k2, (feats, mask) in other.items():
                    if k2[0] == TC:
                        stacked = np.stack([feats[n_].ravel() for n_ in fused_names], 1)
                        tab_t.append(stacked[mask.ravel()])
                        tab_n.append(stacked[~mask.ravel()])
            fusion = fit_logistic_calibration(np.concatenate(tab_t), np.concatenate(tab_n), fused_names)
            feats, mask = fold_scores[key]
            llr = fusion.llr(*[feats[n_] for n_ in fused_names])
            t_all.append(llr[mask])
            n_all.append(llr[~mask])
        out[f"fused:{label}"] = eer(np.concatenate(t_all), np.concatenate(n_all))
    out["rule"] = round(float(np.mean([out[f"cross_sn:tc-{c}"] for c in RULE])), 3)
    out["rule_fused"] = round(float(np.mean([out[f"fused:tc-{c}"] for c in RULE])), 3)
    return out


def cross_fusion(towers: list[Aligner], branches: list[Aligner], folds: list[Fold]) -> dict:
    """Pooled EER of LLR = a * tower cross_sn + b * cca cross_sn + c, weights fitted on the
    other folds' train-clean-100 trials (every condition)."""
    per_fold = []
    for tower, branch, fold in zip(towers, branches, folds):
        per_fold.append({key: (np.stack([features(tower, t, fold.cohort)["cross_sn"],
                                         features(branch, t, fold.cohort)["cross_sn"]], axis=-1), t.is_target)
                         for key, t in fold.trials.items() if key[0] == TC})
    out, weights = {}, []
    for key in per_fold[0]:
        t_all, n_all = [], []
        for j, fold_scores in enumerate(per_fold):
            tab_t = [f[k][0][f[k][1]] for i, f in enumerate(per_fold) if i != j for k in f]
            tab_n = [f[k][0][~f[k][1]] for i, f in enumerate(per_fold) if i != j for k in f]
            fusion = fit_logistic_calibration(np.concatenate(tab_t), np.concatenate(tab_n), ("tower", "cca"))
            weights.append(fusion.weights)
            feats, mask = fold_scores[key]
            llr = fusion.llr(feats[..., 0], feats[..., 1])
            t_all.append(llr[mask])
            n_all.append(llr[~mask])
        out[f"cross_sn:tc-{key[1]}"] = eer(np.concatenate(t_all), np.concatenate(n_all))
    out["rule"] = round(float(np.mean([out[f"cross_sn:tc-{c}"] for c in RULE])), 3)
    out["fusion_weights_mean"] = np.mean(weights, axis=0).round(3).tolist()
    return out


# ----------------------------------------------------------------------------- the sweep
def fold_runs(files, domains, folds: list[Fold], config: NetworkConfig) -> list[tuple[dict, dict]]:
    """Per fold: (initial params, trained params averaged over ``config.soup`` batch orders),
    trained on everything outside the fold."""
    runs = []
    for fold in folds:
        pairs = build_pairs(files, domains, fold.fit, config)
        soup = [train_run(pairs, config, 0, batch_seed, progress=False) for batch_seed in range(config.soup)]
        runs.append((soup[0][0], {k: np.mean([run[1][k] for run in soup], axis=0) for k in soup[0][1]}))
    return runs


def wise(initial: dict, trained: dict, alpha: float) -> dict:
    return {k: initial[k] + np.float32(alpha) * (trained[k] - initial[k]) for k in trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Settings.from_env().shared_data_dir),
                        help="real speech (default: the shared_data_dir setting, NESSA_SHARED_DATA_DIR)")
    parser.add_argument("--cache-dir", default="var/cache/embeddings")
    parser.add_argument("--concat-dir", default="var/corpora")
    parser.add_argument("--out", default="var/eval/levers-r3.json")
    parser.add_argument("--settings", default="", help="comma-separated subset of setting names")
    parser.add_argument("--top-k-grid", type=int, nargs="*", default=None,
                        help="with --branch-grid: only v3's mix, under these S-norm cohort sizes")
    parser.add_argument("--branch-pairs", action="store_true",
                        help="with --branch-grid: only the branch fitted on every segment role")
    parser.add_argument("--long", action="store_true", help="only: long pairs sampled more often")
    parser.add_argument("--multi", action="store_true", help="only: ensembles with a second tower")
    parser.add_argument("--branch-grid", action="store_true",
                        help="only the shipped tower with CCA branches of several weights and shrinkages")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    files, domains = load_files(pathlib.Path(args.shared), pathlib.Path(args.cache_dir), pathlib.Path(args.concat_dir))
    folds = make_folds(files, domains)
    tc_files = [f for f in files if domains[f.path] == TC]
    print(f"data + folds {time.monotonic() - started:.0f}s", flush=True)
    results = []

    def report(name, aligners, **extra):
        row = {"setting": name, **extra, **evaluate(aligners, folds)}
        results.append(row)
        keys = [f"cross_sn:tc-{c}" for c in CONDITIONS] + [f"fused:tc-{c}" for c in ("long", "2s", "1s")]
        print(f"{name:58s} rule {row['rule']:6.3f} | " + " ".join(f"{row[k]:5.2f}" for k in keys)
              + f" | sc {row['cross_sn:sc-long']:5.2f} {row['cross_sn:sc-1s']:5.2f}", flush=True)
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1))

    # in-run style CCA (train-clean-100 pairs only), the baseline the must-show names
    cca = {}
    for s in (0.6, 0.8):
        cca[s] = [fit_cca(*f.tc_pairs_xy, 96, s).params() for f in folds]
        report(f"cca tc-only s={s}", [Aligner([("cca", p, 1.0)]) for p in cca[s]])

    recipe = dict(arch="twotower", init="cca", shared_dim=96, cca_shrinkage=0.8, epochs=12, lr=3e-4, w_cosine=1,
                  w_contrastive=1, w_global=0.5, domain_weights={SC: 0.3})
    settings = {
        "v2 recipe (init: CCA s=0.8 on all pairs)": dict(recipe),
        "init: CCA s=0.6 on train-clean-100": dict(recipe, init_domain=TC, cca_shrinkage=0.6),
        "init: CCA s=0.8 on train-clean-100": dict(recipe, init_domain=TC),
        "v2 recipe, soup of 3": dict(recipe, soup=3),
        "v2 recipe, shared space 128-d": dict(recipe, shared_dim=128),
    }
    if args.long:  # long pairs sampled more often (the failing test-other condition is long queries)
        for weight, seconds in ((4.0, 4.0), (8.0, 5.5)):
            config = NetworkConfig.from_any(dict(recipe, long_pair_weight=weight, long_seconds=seconds))
            runs = fold_runs(files, domains, folds, config)
            for alpha in (0.5, 0.75, 1.0):
                params = [wise(init, trained, alpha) for init, trained in runs]
                name = f"long pairs x{weight:g} (>= {seconds:g} s), a={alpha}"
                report(name, [Aligner([("nn-twotower", p, 1.0)]) for p in params])
                report(f"{name} + 0.5 x cca tc s=0.6",
                       [Aligner([("nn-twotower", p, 0.5), ("cca", c, 0.5)]) for p, c in zip(params, cca[0.6])])
        return
    if args.multi:  # a second, different tower in the alignment-only space (v2 tower + 128-d tower + CCA)
        towers = {}
        for label, values, alpha in (("v2", dict(recipe, soup=3), 0.75), ("128", dict(recipe, shared_dim=128), 0.5),
                                     ("tc-init", dict(recipe, init_domain=TC, cca_shrinkage=0.6), 0.5)):
            towers[label] = [wise(initial, trained, alpha) for initial, trained
                             in fold_runs(files, domains, folds, NetworkConfig.from_any(values))]
        for other in ("128", "tc-init"):
            for weights in ((0.25, 0.25, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.35, 0.15, 0.5)):
                report(f"v2 tower {weights[0]:.2f} + {other} tower {weights[1]:.2f} + cca {weights[2]:.2f}",
                       [Aligner([("nn-twotower", a, weights[0]), ("nn-twotower", b, weights[1]),
                                 ("cca", c, weights[2])])
                        for a, b, c in zip(towers["v2"], towers[other], cca[0.6])])
        return
    if args.branch_grid:  # the shipped tower (v2: soup of 3, a = 0.75) with CCA branches of several kinds
        runs = [wise(initial, trained, 0.75) for initial, trained
                in fold_runs(files, domains, folds, NetworkConfig.from_any(dict(recipe, soup=3)))]
        # the alignment-only score as a calibrated fusion of the tower's and the CCA branch's
        # S-normed cosines (weights by logistic regression on the other folds), vs the fixed mix
        row = {"setting": "v2 tower & cca tc s=0.6, cross scores fused by logistic regression",
               **cross_fusion([Aligner([("nn-twotower", p, 1.0)]) for p in runs],
                              [Aligner([("cca", c, 1.0)]) for c in cca[0.6]], folds)}
        results.append(row)
        print(f"{row['setting']:58s} rule {row['rule']:6.3f} | "
              + " ".join(f"{row[f'cross_sn:tc-{c}']:5.2f}" for c in CONDITIONS), flush=True)
        global TOP_K
        for top_k in (args.top_k_grid or ()):  # S-norm cohort size for v3's alignment-only score
            TOP_K = top_k
            report(f"v2 tower + 0.5 x cca tc s=0.6, S-norm top {top_k}",
                   [Aligner([("nn-twotower", p, 0.5), ("cca", c, 0.5)]) for p, c in zip(runs, cca[0.6])])
        TOP_K = 50
        if args.top_k_grid:
            return
        if args.branch_pairs:  # the branch fitted on every segment role (tiles too), several shrinkages
            for shrinkage in (0.4, 0.5, 0.6, 0.7):
                branches = [fit_cca(*segment_pairs(tc_files, f.fit, "all"), 96, shrinkage).params() for f in folds]
                report(f"v2 tower + 0.5 x cca tc all roles s={shrinkage}",
                       [Aligner([("nn-twotower", p, 0.5), ("cca", c, 0.5)]) for p, c in zip(runs, branches)])
            return
        for shrinkage in (0.6, 0.8):
            branches = cca.get(shrinkage) or [fit_cca(*f.tc_pairs_xy, 96, shrinkage).params() for f in folds]
            for beta in (0.3, 0.4, 0.5, 0.6, 0.7):
                report(f"v2 tower + {beta} x cca tc s={shrinkage}",
                       [Aligner([("nn-twotower", p, 1 - beta), ("cca", c, beta)]) for p, c in zip(runs, branches)])
        return
    wanted = {s.strip() for s in args.settings.split(",") if s.strip()}
    for name, values in settings.items():
        if wanted and not any(w in name for w in wanted):
            continue
        config = NetworkConfig.from_any(values)
        t0 = time.monotonic()
        runs = fold_runs(files, domains, folds, config)
        took = round(time.monotonic() - t0, 1)
        for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
            params = [wise(init, trained, alpha) for init, trained in runs]
            report(f"{name}, a={alpha}", [Aligner([("nn-twotower", p, 1.0)]) for p in params],
                   train_seconds=took)
            for beta in (0.3, 0.5):
                if alpha == 0.0:
                    continue
                report(f"{name}, a={alpha} + {beta} x cca tc s=0.6",
                       [Aligner([("nn-twotower", p, 1 - beta), ("cca", c, beta)]) for p, c in zip(params, cca[0.6])])
    print(f"done {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
