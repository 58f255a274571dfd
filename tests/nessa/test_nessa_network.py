"""Alignment networks (nessa.network, nessa.lab.train_network) on small synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nessa import calibration as cal
from nessa.artifact import AlignmentArtifact
from nessa.kinds import KINDS
from nessa.lab import losses
from nessa.lab.torch_alignment import build_module
from nessa.lab.network_config import NetworkConfig
from nessa.lab.network_pairs import PairSet
from nessa.lab.network_training import fit_network, train_run
from nessa.network import ARCHITECTURES, KIND_OF, TRANSFORMS
from speechcore.embedder import l2_normalise
from tests.conftest import SMALL_CONFIG, SpectralEmbedder, read_wav, write_synthetic_corpus

pytestmark = pytest.mark.models_only


def synthetic_pairs(seed: int = 0, n_speakers: int = 12, per_speaker: int = 8, dx: int = 24, dy: int = 16) -> PairSet:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, dx))
    labels = np.repeat(np.arange(n_speakers), per_speaker)
    x = centres[labels] + 0.3 * rng.normal(size=(len(labels), dx))
    y = np.tanh(x @ rng.normal(size=(dx, dy)) / 3)
    return PairSet(x=l2_normalise(x).astype(np.float32), y=l2_normalise(y).astype(np.float32), speaker=labels,
                   speakers=[f"s{i}" for i in range(n_speakers)], speaker_weight=np.ones(n_speakers))


SMALL = {"hidden": 32, "shared_dim": 8, "target_hidden": 8, "epochs": 2, "steps_per_epoch": 2,
         "speakers_per_batch": 6, "chunks_per_speaker": 3}


@pytest.mark.parametrize("arch", ["resmlp", "twotower"])
def test_network_overfits_a_small_batch(arch):
    pairs = synthetic_pairs(n_speakers=4, per_speaker=4)
    torch.manual_seed(0)
    model = build_module(arch, 24, 16, hidden=64, shared_dim=16, target_hidden=16,
                         init={"x_mean": pairs.x.mean(0), "x_scale": pairs.x.std(0) + 1e-6})
    x, y = torch.from_numpy(pairs.x), torch.from_numpy(pairs.y)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        a = torch.nn.functional.normalize(model.source(x), dim=1)
        t = torch.nn.functional.normalize(model.target(y), dim=1)
        loss = losses.cosine_fidelity(a, t)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < 1e-2
    assert float((a * t).sum(1).min()) > 0.95


def test_losses_behave():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]), dim=1)
    bad = good[[2, 3, 0, 1]]
    assert losses.supervised_contrastive(good, good, labels, 0.1) < losses.supervised_contrastive(good, bad, labels, 0.1)
    prototypes = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1]]), dim=1)
    assert losses.prototype_classification(good, prototypes, labels, 10, 0.1) < \
        losses.prototype_classification(bad, prototypes, labels, 10, 0.1)


@pytest.mark.parametrize("arch,init", [("resmlp", "ridge"), ("twotower", "cca"), ("mlp", "random"),
                                       ("linear", "ridge")])
def test_training_loop_smoke_and_numpy_matches_torch(arch, init, tmp_path):
    pairs = synthetic_pairs()
    config = NetworkConfig(arch=arch, init=init, w_global=0.5, w_target_contrastive=0.1 if arch == "twotower" else 0,
                           input_noise=0.1, l2_init=1.0, **SMALL)
    log: list = []
    params = fit_network(pairs, config, seed=0, checkpoint_dir=tmp_path, progress=False, log=log)
    assert len(log) == config.epochs and np.isfinite(log[-1]["loss"])
    assert set(params) == set(KINDS[KIND_OF[arch]].param_shapes)
    module = build_module(arch, 24, 16, **{k: SMALL[k] for k in ("hidden", "shared_dim", "target_hidden")}, init=params)
    module.eval()
    with torch.no_grad():
        expected = module.source(torch.from_numpy(pairs.x)).numpy()
        expected_t = module.target(torch.from_numpy(pairs.y)).numpy()
    source_fn, target_fn = TRANSFORMS[KIND_OF[arch]]
    np.testing.assert_allclose(source_fn(params, pairs.x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(target_fn(params, pairs.y), expected_t, rtol=1e-4, atol=1e-5)


def test_seeded_training_is_reproducible_and_resumes(tmp_path):
    pairs = synthetic_pairs()
    config = NetworkConfig(arch="twotower", init="cca", **SMALL)
    first = fit_network(pairs, config, seed=3, progress=False)
    second = fit_network(pairs, config, seed=3, progress=False)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    other = fit_network(pairs, config, seed=4, progress=False)
    assert any(not np.array_equal(first[k], other[k]) for k in first)
    # interrupted after epoch 1 of 2, then resumed: same result as the uninterrupted run
    fit_network(pairs, NetworkConfig(**{**config.as_dict(), "epochs": 2}), seed=3, checkpoint_dir=tmp_path,
                progress=False)
    (run_dir,) = list(tmp_path.iterdir())
    checkpoint = torch.load(next(run_dir.glob("epoch_*.pt")), weights_only=False)
    assert checkpoint["epoch"] == 1
    resumed = fit_network(pairs, config, seed=3, checkpoint_dir=tmp_path, progress=False)
    for key in first:
        np.testing.assert_array_equal(first[key], resumed[key])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_network_artifact_round_trip(arch, tmp_path):
    pairs = synthetic_pairs()
    init = {"resmlp": "ridge", "linear": "ridge", "twotower": "cca", "mlp": "random"}[arch]
    params = fit_network(pairs, NetworkConfig(arch=arch, init=init, **SMALL), seed=0, progress=False)
    calibration = cal.LogisticCalibration(("cross_cosine",), (10.0,), -5.0, thresholds={"far_0.1pct": 3.0})
    fusion = cal.LogisticCalibration(("runtime_cosine", "cross_cosine"), (8.0, 6.0), -7.0,
                                     thresholds={"far_0.1pct": 4.0})
    artifact = AlignmentArtifact(name=f"net-{arch}", kind=KIND_OF[arch], source_version="fake-24", source_dim=24,
                                 source_weights_sha256="a" * 64, target_version="fake-16", target_dim=16,
                                 target_weights_sha256="b" * 64, params=params, calibration=calibration.to_dict(),
                                 fusion=fusion.to_dict(), command="test")
    loaded = AlignmentArtifact.load(artifact.save(tmp_path))
    assert loaded.sha256 == artifact.sha256
    np.testing.assert_array_equal(loaded.transform(pairs.x), artifact.transform(pairs.x))
    np.testing.assert_array_equal(loaded.cross_cosine(pairs.x, pairs.y), artifact.cross_cosine(pairs.x, pairs.y))
    cross = loaded.cross_cosine(pairs.x[:3], pairs.y[:5])
    assert cross.shape == (3, 5) and np.all(np.abs(cross) <= 1 + 1e-5)
    assert loaded.fusion == artifact.fusion and loaded.calibration == artifact.calibration


def test_wise_soup_and_frozen_linear_are_what_they_claim():
    pairs = synthetic_pairs()
    base = {**SMALL, "arch": "twotower", "init": "cca"}
    initial, trained = train_run(pairs, NetworkConfig(**base), 0, 0, progress=False)
    # wise_alpha = 1 is the plain run; 0 the initial (CCA) weights; 0.5 halfway, array by array
    plain = fit_network(pairs, NetworkConfig(**base), seed=0, progress=False)
    for key in plain:
        np.testing.assert_array_equal(plain[key], trained[key])
    at_init = fit_network(pairs, NetworkConfig(**base, wise_alpha=0.0), seed=0, progress=False)
    half = fit_network(pairs, NetworkConfig(**base, wise_alpha=0.5), seed=0, progress=False)
    for key in plain:
        np.testing.assert_allclose(at_init[key], initial[key], atol=1e-7)
        np.testing.assert_allclose(half[key], (initial[key] + trained[key]) / 2, atol=1e-6)
    # a soup of 2 is the mean of the runs with batch seeds 0 and 1 (same initial weights)
    _, second = train_run(pairs, NetworkConfig(**base), 0, 1, progress=False)
    souped = fit_network(pairs, NetworkConfig(**base, soup=2), seed=0, progress=False)
    for key in plain:
        np.testing.assert_allclose(souped[key], (trained[key] + second[key]) / 2, atol=1e-6)
    # frozen linear parts stay at their CCA values while the residual branches move
    frozen = fit_network(pairs, NetworkConfig(**base, freeze_linear=True), seed=0, progress=False)
    np.testing.assert_array_equal(frozen["weight"], initial["weight"])
    np.testing.assert_array_equal(frozen["t_weight"], initial["t_weight"])
    assert not np.array_equal(frozen["w2"], initial["w2"])


def test_network_training_with_rich_scoring_builds_a_working_artifact(tmp_path):
    from nessa.lab.data import list_utterances
    from nessa.lab.train_network import train_network_alignment

    corpus = write_synthetic_corpus(tmp_path / "corpus", n_speakers=10, seconds=4.0)
    source, target = SpectralEmbedder("fake-src", 24, 1), SpectralEmbedder("fake-tgt", 16, 2)
    config = NetworkConfig(**{**SMALL, "arch": "twotower", "init": "cca", "snorm_top_k": 3, "wise_alpha": 0.5,
                              "fused_features": "runtime_cosine,cross_cosine,aligned_runtime_cosine",
                              "duration_bands": "0.75"})
    artifact = train_network_alignment(source, target, [("synthetic", list_utterances(corpus))],
                                       out_dir=tmp_path / "out", name="rich", config=config, seed=0,
                                       cache_dir=tmp_path / "cache" / "embeddings", progress=False,
                                       load_audio=read_wav, base={**SMALL_CONFIG, "cca_components": 8})
    loaded = AlignmentArtifact.load(tmp_path / "out" / "rich")
    assert loaded.sha256 == artifact.sha256
    scoring = loaded.scoring
    assert scoring["snorm"]["top_k"] == 3 and [b["max_seconds"] for b in scoring["duration_bands"]] == [0.75, None]
    assert loaded.params["cohort_enroll"].shape == (10, 16) and loaded.params["cohort_runtime"].shape == (10, 24)
    assert set(scoring["metrics"]["dev_eer_percent"]["fused"]) >= {"pooled", "0.5s", "1s"}
    rng = np.random.default_rng(0)
    queries, enroll, runtime = rng.normal(size=(3, 24)), rng.normal(size=(4, 16)), rng.normal(size=(4, 24))
    llr, fused = loaded.scorer.score_candidates(queries, enroll, runtime, seconds=[0.5, 1.0, 2.0])
    assert llr.shape == (3, 4) and fused.all() and np.isfinite(llr).all()
    plain_threshold = cal.LogisticCalibration.from_dict(loaded.fusion).threshold()
    assert np.isfinite(loaded.scorer.candidate_threshold()) and loaded.scorer.candidate_threshold() != plain_threshold


def test_cca_branch_scores_are_the_weighted_mean_of_tower_and_cca_cosines():
    from nessa.lab.linear import fit_cca
    from nessa.lab.network_init import cca_branch_params

    pairs = synthetic_pairs()
    tower = fit_network(pairs, NetworkConfig(arch="twotower", init="cca", **SMALL), seed=0, progress=False)
    cca = fit_cca(pairs.x.astype(np.float64), pairs.y.astype(np.float64), 6, 0.5).params()
    params = {**tower, **{k: np.asarray(v, np.float32) for k, v in cca_branch_params(cca, 0.3).items()}}
    kw = dict(source_version="fake-24", source_dim=24, source_weights_sha256="a" * 64, target_version="fake-16",
              target_dim=16, target_weights_sha256="b" * 64)
    both = AlignmentArtifact(name="ens", kind="nn-twotower-cca", params=params, **kw)
    alone = AlignmentArtifact(name="tower", kind="nn-twotower", params=tower, **kw)
    linear = AlignmentArtifact(name="cca", kind="cca", params=cca, **kw)
    x, y = pairs.x[:7], pairs.y[5:16]
    expected = 0.7 * alone.cross_cosine(x, y) + 0.3 * linear.cross_cosine(x, y)
    np.testing.assert_allclose(both.cross_cosine(x, y), expected, atol=1e-5)
    assert both.output_dim == 8 + 6
    # the *_tower features are the same comparisons in the tower's space alone
    runtime = pairs.x[20:31]
    features = both.scorer.candidate_features(x, y, runtime)
    np.testing.assert_allclose(features["cross_cosine_tower"], alone.cross_cosine(x, y), atol=1e-5)
    np.testing.assert_allclose(features["aligned_runtime_cosine_tower"],
                               alone.transform(x) @ alone.transform(runtime).T, atol=1e-5)
    np.testing.assert_allclose(features["cross_cosine"], expected, atol=1e-5)
    assert "cross_cosine_tower" not in alone.scorer.candidate_features(x, y, runtime)
    with pytest.raises(ValueError, match="between 0 and 1"):
        cca_branch_params(cca, 1.0)
    with pytest.raises(ValueError, match="cca_branch needs arch=twotower"):
        NetworkConfig(arch="resmlp", cca_branch=0.3)
    with pytest.raises(ValueError, match="need a CCA branch"):
        NetworkConfig(arch="twotower", init="cca", fused_features="runtime_cosine,cross_cosine_tower")


def test_network_training_with_a_cca_branch_saves_that_kind(tmp_path):
    from nessa.lab.adapt import AdaptConfig, adapted_params
    from nessa.lab.data import list_utterances
    from nessa.lab.train_network import train_network_alignment

    corpus = write_synthetic_corpus(tmp_path / "corpus", n_speakers=10, seconds=4.0)
    source, target = SpectralEmbedder("fake-src", 24, 1), SpectralEmbedder("fake-tgt", 16, 2)
    config = NetworkConfig(**{**SMALL, "arch": "twotower", "init": "cca", "cca_branch": 0.3, "snorm_top_k": 3,
                              "fused_features": "runtime_cosine,cross_cosine_tower,aligned_runtime_cosine_tower",
                              "snorm_features": "runtime_cosine,cross_cosine,cross_cosine_tower"})
    artifact = train_network_alignment(source, target, [("synthetic", list_utterances(corpus))],
                                       out_dir=tmp_path / "out", name="ens", config=config, seed=0,
                                       cache_dir=tmp_path / "cache" / "embeddings", progress=False,
                                       load_audio=read_wav, base={**SMALL_CONFIG, "cca_components": 8})
    loaded = AlignmentArtifact.load(tmp_path / "out" / "ens")
    assert loaded.kind == "nn-twotower-cca" and loaded.sha256 == artifact.sha256
    np.testing.assert_allclose(loaded.params["mix"] ** 2, [0.7, 0.3], atol=1e-6)
    rng = np.random.default_rng(0)
    queries, enroll, runtime = rng.normal(size=(3, 24)), rng.normal(size=(4, 16)), rng.normal(size=(4, 24))
    llr, fused = loaded.scorer.score_candidates(queries, enroll, runtime)
    assert llr.shape == (3, 4) and fused.all() and np.isfinite(llr).all()
    assert loaded.scoring["fused"]["features"] == ["runtime_cosine", "cross_cosine_tower",
                                                   "aligned_runtime_cosine_tower"]
    assert loaded.scoring["cross"]["features"] == ["cross_cosine"]
    # the fused path reads the tower's S-normed features, the alignment-only path the
    # ensemble's: what score_prepared computes equals the calibrations applied to all features
    features = loaded.scorer.candidate_features(queries, enroll, runtime)
    fused_cal = cal.LogisticCalibration.from_dict(loaded.scoring["fused"])
    np.testing.assert_allclose(llr, fused_cal.llr(*[features[n] for n in fused_cal.features]), atol=1e-9)
    cross_llr, none_fused = loaded.scorer.score_candidates(queries, enroll, np.full((4, 24), np.nan))
    cross_cal = cal.LogisticCalibration.from_dict(loaded.scoring["cross"])
    assert not none_fused.any()
    np.testing.assert_allclose(cross_llr, cross_cal.llr(features["cross_cosine"]), atol=1e-9)
    # gallery adaptation fine-tunes the tower and keeps the linear branch as it is
    speakers = np.repeat(np.arange(4), 3)
    adapted = adapted_params(loaded, rng.normal(size=(12, 24)), rng.normal(size=(12, 16)), speakers,
                             AdaptConfig(steps=3))
    assert set(adapted) == set(loaded.params)
    for key in ("c_x_projection", "c_y_projection", "mix", "t_weight"):
        np.testing.assert_array_equal(adapted[key], loaded.params[key])
    assert not np.array_equal(adapted["w2"], loaded.params["w2"])


@pytest.mark.parametrize("arch,cca_branch", [("resmlp", 0.0), ("twotower", 0.0), ("twotower", 0.4)])
def test_compiled_source_transform_matches_the_reference(arch, cca_branch):
    from nessa.lab.linear import fit_cca
    from nessa.lab.network_init import cca_branch_params
    from nessa.network import compile_source

    pairs = synthetic_pairs()
    init = "ridge" if arch == "resmlp" else "cca"
    params = fit_network(pairs, NetworkConfig(arch=arch, init=init, **SMALL), seed=0, progress=False)
    kind = KIND_OF[arch]
    if cca_branch:
        cca = fit_cca(pairs.x.astype(np.float64), pairs.y.astype(np.float64), 6, 0.5).params()
        params = {**params, **{k: np.asarray(v, np.float32) for k, v in cca_branch_params(cca, cca_branch).items()}}
        kind = "nn-twotower-cca"
    reference = TRANSFORMS[kind][0](params, pairs.x)
    compiled = compile_source(kind, params)(pairs.x)
    np.testing.assert_allclose(compiled, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    assert compile_source("nn-linear", params) is None  # kinds without a fast path keep the reference


def test_adapting_an_artifact_with_its_own_scoring_recalibrates_what_the_service_reads():
    from nessa.lab.adapt import adapt_artifact

    pairs = synthetic_pairs(n_speakers=48, per_speaker=6)
    params = fit_network(pairs, NetworkConfig(arch="twotower", init="cca", **SMALL), seed=0, progress=False)
    cohort = {"cohort_enroll": pairs.y[::6][:20], "cohort_runtime": pairs.x[::6][:20]}
    names = ("runtime_cosine", "cross_cosine", "aligned_runtime_cosine")
    stale = {"fused": cal.LogisticCalibration(names, (1.0, 1.0, 1.0), -30.0, thresholds={"far_0.1pct": 3.0}).to_dict(),
             "cross": cal.LogisticCalibration(("cross_cosine",), (1.0,), -30.0,
                                              thresholds={"far_0.1pct": 2.0}).to_dict(),
             "snorm": {"top_k": 3, "features": ["runtime_cosine", "cross_cosine"]}, "fused_features": list(names)}
    parent = AlignmentArtifact(name="rich", kind="nn-twotower", source_version="fake-24", source_dim=24,
                               source_weights_sha256="a" * 64, target_version="fake-16", target_dim=16,
                               target_weights_sha256="b" * 64, params={**params, **cohort},
                               calibration=stale["cross"], fusion=stale["fused"], scoring=stale)
    speakers = np.asarray(pairs.speakers)[pairs.speaker]
    adapted = adapt_artifact(parent, pairs.x, pairs.y, speakers, config={"steps": 5, "min_calibration_speakers": 40})
    assert adapted.config["adaptation"]["recalibrated"]
    for label in ("fused", "cross"):
        fresh = cal.LogisticCalibration.from_dict(adapted.scoring[label])
        assert fresh.features == tuple(stale[label]["features"]) and fresh.bias != -30.0
        assert all(w > 0 for w in fresh.weights) and np.isfinite(fresh.threshold())
    assert adapted.scoring["snorm"] == stale["snorm"]
    # the service's scores now sit on the new calibration: same-speaker queries clear its threshold
    profiles_e = np.stack([pairs.y[pairs.speaker == s].mean(axis=0) for s in range(48)])
    profiles_r = np.stack([pairs.x[pairs.speaker == s].mean(axis=0) for s in range(48)])
    llr, _ = adapted.scorer.score_candidates(pairs.x, profiles_e, profiles_r)
    own = llr[np.arange(len(llr)), pairs.speaker]
    assert np.mean(own >= adapted.scorer.candidate_threshold()) > 0.5
