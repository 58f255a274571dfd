"""speechcore.audio (with its limits, errors, container checks and resampling): decoding
uploads to 16 kHz mono, and rejecting what is not audio."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

import speechcore.audio as speechcore_audio
from speechcore import audio_containers
from speechcore.audio import DecodedAudio, decode_audio, load_audio_file
from speechcore.audio_errors import (AudioError, AudioTooLargeError, AudioTooLongError, EmptyAudioError,
                                     SampleRateOutOfRangeError, TooManyChannelsError, UndecodableAudioError)
from speechcore.audio_limits import AudioLimits
from speechcore.resampling import StreamingResampler, polyphase_factors
from tests.conftest import requires_shared_data

pytestmark = pytest.mark.models_only

SPEECH_FLAC = ("librispeech", "test-other", "1998", "1998-15444-0000.flac")


def encode(samples: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def stereo_tones(sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """440 Hz on the left, 1000 Hz on the right, both at 0.4 amplitude."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.4 * np.sin(2 * np.pi * 1000 * t)],
                    axis=1).astype(np.float32)


def tone_amplitude(wav: np.ndarray, sample_rate: int, frequency: float) -> float:
    """Amplitude of a sinusoid at `frequency` (Hann-windowed DFT, 1 Hz resolution)."""
    segment = wav[:sample_rate]
    window = np.hanning(len(segment))
    spectrum = np.abs(np.fft.rfft(segment * window)) * 2 / window.sum()
    bin_index = int(round(frequency * len(segment) / sample_rate))
    return float(spectrum[bin_index - 2:bin_index + 3].max())


@pytest.fixture(scope="module")
def speech_flac_bytes() -> bytes:
    return requires_shared_data(*SPEECH_FLAC).read_bytes()


@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_stereo_tones_become_16k_mono_with_both_frequencies(fmt, sample_rate):
    tones = stereo_tones(sample_rate, seconds=1.5)
    decoded = decode_audio(encode(tones, sample_rate, fmt))

    assert isinstance(decoded, DecodedAudio)
    assert decoded.wav.dtype == np.float32 and decoded.wav.ndim == 1
    assert abs(len(decoded.wav) - len(tones) * 16000 / sample_rate) <= 1
    assert decoded.duration_s == pytest.approx(1.5, abs=1e-3)
    assert (decoded.source_sample_rate, decoded.source_channels) == (sample_rate, 2)
    assert decoded.source_format == fmt.lower()
    # a mean downmix halves each channel's tone; resampling must not move or lose it
    for frequency in (440, 1000):
        assert tone_amplitude(decoded.wav, 16000, frequency) == pytest.approx(0.2, abs=0.02)
    assert tone_amplitude(decoded.wav, 16000, 700) < 0.01


def test_downmix_is_the_channel_mean():
    rng = np.random.default_rng(0)
    channels = (0.3 * rng.standard_normal((16000, 3))).astype(np.float32)
    decoded = decode_audio(encode(channels, 16000, "WAV", "FLOAT"))
    np.testing.assert_allclose(decoded.wav, channels.mean(axis=1), atol=1e-6)
    assert decoded.source_channels == 3


def test_mp3_is_supported_by_the_bundled_libsndfile():
    tones = stereo_tones(44100, seconds=1.5)
    decoded = decode_audio(encode(tones, 44100, "MP3"))
    assert decoded.source_format == "mp3"
    assert tone_amplitude(decoded.wav, 16000, 440) == pytest.approx(0.2, abs=0.03)


@pytest.mark.data
def test_real_mp3_upload():
    path = requires_shared_data("extra-speakers", "commonvoice-en_651325", "common_voice_en_651325.mp3")
    decoded = decode_audio(path.read_bytes())
    assert (decoded.source_format, decoded.source_sample_rate) == ("mp3", 48000)
    assert decoded.duration_s == pytest.approx(2.376, abs=0.05)
    assert np.abs(decoded.wav).max() > 0.05


