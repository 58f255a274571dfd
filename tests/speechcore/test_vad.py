"""speechcore.vad: Silero VAD from the installed package's TorchScript file."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from speechcore.audio import load_audio_file
from speechcore.resampling import resample
from speechcore.vad import SPEECH_THRESHOLD, SileroVAD
from tests.conftest import REPO_ROOT, requires_shared_data

pytestmark = [pytest.mark.models_only, pytest.mark.usefixtures("single_torch_thread")]

SPEECH_FLAC = ("librispeech", "test-other", "1688", "1688-142285-0008.flac")



@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio_file(requires_shared_data(*SPEECH_FLAC))


def test_digital_silence_has_no_speech(vad):
    silence = np.zeros(3 * 16000, dtype=np.float32)
    assert vad.segments(silence) == []
    samples, seconds = vad.speech_only(silence)
    assert samples.size == 0 and seconds == 0.0


@pytest.mark.parametrize("amplitude", [0.001, 0.01])
def test_low_noise_has_no_speech(vad, amplitude):
    noise = (amplitude * np.random.default_rng(3).standard_normal(3 * 16000)).astype(np.float32)
    assert vad.segments(noise) == []


def test_inputs_shorter_than_one_window(vad):
    assert vad.segments(np.zeros(100, dtype=np.float32)) == []
    assert vad.segments(np.zeros(0, dtype=np.float32)) == []


@pytest.mark.data
def test_finds_speech_in_librispeech(vad, speech):
    duration = len(speech) / 16000
    segments = vad.segments(speech)
    assert segments
    assert all(0.0 <= start < end <= duration for start, end in segments)
    assert all(a[1] <= b[0] for a, b in zip(segments, segments[1:]))

    samples, seconds = vad.speech_only(speech)
    assert seconds == pytest.approx(sum(end - start for start, end in segments), abs=0.01)
    assert len(samples) == pytest.approx(seconds * 16000, abs=1)
    assert 0.5 * duration < seconds <= duration


@pytest.mark.data
def test_locates_speech_between_silences(vad, speech):
    gap = np.zeros(2 * 16000, dtype=np.float32)
    padded = np.concatenate([gap, speech, gap])
    segments = vad.segments(padded)
    assert segments[0][0] >= 1.9
    assert segments[-1][1] <= len(padded) / 16000 - 1.9
    _, seconds = vad.speech_only(padded)
    assert seconds == pytest.approx(vad.speech_only(speech)[1], abs=0.1)


@pytest.mark.data
@pytest.mark.parametrize("threshold", [0.5, SPEECH_THRESHOLD])
def test_same_segments_as_silero_reference(speech, threshold):
    from silero_vad import load_silero_vad
    from silero_vad.utils_vad import get_speech_timestamps

    # the service's detector at this level is silero's own (its TorchScript model and loop; we
    # run the ONNX sequence model): the level front end leaves LibriSpeech as it is
    # (tests/speechcore/test_vad_level.py), only the threshold differs
    reference = get_speech_timestamps(torch.from_numpy(speech), load_silero_vad(), threshold=threshold,
                                      return_seconds=True, time_resolution=3)
    ours = [(round(start, 3), round(end, 3)) for start, end in SileroVAD(threshold=threshold).segments(speech)]
    assert ours == [(stamp["start"], stamp["end"]) for stamp in reference]


@pytest.mark.data
def test_probabilities_match_silero_torchscript_on_narrowband_and_quiet_speech(vad, speech):
    """The ONNX sequence model scores every window in one call; silero's TorchScript model
    loops over them with its state: same probabilities (float32 rounding apart)."""
    from silero_vad import load_silero_vad

    from nessa.lab.evaluation.shift_channels import telephone

    model = load_silero_vad()
    for audio in (speech, telephone(speech), 0.003 * speech, speech[:700]):
        with torch.inference_mode():
            model.reset_states()
            reference = model.audio_forward(torch.from_numpy(np.ascontiguousarray(audio)), 16000)[0].numpy()
        ours = vad.speech_probabilities(audio)
        assert ours.shape == reference.shape
        assert np.abs(ours - reference).max() < 1e-3


@pytest.mark.data
def test_other_sample_rates_are_resampled(vad, speech):
    at_16k = vad.segments(speech)
    at_8k = vad.segments(resample(speech, 16000, 8000), sample_rate=8000)
    assert len(at_8k) == len(at_16k)
    assert np.allclose(np.array(at_8k), np.array(at_16k), atol=0.1)
    samples, seconds = vad.speech_only(resample(speech, 16000, 8000), sample_rate=8000)
    assert len(samples) == pytest.approx(seconds * 8000, abs=1)


def test_loading_keeps_the_torch_thread_count():
    # importing silero_vad sets torch to one thread; the wrapper must restore the caller's
    code = ("import torch; torch.set_num_threads(2); from speechcore.vad import SileroVAD; "
            "SileroVAD(); print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120, check=True)
    assert result.stdout.strip() == "2"
