"""In-domain adaptation, the learning-curve trend and the upgrade gain (synthetic data)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nessa.artifact import AlignmentArtifact
from nessa.lab.adapt import AdaptConfig, adapt_artifact, adapt_from_pairs, closed_form_correction
from nessa.lab.learning_curve import fit_trend, power_law, projected_speakers
from nessa.lab.linear import fit_ridge
from nessa.lab.upgrade import gain_recovered
from speechcore.embedder import l2_normalise

pytestmark = pytest.mark.models_only

DS, DT = 24, 16


def _domain(rng, mix, n_speakers, per_speaker, centres=None):
    """Speakers with a latent identity; runtime = A z + noise, enrollment = B z + noise,
    where the runtime side of a domain is additionally mixed by ``mix``."""
    centres = rng.normal(size=(n_speakers, 12)) if centres is None else centres
    labels = np.repeat(np.arange(len(centres)), per_speaker)
    z = centres[labels] + 0.35 * rng.normal(size=(len(labels), 12))
    return z, labels


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, DS)), rng.normal(size=(12, DT))
    shift = np.eye(DS) + 0.6 * rng.normal(size=(DS, DS)) / np.sqrt(DS)  # the new domain's runtime distortion

    def embed(z, domain_shift):
        x = z @ a + 0.1 * rng.normal(size=(len(z), DS))
        if domain_shift:
            x = x @ shift
        return l2_normalise(x), l2_normalise(z @ b + 0.1 * rng.normal(size=(len(z), DT)))

    z, _ = _domain(rng, None, 80, 10)
    x, y = embed(z, False)
    ridge = fit_ridge(x, y, 0.01).params()
    parent = AlignmentArtifact(name="synthetic-ridge", kind="ridge", source_version="rt", source_dim=DS,
                               source_weights_sha256="r" * 64, target_version="en", target_dim=DT,
                               target_weights_sha256="e" * 64, params=ridge,
                               calibration={"features": ["cross_cosine"], "weights": [10.0], "bias": -5.0,
                                            "thresholds": {"far_0.1pct": 1.0}},
                               fusion={"features": ["runtime_cosine", "cross_cosine"], "weights": [5.0, 5.0],
                                       "bias": -5.0, "thresholds": {"far_0.1pct": 1.0}})
    centres = rng.normal(size=(12, 12))
    z_in, s_in = _domain(rng, None, 12, 8, centres)
    z_out, s_out = _domain(rng, None, 12, 8, centres)
    return parent, embed(z_in, True), s_in, embed(z_out, True), s_out


def _pair_cosine(artifact, x, y):
    return float(np.mean(np.sum(artifact.transform(x) * artifact.transform_target(y), axis=1)))


@pytest.mark.parametrize("method", ["closed_form"])
def test_adaptation_improves_held_out_pairs_and_records_parent(setup, tmp_path, method):
    parent, (x_in, y_in), s_in, (x_out, y_out), _ = setup
    before = _pair_cosine(parent, x_out, y_out)
    adapted = adapt_artifact(parent, x_in, y_in, s_in, config={"method": method, "lam": 0.1})
    assert _pair_cosine(adapted, x_out, y_out) > before + 0.02
    assert adapted.name == "synthetic-ridge+adapted"
    assert adapted.config["adaptation"]["parent"] == parent.name
    assert adapted.config["adaptation"]["parent_sha256"] == parent.sha256
    assert adapted.calibration == parent.calibration and not adapted.config["adaptation"]["recalibrated"]
    saved = adapt_from_pairs(parent.save(tmp_path / "p"), x_in, y_in, s_in, tmp_path / "out", "mine",
                             {"method": method, "lam": 0.1})
    loaded = AlignmentArtifact.load(tmp_path / "out" / "mine")
    assert loaded.sha256 == saved.sha256 and loaded.config["adaptation"]["parent"] == parent.name
    np.testing.assert_allclose(loaded.transform(x_out), adapted.transform(x_out), atol=1e-5)


def test_few_pairs_stay_close_to_parent(setup):
    parent, (x_in, y_in), s_in, (x_out, _), _ = setup
    few = adapt_artifact(parent, x_in[:3], y_in[:3], s_in[:3], config=AdaptConfig(lam=1.0))
    agreement = np.mean(np.sum(few.transform(x_out) * parent.transform(x_out), axis=1))
    assert agreement > 0.97
    none = closed_form_correction(np.zeros((0, DT)), np.zeros((0, DT)), 1.0)
    np.testing.assert_allclose(none, np.eye(DT))


def test_trend_recovers_power_law_and_projection():
    counts = np.array([25, 50, 100, 150, 200, 251], dtype=float)
    eers = power_law(counts, 120.0, 0.7, 1.5)
    trend = fit_trend(np.repeat(counts, 2), np.repeat(eers, 2))
    assert trend["form"] == "power"
    assert trend["a"] == pytest.approx(120.0, rel=1e-3) and trend["b"] == pytest.approx(0.7, rel=1e-3)
    assert trend["c"] == pytest.approx(1.5, abs=1e-3)
    n = projected_speakers(trend, 2.0)
    assert power_law(n, 120.0, 0.7, 1.5) == pytest.approx(2.0, rel=1e-4)
    assert n == pytest.approx((120.0 / 0.5) ** (1 / 0.7), rel=1e-3)
    assert math.isinf(projected_speakers(trend, 1.0))
    log_trend = fit_trend(counts, 10.0 - 1.5 * np.log(counts), "loglinear")
    assert projected_speakers(log_trend, 1.0) == pytest.approx(math.exp(9.0 / 1.5), rel=1e-6)


def test_upgrade_gain_formula():
    assert gain_recovered(2.0, 0.5, 1.0) == pytest.approx(2 / 3)
    assert gain_recovered(2.0, 0.5, 2.0) == 0.0 and gain_recovered(2.0, 0.5, 0.5) == 1.0
    assert gain_recovered(1.0, 0.8, 0.9) is None  # gap below 0.5 points


def test_finetune_with_l2sp_improves_and_only_moves_the_source_side(setup):
    parent, (x_in, y_in), s_in, (x_out, y_out), _ = setup
    params = dict(parent.params)
    params["bias"] = np.zeros(DT, dtype=np.float32)
    net = AlignmentArtifact(**{**{f: getattr(parent, f) for f in ("source_version", "source_dim",
                                                                   "source_weights_sha256", "target_version",
                                                                   "target_dim", "target_weights_sha256",
                                                                   "calibration", "fusion")},
                               "name": "synthetic-linear", "kind": "nn-linear", "params": params})
    before = _pair_cosine(net, x_out, y_out)
    adapted = adapt_artifact(net, x_in, y_in, s_in, config={"method": "finetune", "steps": 150, "lr": 3e-3,
                                                            "l2_sp": 1e-3})
    assert _pair_cosine(adapted, x_out, y_out) > before + 0.02
    np.testing.assert_array_equal(adapted.params["y_mean"], net.params["y_mean"])
    strong = adapt_artifact(net, x_in, y_in, s_in, config={"method": "finetune", "steps": 150, "lr": 3e-3,
                                                           "l2_sp": 100.0})
    assert np.mean(np.sum(strong.transform(x_out) * net.transform(x_out), axis=1)) > 0.99


def test_evaluate_adapt_adds_profile_only_rows(tmp_path):
    from nessa.lab.evaluation.harness import EvaluationConfig, evaluate
    from tests.conftest import SyntheticProvider, synthetic_artifact

    provider = SyntheticProvider()
    artifact = synthetic_artifact(provider)
    config = EvaluationConfig(artifacts=[artifact], crops=(2.0,), draws=2, adapt=True, progress=False)
    result = evaluate(config, provider=provider)
    name = f"{artifact.name}+adapted"
    assert name in result.systems and f"{name}+fused" in result.systems
    assert math.isfinite(result.row(name, "full", "profile")["eer"])
    assert math.isnan(result.row(name, "full", "all_pairs")["eer"])  # never run on all pairs
    assert "| " + name + " | – |" in result.markdown()
    result.plot_det(tmp_path / "det.png")