@pytest.mark.data
@pytest.mark.parametrize("sample_rate,fmt", [(48000, "WAV"), (44100, "FLAC"), (22050, "OGG")])
def test_real_speech_survives_a_round_trip_through_another_rate(speech_flac_bytes, sample_rate, fmt):
    original = decode_audio(speech_flac_bytes).wav
    upsampled = resample_poly(original, sample_rate, 16000).astype(np.float32)
    upload = encode(np.stack([upsampled, upsampled], axis=1), sample_rate, fmt)

    decoded = decode_audio(upload).wav
    assert abs(len(decoded) - len(original)) <= 1
    n = min(len(decoded), len(original))
    correlation = np.corrcoef(decoded[:n], original[:n])[0, 1]
    assert correlation > (0.95 if fmt == "OGG" else 0.999)


@pytest.mark.data
def test_load_audio_file_reads_a_non_ascii_name():
    path = requires_shared_data("conversations", "pyannote-clips", "trñ00.flac")
    wav = load_audio_file(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == pytest.approx(30 * 16000, abs=16000)


def test_empty_bytes():
    with pytest.raises(EmptyAudioError) as caught:
        decode_audio(b"")
    assert (caught.value.code, caught.value.http_status) == ("empty_audio", 400)
    assert isinstance(caught.value, (AudioError, ValueError))


def test_zero_frame_wav_is_empty():
    upload = encode(np.zeros((0, 1), dtype=np.float32), 16000, "WAV")
    assert len(upload) == 44  # a valid header and nothing else
    with pytest.raises(EmptyAudioError):
        decode_audio(upload)


@pytest.mark.parametrize("payload", [np.random.default_rng(7).bytes(20000),
                                     b"<html><body>not audio</body></html>" * 50])
def test_non_audio_bytes(payload):
    with pytest.raises(UndecodableAudioError) as caught:
        decode_audio(payload)
    error = caught.value
    assert (error.code, error.http_status) == ("invalid_audio", 400)
    assert "Format not recognised" in error.detail["decoder_error"]
    assert error.to_dict()["code"] == "invalid_audio"


@pytest.mark.data
@pytest.mark.parametrize("kept", [0.3, 0.9, 0.995])
def test_truncated_flac(speech_flac_bytes, kept):
    with pytest.raises(UndecodableAudioError) as caught:
        decode_audio(speech_flac_bytes[:int(len(speech_flac_bytes) * kept)])
    assert caught.value.detail["decoder_error"]  # libsndfile's own words, e.g. "lost sync"
    assert caught.value.detail["format"] == "flac"


@pytest.mark.parametrize("kept", [0.5, 0.999])
def test_truncated_wav_is_rejected_although_libsndfile_accepts_it(kept):
    upload = encode(stereo_tones(16000), 16000, "WAV")
    with pytest.raises(UndecodableAudioError) as caught:
        decode_audio(upload[:int(len(upload) * kept)])
    detail = caught.value.detail
    assert detail["present_data_bytes"] < detail["declared_data_bytes"] == 64000
    assert any("should be" in line for line in detail["decoder_log"])


@pytest.mark.parametrize("fmt", ["WAVEX", "RF64", "W64", "AIFF", "AU"])
def test_truncated_uncompressed_containers(fmt):
    upload = encode(stereo_tones(16000), 16000, fmt)
    assert decode_audio(upload).source_format == fmt.lower()
    with pytest.raises(UndecodableAudioError, match="truncated"):
        decode_audio(upload[:len(upload) // 2])


@pytest.mark.parametrize("fmt", ["OGG", "MP3"])
@pytest.mark.parametrize("kept", [0.2, 0.5, 0.8])
def test_truncated_lossy_files(fmt, kept):
    upload = encode(stereo_tones(44100, seconds=3.0), 44100, fmt)
    with pytest.raises(UndecodableAudioError):
        decode_audio(upload[:int(len(upload) * kept)])


def test_nan_samples_are_rejected():
    samples = stereo_tones(16000)
    samples[100, 0] = np.nan
    with pytest.raises(UndecodableAudioError, match="NaN"):
        decode_audio(encode(samples, 16000, "WAV", "FLOAT"))


def test_too_long():
    upload = encode(stereo_tones(22050, seconds=2.0), 22050, "FLAC")
    with pytest.raises(AudioTooLongError) as caught:
        decode_audio(upload, max_seconds=1.5)
    error = caught.value
    assert (error.code, error.http_status) == ("audio_too_long", 422)
    assert error.detail == {"duration_s": 2.0, "max_s": 1.5}
    assert decode_audio(upload, max_seconds=2.0).duration_s == pytest.approx(2.0)


def test_too_long_is_decided_from_the_header_before_decoding():
    # the body is cut (decoding would fail), so only the header can have said "too long"
    upload = encode(stereo_tones(16000, seconds=4.0), 16000, "FLAC")
    with pytest.raises(AudioTooLongError):
        decode_audio(upload[:len(upload) // 3], max_seconds=2.0)


def test_load_audio_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(UndecodableAudioError, match="broken.wav"):
        load_audio_file(bad)
    good = tmp_path / "tone.flac"
    good.write_bytes(encode(stereo_tones(48000), 48000, "FLAC"))
    assert load_audio_file(good, target_sr=8000).shape == (8000,)


# -- bounded cost (issue #10): limits from the header, decoding in blocks ------------------
def todays_decode(data: bytes) -> np.ndarray:
    """What decode_audio computed before it decoded in blocks: the whole signal read at
    once, averaged over channels and resampled by resample_poly in one call."""
    with sf.SoundFile(io.BytesIO(data)) as handle:
        samples, rate = handle.read(dtype="float32", always_2d=True), handle.samplerate
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    common = math.gcd(rate, 16000)
    return resample_poly(mono, 16000 // common, rate // common).astype(np.float32)


def encode_in_blocks(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    # one large write to OGG crashes libsndfile 1.2.2 (segfault), so write a second at a time
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", samplerate=sample_rate, channels=samples.shape[1], format=fmt) as out:
        for start in range(0, len(samples), sample_rate):
            out.write(samples[start:start + sample_rate])
    return buffer.getvalue()


@pytest.mark.parametrize("source_sr", [4000, 8000, 11025, 22050, 44100, 48000, 96000, 192000, 44056])
def test_streaming_resampler_equals_resample_poly_on_the_whole_signal(source_sr):
    rng = np.random.default_rng(source_sr)
    signal = (0.3 * rng.standard_normal(3 * source_sr + 17)).astype(np.float32)
    common = math.gcd(source_sr, 16000)
    expected = resample_poly(signal, 16000 // common, source_sr // common).astype(np.float32)

    resampler = StreamingResampler(source_sr, 16000)
    cuts = np.sort(rng.choice(np.arange(1, len(signal)), size=40, replace=False))
    for block in np.split(signal, cuts):  # blocks of every size, down to a single sample
        resampler.feed(block)
    np.testing.assert_array_equal(resampler.finish(), expected)


def test_awkward_rates_get_a_bounded_filter_and_common_rates_an_exact_one():
    for rate in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 37800, 44056, 44100, 48000,
                 88200, 96000, 176400, 192000):
        up, down = polyphase_factors(rate, 16000)
        assert up * rate == down * 16000, rate
    for rate in (191_999, 48_001, 5_333, 2**31 - 1):
        up, down = polyphase_factors(rate, 16000)
        assert max(up, down) <= 8192
        if rate < 2**31 - 1:
            assert up / down == pytest.approx(16000 / rate, rel=1e-4)
    assert polyphase_factors(2**31 - 1, 16000) == (1, 8192)


@pytest.mark.data
@pytest.mark.parametrize("source", [
    ("extra-speakers", "vctk-p230", "p230_023.wav"),             # real 48 kHz WAV
    ("extra-speakers", "vctk-p240", "p240_00000.mp3"),           # real 24 kHz MP3
    ("extra-speakers", "commonvoice-en_651325", "common_voice_en_651325.mp3"),  # 48 kHz MP3
])
def test_real_files_decode_to_todays_samples_in_small_blocks(source, monkeypatch):
    data = requires_shared_data(*source).read_bytes()
    monkeypatch.setattr(speechcore_audio, "_BLOCK_SAMPLES", 4099)  # many block boundaries
    np.testing.assert_allclose(decode_audio(data).wav, todays_decode(data), rtol=1e-6, atol=1e-7)


@pytest.mark.data
@pytest.mark.parametrize("fmt", ["FLAC", "MP3", "OGG"])
@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_real_speech_at_44k1_and_48k_decodes_to_todays_samples(fmt, sample_rate, monkeypatch):
    speech = load_audio_file(requires_shared_data("extra-speakers", "vctk-p233", "p233_023.wav"))
    speech = resample_poly(speech, sample_rate, 16000).astype(np.float32)
    stereo = np.stack([speech, np.roll(speech, 101)], axis=1)  # two different channels
    data = encode_in_blocks(stereo, sample_rate, fmt)
    monkeypatch.setattr(speechcore_audio, "_BLOCK_SAMPLES", 5000)
    np.testing.assert_allclose(decode_audio(data).wav, todays_decode(data), rtol=1e-6, atol=1e-7)


UPLOAD_LIMITS = AudioLimits(max_seconds=600, min_sample_rate=4000, max_sample_rate=192000,
                            max_channels=8, max_decoded_samples=600 * 96000)


@pytest.mark.parametrize("sample_rate", [3999, 192001])
def test_sample_rates_outside_the_range_are_refused(sample_rate):
    upload = encode(np.zeros((100, 1), np.float32), sample_rate, "WAV")
    with pytest.raises(SampleRateOutOfRangeError) as caught:
        decode_audio(upload, limits=UPLOAD_LIMITS)
    error = caught.value
    assert (error.code, error.http_status) == ("unsupported_sample_rate", 422)
    assert error.detail["sample_rate"] == sample_rate
    assert (error.detail["min_sample_rate"], error.detail["max_sample_rate"]) == (4000, 192000)
    assert decode_audio(upload).source_sample_rate == sample_rate  # no limits, no refusal


def test_too_many_channels_are_refused_before_decoding():
    upload = encode(np.zeros((1600, 9), np.float32), 16000, "WAV")
    with pytest.raises(TooManyChannelsError) as caught:
        decode_audio(upload[:len(upload) // 2], limits=UPLOAD_LIMITS)  # cut: refused on the header alone
    assert (caught.value.code, caught.value.http_status) == ("too_many_channels", 422)
    assert caught.value.detail["max_channels"] == 8


def test_the_decoding_work_is_bounded_from_the_header():
    upload = encode(np.zeros((48000 * 2, 4), np.float32), 48000, "FLAC")  # 384,000 samples
    limits = AudioLimits(max_decoded_samples=300_000)
    with pytest.raises(AudioTooLargeError) as caught:
        decode_audio(upload[:len(upload) // 2], limits=limits)
    error = caught.value
    assert (error.code, error.http_status) == ("audio_too_large", 413)
    assert error.detail["samples"] == 384_000 and error.detail["max_samples"] == 300_000
    assert "at most 300,000 samples" in error.message
    assert decode_audio(upload, limits=AudioLimits(max_decoded_samples=384_000)).duration_s == 2.0


def test_running_out_of_memory_is_a_413_not_a_crash(monkeypatch):
    def no_memory(self, samples):
        raise MemoryError()

    monkeypatch.setattr(StreamingResampler, "feed", no_memory)
    with pytest.raises(AudioTooLargeError) as caught:
        decode_audio(encode(stereo_tones(44100), 44100, "WAV"))
    assert caught.value.http_status == 413
    assert caught.value.detail["sample_rate"] == 44100


def test_quoted_decoder_logs_are_bounded():
    log = "\n".join(f"chunk{i} {'x' * 500} : 900 (should be 100)" for i in range(1000))
    with pytest.raises(UndecodableAudioError) as caught:
        audio_containers._check_declared_sizes(log, {"format": "aiff"})
    quoted = caught.value.detail["decoder_log"]
    assert len(quoted) == 6 and quoted[-1] == "... 995 more lines"
    assert all(len(line) <= 203 for line in quoted)
