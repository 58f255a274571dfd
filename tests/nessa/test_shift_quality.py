"""Quality features of `nessa eval-shift --methods quality-...` (issue #12): the estimator ranks
real degraded speech as it should, and the per-bin maps do their arithmetic (no models run)."""
from __future__ import annotations

import numpy as np
import pytest

from nessa.lab.evaluation import shift_channels as channels
from nessa.lab.evaluation import shift_quality as quality
from tests.conftest import requires_shared_data


def _speech(*parts: str) -> np.ndarray:
    from nessa.lab.data import default_audio_loader

    return np.asarray(default_audio_loader()(str(requires_shared_data(*parts))), dtype=np.float64)


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return _speech("librispeech", "test-other", "1688", "1688-142285-0000.flac")


@pytest.fixture(scope="module")
def talkers() -> list[np.ndarray]:
    folder = requires_shared_data("librispeech", "train-clean-100")
    paths = sorted(p for p in folder.rglob("*.flac"))[:60:15]
    from nessa.lab.data import default_audio_loader

    return [np.asarray(default_audio_loader()(str(p)), dtype=np.float64) for p in paths]


def test_snr_estimate_ranks_5db_below_10db_below_clean(utterance, talkers):
    clean = quality.snr_db(utterance)
    at10 = quality.snr_db(channels.add_babble(utterance, talkers, 10.0, seed=1))
    at5 = quality.snr_db(channels.add_babble(utterance, talkers, 5.0, seed=1))
    assert at5 < at10 < clean
    assert clean - at5 > 6.0  # a clear margin, not a tie broken by noise
    reverberant = channels.reverberate(utterance, channels.synthetic_rir(0.5, 3, drr_db=0.0))
    assert quality.snr_db(reverberant) < clean  # the tail fills the pauses


def test_narrowband_telephone_audio_is_told_from_wideband(utterance):
    wide = quality.hf_db(utterance)
    narrow = quality.hf_db(channels.telephone(utterance))
    assert wide > quality.NB_DB > narrow
    assert quality.quality_class(quality.snr_db(utterance), narrow, 10.0).startswith("nb")


def test_estimator_on_synthetic_signals():
    rng = np.random.default_rng(0)
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    bursts = np.concatenate([tone, np.zeros(16000)] * 3) + 1e-4 * rng.normal(size=96000)
    assert quality.snr_db(bursts) > 50.0  # loud on, near-silent off
    assert quality.snr_db(rng.normal(size=32000)) < 3.0  # stationary noise: no spread
    assert quality.hf_db(tone) < -60.0 and quality.hf_db(rng.normal(size=32000)) > -4.0
    assert quality.quality_class(40.0, -20.0, 1.6) == "clean-short"
    assert quality.quality_class(40.0, -20.0, 1.6, duration=False) == "clean"


def test_bin_maps_move_each_bins_nontargets_onto_the_clean_bins():
    rng = np.random.default_rng(1)
    llr = np.concatenate([rng.normal(-6.0, 2.0, 5000), rng.normal(-9.0, 1.0, 5000), rng.normal(5.0, 1.0, 500)])
    bins = np.array(["clean|clean"] * 5000 + ["clean|noisy"] * 5000 + ["clean|noisy"] * 500)
    is_target = np.arange(len(llr)) >= 10000
    maps = quality.fit_bin_maps(llr, is_target, bins, "refit")
    assert maps["clean|clean"]["scale"] == pytest.approx(1.0) and maps["clean|clean"]["bias"] == pytest.approx(0.0)
    mapped = quality.apply_maps(llr, bins, maps)
    noisy_nontargets = mapped[(bins == "clean|noisy") & ~is_target]
    assert abs(noisy_nontargets.mean() + 6.0) < 0.1 and abs(noisy_nontargets.std() - 2.0) < 0.1
    shift = quality.fit_bin_maps(llr, is_target, bins, "shift")["clean|noisy"]
    assert shift["scale"] == 1.0
    # at the 1 % point of the reference, not the mean: -6 + 2.33 * 2 - (-9 + 2.33 * 1)
    assert shift["bias"] == pytest.approx(3.0 + 2.326 * 1.0, abs=0.15)
    # a bin without a map keeps the shipped LLR; without a reference bin there are no maps
    assert quality.apply_maps(np.array([1.0]), np.array(["nb|nb"]), maps)[0] == 1.0
    assert quality.fit_bin_maps(llr, is_target, np.array(["x"] * len(llr)), "refit") == {}


def test_method_names():
    assert quality.parse_method("quality-refit") == ("refit", True)
    assert quality.parse_method("quality-shift-nodur") == ("shift", False)
    assert quality.parse_method("quality-x") is None
