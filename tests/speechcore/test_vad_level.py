"""speechcore.vad's front end for quiet and narrowband speech (issue #12; docs/vad.md):
level normalisation before the model, and the detector the service constructs."""
from __future__ import annotations

import numpy as np
import pytest

from speechcore.audio import load_audio_file
from speechcore.resampling import resample
from speechcore.vad import LevelNormalisation, SileroVAD
from tests.conftest import requires_shared_data

pytestmark = [pytest.mark.models_only, pytest.mark.usefixtures("single_torch_thread")]

SPEECH_FLAC = ("librispeech", "test-other", "1688", "1688-142285-0008.flac")
#: an AudioMNIST digit as recorded (-48.5 dBFS RMS)
DIGIT_WAV = ("extra-speakers", "audiomnist-01", "0_01_0.wav")


def _dbfs(x: float) -> float:
    return 20.0 * np.log10(x)


def _tone(level_dbfs: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (10.0 ** (level_dbfs / 20.0) * np.sqrt(2.0) * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def test_gain_boosts_quiet_audio_to_the_target():
    level = LevelNormalisation()
    gain = level.gain(_tone(-45.0))
    assert _dbfs(gain) == pytest.approx(level.target_dbfs + 45.0, abs=0.1)


def test_gain_never_attenuates_and_is_capped():
    level = LevelNormalisation()
    assert level.gain(_tone(-10.0)) == 1.0
    assert level.gain(_tone(level.target_dbfs + 1.0)) == 1.0
    just_over_floor = level.floor_dbfs + 1.0
    assert _dbfs(level.gain(_tone(just_over_floor))) == pytest.approx(level.max_gain_db, abs=1e-6)


def test_gain_leaves_silence_and_audio_under_the_floor_alone():
    level = LevelNormalisation()
    assert level.gain(np.zeros(16000, dtype=np.float32)) == 1.0
    assert level.gain(np.zeros(0, dtype=np.float32)) == 1.0
    assert level.gain(_tone(level.floor_dbfs - 1.0)) == 1.0


def test_gain_follows_the_loud_part_not_the_pauses():
    # one loud second in nine: the whole-file RMS is ~9.5 dB lower, the level is not
    level = LevelNormalisation()
    speech_like = np.concatenate([np.zeros(4 * 16000, np.float32), _tone(-40.0), np.zeros(4 * 16000, np.float32)])
    assert _dbfs(level.gain(speech_like)) == pytest.approx(level.target_dbfs + 40.0, abs=0.1)


def test_the_front_end_only_changes_what_the_model_scores():
    vad = SileroVAD(level=LevelNormalisation())
    quiet = _tone(-50.0)
    boosted = quiet * np.float32(vad.level.gain(quiet))
    assert np.allclose(vad.model_input_probabilities(quiet), vad.speech_probabilities(boosted))


@pytest.mark.data
def test_loud_speech_is_segmented_as_without_the_front_end():
    speech = load_audio_file(requires_shared_data(*SPEECH_FLAC))
    assert LevelNormalisation().gain(speech) == 1.0
    with_level = SileroVAD(level=LevelNormalisation()).segments(speech)
    assert with_level == SileroVAD(level=None).segments(speech)


@pytest.mark.data
def test_quiet_narrowband_digit_is_found_with_the_front_end():
    """The digit 15 dB quieter (its loud part at -57.5 dBFS, over the floor) and at 8 kHz:
    the model alone finds nothing, with the front end it finds the digit."""
    digit = load_audio_file(requires_shared_data(*DIGIT_WAV))
    quiet = resample(digit * np.float32(10.0 ** (-15.0 / 20.0)), 16000, 8000)
    _, plain = SileroVAD(level=None).speech_only(quiet, 8000)
    _, levelled = SileroVAD(level=LevelNormalisation()).speech_only(quiet, 8000)
    _, clean = SileroVAD(level=None).speech_only(digit)
    assert clean > 0.4
    assert plain == 0.0
    assert levelled > 0.8 * clean
