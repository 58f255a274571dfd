"""Alignment training (nessa/) on synthetic data: maps, artifacts, metrics, calibration."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nessa import calibration as cal
from nessa import metrics
from nessa.artifact import AlignmentArtifact, ArtifactIntegrityError
from nessa.lab import calibration_fit
from nessa.lab.data import ROLE_PROFILE, ROLE_TEST, ChunkSpec, list_utterances, plan_segments
from nessa.lab.linear import fit_cca, fit_ridge
from nessa.lab.train import train_alignment
from speechcore.embedder import l2_normalise
from tests.conftest import SMALL_CONFIG, SR, SpectralEmbedder, read_wav, write_synthetic_corpus

pytestmark = pytest.mark.models_only



# ----------------------------------------------------------------------------- helpers
def speaker_space(rng, n_speakers: int, per_speaker: int, dim: int, spread: float = 0.3):
    centres = rng.normal(size=(n_speakers, dim))
    labels = np.repeat(np.arange(n_speakers), per_speaker)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def gaussian_trials(rng, n_target: int, n_nontarget: int):
    """Target scores ~ N(1, 1), non-target ~ N(-1, 1): the true LLR is exactly 2 * score."""
    return rng.normal(1.0, 1.0, n_target), rng.normal(-1.0, 1.0, n_nontarget)


def make_artifact(rng, name="demo") -> AlignmentArtifact:
    x, _ = speaker_space(rng, 20, 10, 12)
    y = x @ rng.normal(size=(12, 8))
    ridge = fit_ridge(x, y, 1e-3)
    calibration = cal.LogisticCalibration(("cross_cosine",), (10.0,), -5.0,
                                          thresholds={"far_1pct": 2.0, "far_0.1pct": 3.0})
    fusion = cal.LogisticCalibration(("runtime_cosine", "cross_cosine"), (8.0, 6.0), -7.0,
                                     thresholds={"far_1pct": 2.5, "far_0.1pct": 4.0})
    return AlignmentArtifact(name=name, kind="ridge", source_version="fake-12", source_dim=12,
                             source_weights_sha256="a" * 64, target_version="fake-8", target_dim=8,
                             target_weights_sha256="b" * 64, params=ridge.params(), config={"alpha": 1e-3},
                             data={"n_speakers": 20}, data_sha256="c" * 64, metrics={"eer": 1.0},
                             calibration=calibration.to_dict(), fusion=fusion.to_dict(), command="make it")


# ----------------------------------------------------------------------------- maps
def test_ridge_recovers_a_hidden_linear_map():
    rng = np.random.default_rng(0)
    x, _ = speaker_space(rng, 50, 40, 16)
    hidden, offset = rng.normal(size=(16, 10)), rng.normal(size=10)
    y = x @ hidden + offset + 0.01 * rng.normal(size=(len(x), 10))
    ridge = fit_ridge(x, y, relative_alpha=1e-6)
    recovered = ridge.weight / ridge.x_scale[:, None]  # undo the input standardisation
    assert np.abs(recovered - hidden).max() < 0.01
    x_new, _ = speaker_space(rng, 5, 10, 16)
    residual = ridge.predict(x_new) - (x_new @ hidden + offset)
    assert np.sqrt(np.mean(residual ** 2)) < 0.01


def test_stronger_ridge_penalty_shrinks_the_map():
    rng = np.random.default_rng(1)
    x, _ = speaker_space(rng, 30, 20, 16)
    y = x @ rng.normal(size=(16, 6))
    assert np.linalg.norm(fit_ridge(x, y, 10.0).weight) < 0.5 * np.linalg.norm(fit_ridge(x, y, 1e-4).weight)


def test_cca_finds_the_shared_component_first():
    rng = np.random.default_rng(2)
    shared = rng.normal(size=(3000, 1))
    x = np.hstack([shared, rng.normal(size=(3000, 5))]) @ rng.normal(size=(6, 6))
    y = np.hstack([shared + 0.05 * rng.normal(size=(3000, 1)), rng.normal(size=(3000, 4))]) @ rng.normal(size=(5, 5))
    cca = fit_cca(x, y, n_components=2, shrinkage=0.0)
    assert cca.correlations[0] > 0.99 and cca.correlations[1] < 0.2
    first = np.corrcoef(cca.transform_source(x)[:, 0], cca.transform_target(y)[:, 0])[0, 1]
    assert first > 0.99


# ----------------------------------------------------------------------------- artifact
def test_artifact_round_trip_gives_identical_transforms(tmp_path):
    rng = np.random.default_rng(3)
    artifact = make_artifact(rng)
    queries = rng.normal(size=(7, 12)).astype(np.float32)
    before = artifact.transform(queries)
    folder = artifact.save(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["artifact.json", "params.npz"]
    loaded = AlignmentArtifact.load(folder)
    np.testing.assert_array_equal(loaded.transform(queries), before)
    assert before.shape == (7, 8) and np.allclose(np.linalg.norm(before, axis=1), 1.0, atol=1e-6)
    assert loaded.sha256 == artifact.sha256
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["source_version"] == "fake-12" and manifest["target_dim"] == 8
    assert manifest["command"] == "make it" and "weight" not in manifest
    assert loaded.fusion == artifact.fusion and loaded.calibration == artifact.calibration
    scorer = loaded.scorer
    assert scorer.candidate_threshold(fused=False) == 3.0
    assert scorer.candidate_threshold(fused=False, name="far_1pct") == 2.0
    assert scorer.candidate_threshold() == 4.0 and scorer.candidate_threshold(name="far_1pct") == 2.5
    cross = cal.LogisticCalibration.from_dict(loaded.calibration)
    assert cross.raw_threshold() == pytest.approx(0.8)  # 10 * 0.8 - 5 = 3


def test_ridge_artifact_scores_the_predicted_deviation_against_raw_profiles():
    rng = np.random.default_rng(13)
    artifact = make_artifact(rng)
    queries, profiles = l2_normalise(rng.normal(size=(4, 12))), l2_normalise(rng.normal(size=(3, 8)))
    params = {key: value.astype(np.float64) for key, value in artifact.params.items()}
    deviation = ((queries - params["x_mean"]) / params["x_scale"]) @ params["weight"]  # y_mean left out
    expected = l2_normalise(deviation) @ profiles.T
    np.testing.assert_allclose(artifact.cross_cosine(queries, profiles), expected, atol=1e-5)
    # the service's plain dot product with stored profile vectors is the same score
    np.testing.assert_allclose(artifact.transform(queries) @ profiles.T, expected, atol=1e-5)


def test_saving_twice_writes_the_same_params_bytes(tmp_path):
    artifact = make_artifact(np.random.default_rng(4))
    first = (artifact.save(tmp_path / "a") / "params.npz").read_bytes()
    second = (artifact.save(tmp_path / "b") / "params.npz").read_bytes()
    assert first == second


def test_tampered_params_are_detected(tmp_path):
    artifact = make_artifact(np.random.default_rng(5))
    folder = artifact.save(tmp_path)
    params = dict(np.load(folder / "params.npz"))
    params["weight"] = params["weight"] * 1.01
    np.savez(folder / "params.npz", **params)
    with pytest.raises(ArtifactIntegrityError, match="modified or corrupted"):
        AlignmentArtifact.load(folder)


def test_artifact_rejects_wrong_models():
    artifact = make_artifact(np.random.default_rng(6))
    right_source = SpectralEmbedder("fake-12", 12, 0)
    right_source.weights_sha256 = "a" * 64
    target = SpectralEmbedder("fake-8", 8, 0)
    target.weights_sha256 = "b" * 64
    artifact.check_embedders(right_source, target)
    target.weights_sha256 = "d" * 64
    with pytest.raises(ValueError, match="weights sha256"):
        artifact.check_embedders(right_source, target)


# ----------------------------------------------------------------------------- metrics
def test_perfect_separation_has_zero_eer_and_min_dcf():
    assert metrics.equal_error_rate([0.9, 0.8, 0.7], [0.1, 0.2, 0.3])[0] == 0.0
    assert metrics.min_dcf([0.9, 0.8, 0.7], [0.1, 0.2, 0.3])[0] == 0.0


def test_eer_of_overlapping_gaussians_matches_theory():
    targets, nontargets = gaussian_trials(np.random.default_rng(7), 4000, 4000)
    eer, _ = metrics.equal_error_rate(targets, nontargets)
    assert eer == pytest.approx(0.1587, abs=0.015)  # Phi(-1) for means +-1, unit variance


def test_reduced_eer_equals_speechbrain_on_the_full_trial_list():
    import torch
    from speechbrain.utils.metric_stats import EER

    rng = np.random.default_rng(12)
    for trial in range(4):
        targets = np.round(rng.normal(1.0, 1.0, 80), 2)
        nontargets = np.round(rng.normal(-0.5, 1.0, 400), 2)
        expected = EER(torch.tensor(targets), torch.tensor(nontargets))
        # a narrow window really clips most of the scores
        assert metrics.equal_error_rate(targets, nontargets, window=5) == pytest.approx(expected, abs=1e-12)


def test_reduced_min_dcf_equals_speechbrain_on_the_full_trial_list():
    import torch
    from speechbrain.utils.metric_stats import minDCF

    rng = np.random.default_rng(8)
    for trial in range(5):
        # rounding creates ties within and across classes
        targets = np.round(rng.normal(1.0, 1.0, 60), 1)
        nontargets = np.round(rng.normal(-1.0, 1.0, 900), 1)
        expected, _ = minDCF(torch.tensor(targets), torch.tensor(nontargets), p_target=0.05)
        value, threshold = metrics.min_dcf(targets, nontargets, p_target=0.05)
        assert value == pytest.approx(expected, abs=1e-12)
        cost = 0.05 * np.mean(targets <= threshold) + 0.95 * np.mean(nontargets > threshold)
        assert cost == pytest.approx(value, abs=1e-6)  # speechbrain works in float32


def test_open_set_identification_counts_false_alarms_against_other_profiles():
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.6, 0.8]])
    result = metrics.open_set_identification(scores, ["a", "a", "b"], ["a", "b"], {"t": 0.5})
    assert result["rank1_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    # a's second test is misidentified; impostor view: best other profile 0.1, 0.3, 0.6
    assert result["at_threshold"]["t"]["detection_identification_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["at_threshold"]["t"]["open_set_false_alarm_rate"] == pytest.approx(1 / 3, abs=1e-4)


# ----------------------------------------------------------------------------- calibration
def test_calibration_learns_the_true_llr_and_far_thresholds_hold_on_fresh_trials():
    rng = np.random.default_rng(9)
    targets, nontargets = gaussian_trials(rng, 20000, 200000)
    calibration = calibration_fit.fit_logistic_calibration(targets[:, None], nontargets[:, None], ("score",))
    assert calibration.weights[0] == pytest.approx(2.0, abs=0.05)
    assert calibration.bias == pytest.approx(0.0, abs=0.05)
    _, fresh_nontargets = gaussian_trials(rng, 1, 200000)
    fresh_llr = calibration.llr(fresh_nontargets)
    for name, far in cal.FAR_TARGETS.items():
        threshold = calibration_fit.far_threshold(calibration.llr(nontargets), far)
        assert metrics.false_accept_rate(fresh_llr, threshold) == pytest.approx(far, rel=0.2), name


def test_operating_thresholds_hit_their_error_rates_on_dev_trials():
    rng = np.random.default_rng(11)
    targets, nontargets = gaussian_trials(rng, 1000, 4000)
    thresholds = calibration_fit.operating_thresholds(targets, nontargets)
    assert metrics.false_accept_rate(nontargets, thresholds["far_1pct"]) == pytest.approx(0.01, abs=0.00025)
    assert metrics.false_accept_rate(nontargets, thresholds["far_0.1pct"]) == pytest.approx(0.001, abs=0.00025)
    far = metrics.false_accept_rate(nontargets, thresholds["eer"])
    frr = metrics.false_reject_rate(targets, thresholds["eer"])
    assert far == pytest.approx(frr, abs=0.002) and far == pytest.approx(0.1587, abs=0.02)


def test_far_threshold_never_exceeds_the_allowed_false_accepts():
    scores = np.array([0.1, 0.5, 0.5, 0.5, 0.9] * 40)  # heavy ties
    threshold = calibration_fit.far_threshold(scores, 0.3)
    assert metrics.false_accept_rate(scores, threshold) <= 0.3


def test_fusion_weights_are_positive_when_both_scores_inform():
    rng = np.random.default_rng(10)
    n_t, n_n = 2000, 20000
    runtime_t, runtime_n = rng.normal(0.7, 0.1, n_t), rng.normal(0.4, 0.1, n_n)
    cross_t, cross_n = rng.normal(0.6, 0.15, n_t), rng.normal(0.3, 0.15, n_n)
    fusion = calibration_fit.fit_logistic_calibration(np.c_[runtime_t, cross_t], np.c_[runtime_n, cross_n],
                                          ("runtime_cosine", "cross_cosine"))
    assert fusion.weights[0] > 0 and fusion.weights[1] > 0
    fused_eer, _ = metrics.equal_error_rate(fusion.llr(runtime_t, cross_t), fusion.llr(runtime_n, cross_n))
    runtime_eer, _ = metrics.equal_error_rate(runtime_t, runtime_n)
    assert fused_eer < runtime_eer


def test_calibration_survives_a_dict_round_trip():
    calibration = cal.LogisticCalibration(("a", "b"), (1.5, 2.5), -0.5, thresholds={"far_1pct": 1.0, "eer": 0.2},
                                          default_threshold="eer")
    again = cal.LogisticCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again == calibration and again.threshold() == 0.2


# ----------------------------------------------------------------------------- data
def test_list_utterances_reads_the_three_layouts(tmp_path):
    folders = tmp_path / "folders"
    for speaker, name in (("alice", "a.wav"), ("alice", "sub/b.flac"), ("bob", "c.mp3")):
        (folders / speaker / name).parent.mkdir(parents=True, exist_ok=True)
        (folders / speaker / name).write_bytes(b"x")
    (folders / "alice" / "notes.txt").write_text("not audio")
    assert [(s, p.split("/")[-1]) for s, p in list_utterances(folders)] == [
        ("alice", "a.wav"), ("alice", "b.flac"), ("bob", "c.mp3")]

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("103-1240-0000.flac", "19-198-0001.flac"):
        (flat / name).write_bytes(b"x")
    assert [s for s, _ in list_utterances(flat)] == ["103", "19"]

    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\ncarol {folders / 'bob' / 'c.mp3'}\n\ndave flat/19-198-0001.flac\n")
    assert [s for s, _ in list_utterances(listing)] == ["carol", "dave"]

    (flat / "unknown.flac").write_bytes(b"x")
    with pytest.raises(ValueError, match="no speaker"):
        list_utterances(flat)


def test_segment_plan_is_seeded_and_keeps_profile_and_tests_apart():
    spec = ChunkSpec(chunk_seconds=(1.0, 2.0), chunks_per_length=4, test_seconds=(1.0, 2.0))
    plan = plan_segments(10 * SR, SR, spec, "spk", "/a/utt.flac")
    again = plan_segments(10 * SR, SR, spec, "spk", "/elsewhere/utt.flac")
    np.testing.assert_array_equal(plan.bounds, again.bounds)  # location-independent
    other_seed = plan_segments(10 * SR, SR, ChunkSpec(chunk_seconds=(1.0, 2.0), chunks_per_length=4, seed=1),
                               "spk", "/a/utt.flac")
    assert not np.array_equal(plan.bounds[:8], other_seed.bounds[:8])
    half = 5 * SR
    assert plan.bounds[plan.roles == ROLE_PROFILE, 1].max() <= half
    assert plan.bounds[plan.roles == ROLE_TEST, 0].min() >= half
    assert sorted(plan.seconds[plan.roles == ROLE_TEST].tolist()) == [1.0] * 5 + [2.0] * 2
    assert np.all(plan.bounds[:, 1] - plan.bounds[:, 0] > 0) and plan.bounds.max() <= 10 * SR


# ----------------------------------------------------------------------------- training
def test_seeded_training_is_reproducible_and_resumes_from_cache(tmp_path):
    corpus = list_utterances(write_synthetic_corpus(tmp_path / "corpus"))
    source, target = SpectralEmbedder("fake-src-24", 24, 1), SpectralEmbedder("fake-tgt-16", 16, 2)

    def train(cache, out):
        return train_alignment(source, target, corpus, out_dir=tmp_path / out, name="syn", config=SMALL_CONFIG,
                               seed=3, cache_dir=tmp_path / cache, progress=False, command="test",
                               load_audio=read_wav)

    first, second = train("cache-a", "out-a"), train("cache-b", "out-b")
    cached = train("cache-a", "out-c")  # every file served from the cache
    for other in (second, cached):
        assert first.params.keys() == other.params.keys()
        for key in first.params:
            np.testing.assert_array_equal(first.params[key], other.params[key])
        assert other.calibration == first.calibration and other.fusion == first.fusion
        assert other.params_sha256 == first.params_sha256

    loaded = AlignmentArtifact.load(tmp_path / "out-a" / "syn")
    assert loaded.source_version == "fake-src-24" and loaded.target_dim == 16 and loaded.kind == "ridge"
    assert loaded.data["n_speakers"] == 10 and len(loaded.data["dev_speakers"]) == 4
    assert not set(loaded.data["dev_speakers"]) & set(loaded.data["fit_speakers"])
    assert set(loaded.fusion["thresholds"]) == {"far_1pct", "far_0.1pct", "eer"}
    summary = loaded.metrics["summary"]["dev_eer_percent"]
    assert summary["cross"] < 50.0  # the map carries speaker information across models
    assert loaded.transform(np.ones((2, 24))).shape == (2, 16)


def test_a_cca_alignment_trains_and_round_trips(tmp_path):
    corpus = list_utterances(write_synthetic_corpus(tmp_path / "corpus", n_speakers=8, seconds=4.0))
    source, target = SpectralEmbedder("fake-src-24", 24, 1), SpectralEmbedder("fake-tgt-16", 16, 2)
    config = {**SMALL_CONFIG, "kind": "cca", "cca_components": 6, "cca_shrinkages": [0.5]}
    artifact = train_alignment(source, target, corpus, out_dir=tmp_path / "out", name="cca", config=config,
                               cache_dir=tmp_path / "cache", progress=False, load_audio=read_wav)
    loaded = AlignmentArtifact.load(tmp_path / "out" / "cca")
    queries, profiles = l2_normalise(np.ones((3, 24))), l2_normalise(np.ones((2, 16)))
    assert loaded.output_dim == 6 and loaded.cross_cosine(queries, profiles).shape == (3, 2)
    np.testing.assert_array_equal(loaded.cross_cosine(queries, profiles), artifact.cross_cosine(queries, profiles))


# ----------------------------------------------------------------------------- candidate scoring
def test_score_candidates_without_scoring_applies_the_plain_fusion_and_calibration():
    rng = np.random.default_rng(5)
    artifact = make_artifact(rng)
    queries = rng.normal(size=(3, 12)).astype(np.float32)
    enroll = rng.normal(size=(4, 8)).astype(np.float32)
    runtime = rng.normal(size=(4, 12)).astype(np.float32)
    runtime[1] = np.nan  # this profile has no runtime-space vector: alignment path
    llr, fused = artifact.scorer.score_candidates(queries, enroll, runtime)
    assert llr.shape == (3, 4) and fused.tolist() == [True, False, True, True]
    cross = artifact.cross_cosine(queries, enroll)
    light = l2_normalise(queries) @ l2_normalise(runtime[[0, 2, 3]]).T
    fusion = cal.LogisticCalibration.from_dict(artifact.fusion)
    calibration = cal.LogisticCalibration.from_dict(artifact.calibration)
    np.testing.assert_allclose(llr[:, [0, 2, 3]], fusion.llr(light, cross[:, [0, 2, 3]]), atol=1e-5)
    np.testing.assert_allclose(llr[:, 1], calibration.llr(cross[:, 1]), atol=1e-5)
    single, _ = artifact.scorer.score_candidates(queries[0], enroll, runtime)
    np.testing.assert_allclose(single, llr[0], atol=1e-6)
    assert artifact.scorer.candidate_threshold() == fusion.threshold() == 4.0


def test_adaptive_snorm_removes_per_side_offsets():
    from nessa.snorm import adaptive_snorm

    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 5))
    q_cohort, p_cohort = rng.normal(size=(4, 30)), rng.normal(size=(5, 30))
    shifted = adaptive_snorm(base + 3.0, q_cohort + 3.0, p_cohort + 3.0, 10)
    np.testing.assert_allclose(shifted, adaptive_snorm(base, q_cohort, p_cohort, 10), atol=1e-9)
    # a query whose cohort scores are all high (a "hub") gets its scores pulled down
    hub = q_cohort.copy()
    hub[0] += 1.0
    assert np.all(adaptive_snorm(base, hub, p_cohort, 10)[0] < adaptive_snorm(base, q_cohort, p_cohort, 10)[0])


def test_scoring_with_cohort_bands_round_trips_and_uses_the_band(tmp_path):
    rng = np.random.default_rng(7)
    artifact = make_artifact(rng)
    params = dict(artifact.params, cohort_enroll=rng.normal(size=(20, 8)), cohort_runtime=rng.normal(size=(20, 12)))
    short = cal.LogisticCalibration(("runtime_cosine", "cross_cosine", "aligned_runtime_cosine"), (1.0, 2.0, 3.0),
                                    0.5, thresholds={"far_0.1pct": 1.5})
    long = cal.LogisticCalibration(("runtime_cosine", "cross_cosine", "aligned_runtime_cosine"), (3.0, 1.0, 0.5),
                                   -0.5, thresholds={"far_0.1pct": 2.5})
    cross = cal.LogisticCalibration(("cross_cosine",), (2.0,), 0.0, thresholds={"far_0.1pct": 2.0})
    scoring = {"snorm": {"top_k": 5, "features": ["runtime_cosine", "cross_cosine"]},
               "fused": long.to_dict(), "cross": cross.to_dict(),
               "duration_bands": [{"max_seconds": 1.5, "fused": short.to_dict(), "cross": cross.to_dict()},
                                  {"max_seconds": None, "fused": long.to_dict(), "cross": cross.to_dict()}]}
    import dataclasses

    artifact = dataclasses.replace(artifact, params=params, scoring=scoring)
    loaded = AlignmentArtifact.load(artifact.save(tmp_path))
    assert loaded.sha256 == artifact.sha256 and loaded.scoring == scoring
    queries, enroll, runtime = rng.normal(size=(2, 12)), rng.normal(size=(3, 8)), rng.normal(size=(3, 12))
    scorer = loaded.scorer
    feats = scorer.candidate_features(queries, enroll, runtime)
    assert set(feats) == {"runtime_cosine", "cross_cosine", "aligned_runtime_cosine"}
    assert not np.allclose(feats["cross_cosine"], loaded.cross_cosine(queries, enroll))  # S-normed
    one, _ = scorer.score_candidates(queries, enroll, runtime, seconds=1.0)
    three, _ = scorer.score_candidates(queries, enroll, runtime, seconds=3.0)
    names = short.features
    np.testing.assert_allclose(one, short.llr(*[feats[n] for n in names]), atol=1e-6)
    np.testing.assert_allclose(three, long.llr(*[feats[n] for n in names]), atol=1e-6)
    assert scorer.candidate_threshold() == 2.5 and scorer.candidate_threshold(fused=False) == 2.0
    per_query, _ = scorer.score_candidates(queries, enroll, runtime, seconds=np.array([1.0, 3.0]))
    np.testing.assert_allclose(per_query, np.stack([one[0], three[1]]), atol=1e-9)
