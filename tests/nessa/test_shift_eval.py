"""The domain-shift evaluation (`nessa eval-shift`): its channels do what they claim on real
speech, and its protocol builds the trials it says (no models run here)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from nessa.lab.evaluation import shift_channels as channels
from nessa.lab.evaluation import shift_protocol as protocol
from tests.conftest import requires_shared_data


def _speech(*parts: str) -> np.ndarray:
    from nessa.lab.data import default_audio_loader

    return np.asarray(default_audio_loader()(str(requires_shared_data(*parts))), dtype=np.float64)


def _band_fraction(wav: np.ndarray, low: float, high: float = 8000.0) -> float:
    spectrum = np.abs(np.fft.rfft(wav)) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1.0 / channels.SAMPLE_RATE)
    return float(spectrum[(freqs > low) & (freqs <= high)].sum() / spectrum.sum())


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return _speech("librispeech", "test-other", "1688", "1688-142285-0000.flac")


def test_mulaw_is_g711():
    codes = np.arange(256, dtype=np.uint8)
    levels = channels.mulaw_decode(codes)
    # every code but negative zero (0x7f) round-trips; the levels are G.711's
    assert np.array_equal(channels.mulaw_encode(levels)[codes != 0x7F], codes[codes != 0x7F])
    assert levels.max() == 32124 and levels.min() == -32124 and len(set(levels.tolist())) == 255
    ramp = np.linspace(-1, 1, 20001)
    error = np.abs(channels.mulaw_decode(channels.mulaw_encode(ramp)) / 32768.0 - ramp)
    assert error[np.abs(ramp) < 0.01].max() < 6e-4  # fine steps near zero (16 / 32768 at most)
    assert error.max() < 0.04  # coarse ones near full scale


def test_telephone_is_narrowband_and_mulaw_quantised(utterance):
    narrow = channels.telephone_narrowband(utterance)
    levels = set(channels.mulaw_decode(np.arange(256, dtype=np.uint8)).tolist())
    assert set(np.round(narrow * 32768.0).astype(int).tolist()) <= levels
    wide = channels.telephone(utterance)
    assert len(wide) == len(utterance)
    assert _band_fraction(utterance, 3400.0) > 0.01  # the source has high-band energy ...
    assert _band_fraction(wide, 4000.0) < 1e-4  # ... the channel has none above its Nyquist
    assert _band_fraction(wide, 3600.0) < 1e-3  # and almost none above the pass band
    assert _band_fraction(wide, 0.0, 200.0) < 1e-2


@pytest.mark.parametrize("snr_db", [10.0, 5.0])
def test_babble_snr(utterance, snr_db):
    talkers = [_speech("librispeech", "train-clean-100", name) for name in
               ("103-1240-0000.flac", "1034-121119-0000.flac", "1040-133433-0000.flac", "1069-133699-0000.flac")]
    mixed = channels.add_babble(utterance, talkers, snr_db, seed=3).astype(np.float64)
    noise = mixed - utterance
    measured = 10.0 * np.log10(channels.power(utterance) / channels.power(noise))
    assert abs(measured - snr_db) < 0.5
    again = channels.add_babble(utterance, talkers, snr_db, seed=3)
    assert np.array_equal(again, mixed.astype(np.float32))  # seeded


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reverb_rt60(utterance, seed):
    rir = channels.synthetic_rir(0.5, seed)
    assert abs(channels.estimate_rt60(rir) - 0.5) < 0.05
    tail = np.sum(rir[1:] ** 2)
    assert abs(10 * np.log10(rir[0] ** 2 / tail)) < 0.01  # DRR 0 dB
    wet = channels.reverberate(utterance, rir)
    assert abs(channels.power(wet) / channels.power(utterance) - 1) < 1e-3
    assert np.corrcoef(wet, utterance)[0, 1] < 0.95  # it did smear the speech


def _word(path: str) -> str:
    return pathlib.Path(path).name.split("_")[0]


def test_same_words_impostors_say_the_profile_words():
    shared = requires_shared_data("speech-commands").parent
    other, same = protocol.speech_commands_conditions(shared, seed=0)
    assert other.name == "speech-commands" and same.name == "same-words"
    impostors = same.trials[~same.is_target]
    assert len(impostors) > 500 and same.is_target.sum() == other.is_target.sum()
    for t, p in impostors:
        speaker, (profile,) = same.profiles[p]
        impostor, test = same.tests[t]
        assert impostor != speaker
        assert [_word(x) for x in test.sources] == [_word(x) for x in profile.sources]
        assert all(f"_{impostor}_" in x for x in test.sources)
    for t, p in same.trials[same.is_target]:  # genuine: other words of the same speaker
        (profile,), test = same.profiles[p][1], same.tests[t][1]
        assert not {_word(x) for x in profile.sources} & {_word(x) for x in test.sources}
        assert len(test.sources) == 3
    for condition in (other, same):  # no trial crosses the dev / test halves
        halves = protocol.split_halves(list(protocol.speech_commands_clips(shared / "speech-commands")),
                                       "speech-commands")
        for (t, p), half in zip(condition.trials, condition.half):
            assert halves[condition.tests[t][0]] == halves[condition.profiles[p][0]] == half


def test_halves_are_deterministic_and_balanced():
    shared = requires_shared_data("librispeech", "test-other").parent.parent
    first = protocol.test_other_conditions(shared, seed=0)
    again = protocol.test_other_conditions(shared, seed=0)
    for a, b in zip(first, again):
        assert np.array_equal(a.trials, b.trials) and a.tests == b.tests and a.profiles == b.profiles
    clean = first[0]
    assert sorted(np.unique(clean.half, return_counts=True)[1].tolist()) == [875, 875]
    extra = protocol.extra_speakers_condition(shared)
    assert {half for half in extra.half} == {"dev", "test"} and extra.is_target.any()
