"""Gallery-aware scoring variants of `nessa eval-shift` (issue #12, step 2): the calibration
map's arithmetic on synthetic scores, and the gallery bookkeeping (no models run here)."""
from __future__ import annotations

import numpy as np

from nessa.lab.evaluation import shift_methods as methods
from nessa.lab.evaluation.shift_protocol import Item, ShiftCondition

THRESHOLDS = {"far_1pct": 0.108, "far_0.1pct": 3.106}


def test_refit_puts_the_promised_fraction_of_in_domain_nontargets_above_each_threshold():
    rng = np.random.default_rng(0)
    fit_on = rng.normal(4.0, 2.5, 5000)  # in-domain impostor LLRs far above the shipped scale
    scale, bias = methods.fit_gallery_map(fit_on, THRESHOLDS, "refit")
    fresh = scale * rng.normal(4.0, 2.5, 400_000) + bias
    assert abs(np.mean(fresh >= THRESHOLDS["far_1pct"]) - 0.01) < 0.001
    assert abs(np.mean(fresh >= THRESHOLDS["far_0.1pct"]) - 0.001) < 0.0003
    unmapped = rng.normal(4.0, 2.5, 10_000)
    assert np.mean(unmapped >= THRESHOLDS["far_0.1pct"]) > 0.5  # what the shipped calibration would accept


def test_shift_moves_the_bias_only_and_small_galleries_keep_the_shipped_calibration():
    rng = np.random.default_rng(1)
    scale, bias = methods.fit_gallery_map(rng.normal(-2.0, 1.0, 20_000), THRESHOLDS, "shift")
    assert scale == 1.0
    assert abs(np.mean(rng.normal(-2.0, 1.0, 200_000) + bias >= THRESHOLDS["far_1pct"]) - 0.01) < 0.002
    assert methods.fit_gallery_map(np.zeros(methods.MIN_NONTARGETS - 1), THRESHOLDS, "shift") is None


def test_galleries_are_one_half_and_one_draw():
    item = Item(("a.flac",))
    profiles = [(s, (item,)) for s in ("a", "b", "c", "a", "b", "c")]  # two draws of 3 speakers
    tests = [("a", item), ("b", item), ("c", item)]
    trials = np.array([(t, p) for t in range(3) for p in range(6)])
    half = np.array(["dev" if tests[t][0] != "c" and profiles[p][0] != "c" else "test" for t, p in trials])
    keep = np.array([(tests[t][0] == "c") == (profiles[p][0] == "c") for t, p in trials])
    condition = ShiftCondition("x", "x", "", profiles, tests, trials[keep], np.zeros(keep.sum(), bool), half[keep])
    assert methods.gallery_ids(condition).tolist() == [0, 0, 1, 2, 2, 3]


def test_gallery_snorm_with_the_stored_cohort_alone_is_the_service_scoring():
    from app.settings import Settings
    from nessa.artifact import AlignmentArtifact

    settings = Settings()
    artifact = AlignmentArtifact.load(settings.bundled_artifacts_dir / settings.default_alignment)
    rng = np.random.default_rng(2)
    items = [Item((f"{i}.flac",)) for i in range(12)]
    vectors = {item: (rng.normal(size=artifact.target_dim).astype(np.float32),
                      rng.normal(size=artifact.source_dim).astype(np.float32), 4.0) for item in items}
    profiles = [(str(s), (items[2 * s], items[2 * s + 1])) for s in range(4)]
    tests = [(str(s), items[8 + s]) for s in range(4)]
    trials = np.array([(t, p) for t in range(4) for p in range(4)])
    condition = ShiftCondition("x", "x", "", profiles, tests, trials, trials[:, 0] == trials[:, 1],
                               np.array(["dev"] * len(trials)))
    for fused in (True, False):
        service = methods.stored_snorm_llr(artifact, condition, vectors, fused)
        again = methods.gallery_snorm_llr(artifact, condition, vectors, fused, mode="stored")
        assert np.allclose(service, again, atol=1e-3)
        assert not np.allclose(service, methods.gallery_snorm_llr(artifact, condition, vectors, fused), atol=1e-3)


def test_suspect_rows_flag_an_impostor_whose_own_profile_outscores_the_claimed_one():
    from app.settings import Settings
    from nessa.artifact import AlignmentArtifact

    settings = Settings()
    artifact = AlignmentArtifact.load(settings.bundled_artifacts_dir / settings.default_alignment)
    rng = np.random.default_rng(3)
    items = [Item((f"{i}.flac",)) for i in range(8)]
    voices = [(rng.normal(size=artifact.target_dim), rng.normal(size=artifact.source_dim)) for _ in range(4)]
    # every item of speaker s is its voice plus a little noise: a query is closest to its own profile
    vectors = {item: ((voices[i % 4][0] + 0.05 * rng.normal(size=artifact.target_dim)).astype(np.float32),
                      (voices[i % 4][1] + 0.05 * rng.normal(size=artifact.source_dim)).astype(np.float32), 5.0)
               for i, item in enumerate(items)}
    profiles = [(str(s), (items[s],)) for s in range(4)]
    tests = [(str(s), items[4 + s]) for s in range(4)]
    trials = np.array([(t, p) for t in range(4) for p in range(4)])
    condition = ShiftCondition("x", "x", "", profiles, tests, trials, trials[:, 0] == trials[:, 1],
                               np.array(["dev"] * len(trials)))
    thresholds = {"far_0.1pct": -1e9}  # every claim passes the threshold: only the rule rejects
    closed, = methods.suspect_rows("suspect-closed-m0", artifact, condition, vectors, True, thresholds, ("dev",))
    assert closed["far@far_0.1pct"] == 0.0 and closed["frr@far_0.1pct"] == 0.0
    assert closed["own_enrolled"] == 12
    opened, = methods.suspect_rows("suspect-open-m0", artifact, condition, vectors, True, thresholds, ("dev",))
    assert opened["far@far_0.1pct"] > 0.0  # without its own profile the impostor is rarely exposed
