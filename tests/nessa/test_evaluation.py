"""`nessa eval` (nessa/lab/evaluation/): synthetic embeddings through the whole harness, plus
one small run on real speech."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nessa import calibration as cal
from nessa import metrics
from nessa.lab.evaluation.conditions import add_noise, crop_bounds, make_conditions
from nessa.lab.evaluation.harness import DEFAULT_ARTIFACTS_DIR, EvaluationConfig, evaluate
from nessa.lab.evaluation.protocols import MIN_GAIN_GAP_POINTS, gain_recovered, verification_figures
from nessa.lab.evaluation.report import ROW_KEYS
from nessa.lab.evaluation.systems import adapted_system, artifact_systems
from nessa.lab.scoring_benchmark import benchmark_scoring
from speechcore.embedder import l2_normalise
from tests.conftest import D_ENROLL, D_RUNTIME, SyntheticProvider, synthetic_artifact

pytestmark = pytest.mark.models_only

def run(provider=None, seed=0, crops=(2.0, 1.0), draws=3, artifacts=None, extra_systems=()):
    provider = provider or SyntheticProvider()
    config = EvaluationConfig(artifacts=artifacts or [synthetic_artifact(provider)], crops=crops, draws=draws,
                              seed=seed, progress=False)
    return evaluate(config, provider=provider, extra_systems=extra_systems)


@pytest.fixture(scope="module")
def result():
    return run()


def test_every_system_condition_and_protocol_has_a_row(result):
    expected_systems = ["enroll_sym", "runtime_sym", "anchor_logit", "ridge", "cca",
                        "synthetic-ridge", "synthetic-ridge+fused"]
    assert result.systems == expected_systems
    assert result.conditions == ["full", "2s", "1s"]
    assert len(result.rows) == len(expected_systems) * 3 * 2
    for row in result.rows:
        assert set(ROW_KEYS) <= set(row)
        assert 0.0 <= row["eer"] <= 100.0 and row["min_dcf"] >= 0.0
    # 5 speakers x 5 utterances: all ordered pairs of different utterances
    pairs = result.row("runtime_sym", "full", "all_pairs")
    assert (pairs["n_target"], pairs["n_nontarget"]) == (5 * 5 * 4, 25 * 20)
    assert pairs["eer_sd"] is None and pairs["top1"] is None
    profile = result.row("runtime_sym", "1s", "profile")
    # 3 utterances per profile, the other 2 per speaker tested against all 5 profiles
    assert (profile["n_target"], profile["n_nontarget"]) == (10, 10 * 4)
    assert profile["eer_sd"] is not None and 0.0 <= profile["top1"] <= 100.0
    assert result.row("synthetic-ridge+fused", "2s", "profile")["top1_at_threshold"] is not None
    assert result.row("ridge", "2s", "profile")["top1_at_threshold"] is None


def test_a_perfect_system_has_zero_eer(result):
    for condition in result.conditions:
        for protocol in result.protocols:
            row = result.row("enroll_sym", condition, protocol)
            assert row["eer"] == 0.0 and row["min_dcf"] == 0.0
            if protocol == "profile":
                assert row["top1"] == 100.0 and row["eer_sd"] == 0.0
    assert result.row("runtime_sym", "1s", "all_pairs")["eer"] > 1.0  # the noisy side is not perfect
    assert verification_figures([0.9, 0.8], [0.1, 0.2, 0.3]) == (0.0, 0.0)


def test_seeded_evaluation_reproduces_its_figures_exactly(result, tmp_path):
    again = run()
    assert json.dumps(again.rows) == json.dumps(result.rows)
    assert again.markdown() == result.markdown()
    result.plot_det(tmp_path / "a.png")
    again.plot_det(tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    other = run(seed=1, crops=())  # other profile draws (the synthetic embeddings stay the same)
    assert [other.row(s, "full", "profile")["eer"] for s in other.systems] != \
           [result.row(s, "full", "profile")["eer"] for s in result.systems]


def test_gain_recovered_follows_its_definition(result):
    assert gain_recovered(10.0, 2.0, 6.0) == pytest.approx(0.5)
    assert gain_recovered(10.0, 2.0, 2.0) == pytest.approx(1.0)
    assert gain_recovered(10.0, 2.0, 12.0) == pytest.approx(-0.25)
    assert gain_recovered(2.4, 2.0, 1.0) is None  # gap of 0.4 points: omitted
    assert gain_recovered(2.5, 2.0, 2.0) == pytest.approx(1.0)  # 0.5 points is enough
    for row in result.rows:
        runtime = result.row("runtime_sym", row["condition"], row["protocol"])["eer"]
        enroll = result.row("enroll_sym", row["condition"], row["protocol"])["eer"]
        if runtime - enroll >= MIN_GAIN_GAP_POINTS:
            assert row["gain_recovered"] == pytest.approx((runtime - row["eer"]) / (runtime - enroll))
        else:
            assert row["gain_recovered"] is None
    assert any(row["gain_recovered"] is not None for row in result.rows)


def test_gain_recovered_is_omitted_when_both_references_are_perfect():
    provider = SyntheticProvider(runtime_noise=0.0)  # both models noiseless: no gap to recover
    quiet = run(provider, crops=(), draws=2)
    full = [row for row in quiet.rows if row["condition"] == "full"]
    assert all(row["gain_recovered"] is None for row in full)


def test_json_rows_and_markdown(result, tmp_path):
    path = tmp_path / "out" / "rows.json"
    result.save_json(path)
    rows = json.loads(path.read_text())
    assert isinstance(rows, list) and len(rows) == len(result.rows)
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
    table = result.markdown()
    for system in result.systems:
        assert f"| {system} |" in table
    for condition in result.conditions:
        assert condition in table
    assert "±" in table


def test_adapted_system_hook_gets_each_profiles_paired_embeddings():
    seen = []

    def adapt(enroll, runtime):
        seen.append((enroll.shape, runtime.shape))
        centre = l2_normalise(runtime.mean(axis=0))
        return lambda test_runtime: l2_normalise(test_runtime) @ centre

    outcome = run(crops=(1.0,), draws=2, extra_systems=[adapted_system("adapted_runtime", adapt)])
    assert ((3, D_ENROLL), (3, D_RUNTIME)) in seen and ((1, D_ENROLL), (1, D_RUNTIME)) in seen
    for condition in outcome.conditions:
        for protocol in outcome.protocols:
            assert outcome.row("adapted_runtime", condition, protocol)["eer"] == pytest.approx(
                outcome.row("runtime_sym", condition, protocol)["eer"])


def test_noise_mixing_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    speech, noise = rng.normal(size=16000), rng.normal(size=16000) * 3.0
    noisy = add_noise(speech, noise, 10.0)
    added = noisy - speech
    assert 10 * np.log10(np.mean(speech ** 2) / np.mean(added ** 2)) == pytest.approx(10.0, abs=1e-3)
    bounds = crop_bounds(48000, 16000, (2.0, 1.0, 5.0), 0, "spk", "a.flac")
    assert bounds[0].tolist() == [0, 48000] and bounds[3].tolist() == [0, 48000]
    assert (bounds[1, 1] - bounds[1, 0], bounds[2, 1] - bounds[2, 0]) == (32000, 16000)
    assert np.array_equal(bounds, crop_bounds(48000, 16000, (2.0, 1.0, 5.0), 0, "spk", "/else/a.flac"))


def test_scoring_benchmark_reports_percentiles():
    report = benchmark_scoring(synthetic_artifact(SyntheticProvider()), n_candidates=10, repeats=300)
    assert report["n_candidates"] == 10 and 0 < report["p50_us"] <= report["p95_us"]


@pytest.mark.data
@pytest.mark.slow
def test_real_speech_three_speakers(tmp_path):
    from tests.conftest import REPO_ROOT, requires_shared_data

    test_other = requires_shared_data("librispeech", "test-other")
    anchors = requires_shared_data("librispeech", "train-clean-100")
    from enroll_models.campplus import CamPlusPlusEmbedder
    from runtime_models.ge2e import GE2EEmbedder

    speakers = sorted(p.name for p in test_other.iterdir() if p.is_dir())[:3]
    listing = tmp_path / "eval.txt"
    listing.write_text("".join(f"{s} {f}\n" for s in speakers for f in sorted((test_other / s).glob("*.flac"))[:6]))
    anchor_files = sorted(anchors.glob("*.flac"))[:60]
    anchor_list = tmp_path / "anchors.txt"
    anchor_list.write_text("".join(f"{f.name.split('-')[0]} {f}\n" for f in anchor_files))
    # the project's content-keyed embedding cache (shared with `nessa align train`)
    config = EvaluationConfig(eval_dir=listing, anchors_dir=anchor_list,
                              cache_dir=REPO_ROOT / "var" / "cache" / "embeddings",
                              artifacts=[DEFAULT_ARTIFACTS_DIR / "ridge-ge2e256-to-campplus192-v1"],
                              crops=(2.0, 1.0), draws=2, seed=0, progress=False)
    outcome = evaluate(config, CamPlusPlusEmbedder(), GE2EEmbedder())
    assert outcome.info["n_speakers"] == 3 and outcome.info["anchors"] == 60
    pairs = {system: outcome.row(system, "1s", "all_pairs")["eer"] for system in outcome.systems}
    # Robust on this material: the heavy model beats the aligned cross-model score on 1-s tests,
    # and fusing the runtime score with the cross score beats the cross score alone.
    assert pairs["enroll_sym"] < pairs["ridge-ge2e256-to-campplus192-v1"]
    assert pairs["ridge-ge2e256-to-campplus192-v1+fused"] < pairs["ridge-ge2e256-to-campplus192-v1"]
    assert outcome.row("enroll_sym", "full", "profile")["top1"] >= 90.0


def test_an_artifact_with_its_own_scoring_is_evaluated_through_its_scorer():
    import dataclasses

    provider = SyntheticProvider()
    plain = synthetic_artifact(provider)
    files = provider.anchor_files()
    cohort_e = l2_normalise(np.stack([f.target.mean(axis=0) for f in files]))
    cohort_r = l2_normalise(np.stack([f.source.mean(axis=0) for f in files]))
    names = ("runtime_cosine", "cross_cosine", "aligned_runtime_cosine")
    fused = cal.LogisticCalibration(names, (1.0, 1.0, 1.0), 0.0, thresholds={"far_0.1pct": 3.0})
    cross = cal.LogisticCalibration(("cross_cosine",), (1.0,), 0.0, thresholds={"far_0.1pct": 2.0})
    rich = dataclasses.replace(plain, name="synthetic-rich",
                               params={**plain.params, "cohort_enroll": cohort_e, "cohort_runtime": cohort_r},
                               scoring={"snorm": {"top_k": 5, "features": ["runtime_cosine", "cross_cosine"]},
                                        "fused": fused.to_dict(), "cross": cross.to_dict()})
    result = run(provider, artifacts=[plain, rich])
    data = provider.evaluation_set(make_conditions((2.0, 1.0), None))
    n = len(data.speakers)
    same, valid = data.speakers[:, None] == data.speakers[None, :], ~np.eye(n, dtype=bool)
    for condition, (_, test_r) in data.tests.items():
        llr, _ = rich.scorer.score_candidates(test_r, data.enroll_full, data.runtime_full)
        expected = 100 * metrics.equal_error_rate(llr[same & valid], llr[~same & valid])[0]
        assert result.row("synthetic-rich+fused", condition, "all_pairs")["eer"] == pytest.approx(expected)
    assert artifact_systems(rich)[1].threshold == 3.0
    assert benchmark_scoring(rich, n_candidates=10, repeats=50)["p50_us"] > 0
