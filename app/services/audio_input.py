"""Turning an upload into speech samples, with every failure a clear 4xx error."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from app.errors import ApiError
from speechcore.audio import DecodedAudio, decode_audio
from speechcore.audio_errors import AudioError
from speechcore.audio_limits import AudioLimits

SAMPLE_RATE = 16000
#: decoded samples (frames × channels) allowed per second of ``max_audio_seconds``: as many
#: as 48 kHz stereo has, so the decoding work of one upload is bounded whatever its header
#: declares (600 s → 57.6 million samples: 8 channels at 48 kHz may last 150 s)
DECODE_BUDGET_SAMPLES_PER_SECOND = 48000 * 2


@dataclasses.dataclass
class PreparedAudio:
    wav: np.ndarray          # the decoded 16 kHz mono signal
    speech: np.ndarray       # speech samples only (after VAD)
    duration_s: float
    speech_s: float
    source_format: str | None
    timings_ms: dict


def upload_limits(settings) -> AudioLimits:
    """What decoding one upload may cost, from the settings (speechcore.audio explains)."""
    return AudioLimits(
        max_seconds=settings.max_audio_seconds,
        min_sample_rate=settings.min_sample_rate, max_sample_rate=settings.max_sample_rate,
        max_channels=settings.max_channels,
        max_decoded_samples=int(settings.max_audio_seconds * DECODE_BUDGET_SAMPLES_PER_SECOND))


def decode_upload(services, data: bytes) -> DecodedAudio:
    """Size and format checks, then 16 kHz mono; every failure is a 4xx ApiError."""
    settings = services.settings
    if not data:
        raise ApiError(400, "empty_audio", "The uploaded audio file is empty.", {"bytes": 0})
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, "upload_too_large", "The uploaded file is larger than the limit.",
                       {"bytes": len(data), "max_bytes": settings.max_upload_bytes})
    try:
        return decode_audio(data, limits=upload_limits(settings))
    except AudioError as exc:
        raise ApiError(exc.http_status, exc.code, exc.message, exc.detail) from exc


def prepare_audio(services, data: bytes, *, min_speech_s: float) -> PreparedAudio:
    t0 = time.perf_counter()
    decoded = decode_upload(services, data)
    t1 = time.perf_counter()
    speech, speech_s = services.vad.speech_only(decoded.wav)
    t2 = time.perf_counter()
    if speech_s < min_speech_s:
        raise ApiError(422, "not_enough_speech",
                       f"Found {speech_s:.2f} s of speech; at least {min_speech_s:.2f} s is needed.",
                       {"speech_seconds": round(speech_s, 3), "required_seconds": min_speech_s,
                        "duration_seconds": round(decoded.duration_s, 3)})
    return PreparedAudio(wav=decoded.wav, speech=speech, duration_s=decoded.duration_s, speech_s=speech_s,
                         source_format=decoded.source_format,
                         timings_ms={"decode": (t1 - t0) * 1e3, "vad": (t2 - t1) * 1e3})
