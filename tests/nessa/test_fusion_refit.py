"""The fusion refit with same-words negatives (nessa.lab.fusion_refit) and its cross-fitted
dev measurement: on synthetic trials where one feature carries the words, the refit moves
weight off it and separates same-words impostors; weighted logistic regression reduces to
the unweighted one; the refitted artifact keeps everything but its fused calibration."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from nessa.lab import calibration_fit
from nessa.lab.evaluation import same_words_remedy as remedy
from nessa.lab.fusion_refit import TrialSet, refit_fusion, trial_weights, with_fusion

NAMES = ("runtime_cosine", "cross_cosine_tower", "aligned_runtime_cosine_tower")


def _trials(rng, n_speakers: int, per: int, *, same_words: int = 0, prefix: str = "s") -> TrialSet:
    """Feature 0 (a "runtime" score) is pushed up by shared words; features 1 and 2 are not."""
    rows, target, same, prof, test = [], [], [], [], []
    speakers = [f"{prefix}{i}" for i in range(n_speakers)]
    for i, p in enumerate(speakers):
        for j, t in enumerate(speakers):
            for _ in range(per if i == j else 1):
                genuine = i == j
                rows.append([rng.normal(3.0 if genuine else 0.0), rng.normal(2.0 if genuine else 0.0),
                             rng.normal(0.3 if genuine else 0.0, 0.1)])
                target.append(genuine), same.append(False), prof.append(p), test.append(t)
        for _ in range(same_words):  # another speaker saying the profile's words
            t = speakers[(i + 1) % n_speakers]
            rows.append([rng.normal(3.0), rng.normal(0.0), rng.normal(0.0, 0.1)])
            target.append(False), same.append(True), prof.append(p), test.append(t)
    return TrialSet(NAMES, np.asarray(rows), np.asarray(target), np.asarray(same), np.asarray(prof), np.asarray(test))


def _eer(calibration, trials: TrialSet, rows) -> float:
    llr = calibration.llr(*trials.features[rows].T)
    t = trials.is_target[rows]
    return remedy._eer(llr, t)


def test_refit_moves_weight_off_the_content_feature():
    rng = np.random.default_rng(0)
    libri = _trials(rng, 20, 5, prefix="l")
    commands = _trials(rng, 20, 5, same_words=5, prefix="c")
    fits = [refit_fusion(libri, commands, domain_weight=0.5, same_words_weight=w) for w in (0.0, 0.5, 0.9)]
    ratios = [f.weights[0] / f.weights[1] for f in fits]
    assert ratios[0] > ratios[1] > ratios[2] and ratios[2] < 0.7 * ratios[0]

    def same_words_far(calibration):
        llr = calibration.llr(*commands.features.T)
        return np.mean(llr[commands.same_words] >= calibration.thresholds["far_1pct"])

    assert same_words_far(fits[2]) < 0.5 * same_words_far(fits[0])
    after = fits[1]
    # the thresholds are LibriSpeech's: at far_1pct about 1 % of its non-targets pass
    llr = after.llr(*libri.features.T)
    far = np.mean(llr[~libri.is_target] >= after.thresholds["far_1pct"])
    assert 0.005 <= far <= 0.01


def test_class_weights_share_and_equal_weights_reduce_to_the_plain_fit():
    rng = np.random.default_rng(1)
    libri, commands = _trials(rng, 6, 3, prefix="l"), _trials(rng, 6, 3, same_words=2, prefix="c")
    both, weights = trial_weights(libri, commands, 0.25, 0.5)
    nontarget_sc = ~both.is_target & np.r_[np.zeros(len(libri.is_target), bool), np.ones(len(commands.is_target), bool)]
    assert weights[both.is_target].sum() == pytest.approx(1.0) and weights[~both.is_target].sum() == pytest.approx(1.0)
    assert weights[nontarget_sc].sum() == pytest.approx(0.25)
    assert weights[nontarget_sc & both.same_words].sum() == pytest.approx(0.125)
    t, n = libri.features[libri.is_target], libri.features[~libri.is_target]
    plain = calibration_fit.fit_logistic_calibration(t, n, NAMES)
    equal = calibration_fit.fit_logistic_calibration(t, n, NAMES, target_weights=np.full(len(t), 3.0),
                                                     nontarget_weights=np.ones(len(n)))
    assert np.allclose(plain.weights, equal.weights, rtol=1e-5) and plain.bias == pytest.approx(equal.bias, rel=1e-5)


def test_crossfit_scores_each_fold_with_a_fit_that_did_not_see_it():
    rng = np.random.default_rng(2)
    libri, commands = _trials(rng, 8, 3, prefix="l"), _trials(rng, 8, 3, same_words=3, prefix="c")
    fold_of = remedy.speaker_folds(list(libri.profile_speaker) + list(commands.profile_speaker))
    assert set(fold_of.values()) == {0, 1}
    lib_llr, sc_llr, fits = remedy.crossfit_llr(libri, commands, fold_of, domain_weight=0.5, same_words_weight=0.5)
    assert len(fits) == 2 and not np.isnan(lib_llr).any() and not np.isnan(sc_llr).any()
    rows = np.array([fold_of[p] == 0 for p in commands.profile_speaker])
    fit_on_fold_1 = refit_fusion(libri.within({s for s, f in fold_of.items() if f == 1}),
                                 commands.within({s for s, f in fold_of.items() if f == 1}),
                                 domain_weight=0.5, same_words_weight=0.5)
    assert np.allclose(sc_llr[rows], fit_on_fold_1.llr(*commands.features[rows].T))


def test_refitted_artifact_keeps_all_but_its_fusion(tmp_path):
    from nessa.artifact import AlignmentArtifact

    shipped = AlignmentArtifact.load(pathlib.Path(remedy.__file__).parents[2] / "artifacts"
                                     / "nessa-twotower-cca-ge2e256-to-campplus192-v3")
    rng = np.random.default_rng(3)
    calibration = refit_fusion(_trials(rng, 6, 3, prefix="l"), _trials(rng, 6, 3, same_words=2, prefix="c"),
                               domain_weight=0.5, same_words_weight=0.5)
    new = with_fusion(shipped, calibration, name="refit-test", record={"note": "test"})
    loaded = AlignmentArtifact.load(new.save(tmp_path))
    assert loaded.name == "refit-test" and loaded.params_sha256 == shipped.params_sha256
    assert loaded.scoring["fused"]["weights"] == list(calibration.weights)
    assert {k: v for k, v in loaded.scoring.items() if k != "fused"} == {
        k: v for k, v in shipped.scoring.items() if k != "fused"}
    assert loaded.config["fusion_refit"]["from_artifact_sha256"] == shipped.sha256
    queries, profiles_e, profiles_r = rng.normal(size=(3, 256)), rng.normal(size=(4, 192)), rng.normal(size=(4, 256))
    assert np.allclose(loaded.scorer.score_candidates(queries, profiles_e)[0],
                       shipped.scorer.score_candidates(queries, profiles_e)[0])  # alignment path unchanged
    with pytest.raises(ValueError):
        with_fusion(shipped, calibration.__class__(features=("runtime_cosine",), weights=(1.0,), bias=0.0),
                    name="x", record={})


def test_with_snorm_features_leaves_a_feature_raw():
    from nessa.artifact import AlignmentArtifact
    from nessa.lab.fusion_refit import with_snorm_features

    shipped = AlignmentArtifact.load(pathlib.Path(remedy.__file__).parents[2] / "artifacts"
                                     / "nessa-twotower-cca-ge2e256-to-campplus192-v3")
    probe = with_snorm_features(shipped, ("runtime_cosine", "cross_cosine"))
    rng = np.random.default_rng(4)
    queries, profiles_e, profiles_r = rng.normal(size=(3, 256)), rng.normal(size=(4, 192)), rng.normal(size=(4, 256))
    before = shipped.scorer.candidate_features(queries, profiles_e, profiles_r)
    after = probe.scorer.candidate_features(queries, profiles_e, profiles_r)
    raw = shipped.scorer.score_features(queries, {k: v for k, v in shipped.scorer.prepare_candidates(
        profiles_e, profiles_r).items() if k != "snorm"})
    assert np.allclose(after["cross_cosine_tower"], raw["cross_cosine_tower"])
    assert not np.allclose(before["cross_cosine_tower"], raw["cross_cosine_tower"])
    for name in ("runtime_cosine", "cross_cosine"):
        assert np.allclose(after[name], before[name])
    assert np.allclose(probe.scorer.score_candidates(queries, profiles_e)[0],
                       shipped.scorer.score_candidates(queries, profiles_e)[0])  # alignment path unchanged
