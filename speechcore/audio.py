"""Decode uploaded audio bytes to 16 kHz mono float32.

Decoding goes through soundfile (libsndfile 1.2.2 as bundled with soundfile 0.14), which
reads WAV (also WAVEX/RF64/W64), FLAC, OGG/Vorbis and MP3 (via its bundled mpg123), plus
AIFF/CAF and a few rarer containers. Everything else (AAC/M4A, Opus-in-WebM, ...) is
reported as ``invalid_audio``.

libsndfile is lenient in ways that matter for an upload endpoint, so this module adds
checks of its own:

* a truncated WAV is *not* an error for libsndfile: it shrinks the frame count to what is
  present and only notes ``data : N (should be M)`` in its log. We compare the RIFF
  ``data`` chunk's declared size with the bytes present and reject the file. The other
  uncompressed containers (RF64, W64, AIFF, ...) behave the same way; for them we reject
  when libsndfile's log shows a declared size larger than what the file holds;
* a truncated FLAC raises ("flac decoder lost sync", or a failed seek when cut on a frame
  boundary); a truncated MP3 decodes fewer frames than its header declares. Both are
  caught by comparing decoded frames with the header's frame count. MP3 headers without
  an exact length only carry an estimate, so a small shortfall is tolerated there;
* a truncated Ogg either fails to open, or opens with 0 frames (cut before the first
  audio page), or silently decodes the complete pages. Ogg declares no total length, but
  every page carries its own length and the last one the end-of-stream flag, so we walk
  the pages and reject an incomplete last page or a missing end-of-stream page;
* streams that declare no length (e.g. FLAC with total_samples = 0) cannot be read by
  soundfile (its position update seeks, which fails), so they are reported as invalid.
"""
from __future__ import annotations

import dataclasses
import io
import math
import pathlib
import re

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

TARGET_SAMPLE_RATE = 16000
#: libsndfile reports SF_COUNT_MAX frames when the header gives no length
_UNKNOWN_LENGTH = 1 << 62
#: MPEG layer III frames hold 1152 samples; headers without a Xing/LAME length are estimates
_MP3_FRAME_SAMPLES = 1152


class AudioError(ValueError):
    """An upload that cannot be turned into a waveform; maps onto an HTTP error."""

    code: str = "invalid_audio"
    http_status: int = 400

    def __init__(self, message: str, *, detail: dict | None = None):
        super().__init__(message)
        self.message = message
        self.detail = dict(detail or {})

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "detail": self.detail}


class EmptyAudioError(AudioError):
    code = "empty_audio"
    http_status = 400


class UndecodableAudioError(AudioError):
    code = "invalid_audio"
    http_status = 400


class AudioTooLongError(AudioError):
    code = "audio_too_long"
    http_status = 422


@dataclasses.dataclass
class DecodedAudio:
    #: mono float32 samples at ``target_sr`` (16 kHz unless asked otherwise)
    wav: np.ndarray
    duration_s: float
    source_sample_rate: int
    source_channels: int
    #: libsndfile's container name in lower case: "wav", "flac", "ogg", "mp3", ...
    source_format: str


def decode_audio(data: bytes, *, max_seconds: float | None = None,
                 target_sr: int = TARGET_SAMPLE_RATE) -> DecodedAudio:
    """Decode any supported container/rate/channel count to mono float32 at target_sr.

    Raises EmptyAudioError, UndecodableAudioError or AudioTooLongError (all AudioError).
    The length limit is checked on the header's frame count before decoding when the
    header has one, and again on what was actually decoded.
    """
    if not data:
        raise EmptyAudioError("the upload is empty (0 bytes)")
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise UndecodableAudioError(
            "could not decode the upload as audio (supported: WAV, FLAC, OGG/Vorbis, MP3)",
            detail={"decoder": "libsndfile", "decoder_error": _decoder_message(exc),
                    "size_bytes": len(data)}) from exc
    with handle:
        source_format = handle.format.lower()
        sample_rate, channels, declared_frames = handle.samplerate, handle.channels, handle.frames
        described = {"format": source_format, "subtype": handle.subtype,
                     "sample_rate": sample_rate, "channels": channels}
        if sample_rate <= 0 or channels <= 0:
            raise UndecodableAudioError("the audio header is invalid", detail=described)
        if declared_frames >= _UNKNOWN_LENGTH:
            raise UndecodableAudioError(
                "the audio stream declares no length (streamed encoding); re-encode it as a "
                "regular file", detail=described)
        _check_container_complete(data, handle.extra_info, described)
        if declared_frames == 0:
            raise EmptyAudioError("the audio contains no samples", detail=described)
        _check_duration(declared_frames / sample_rate, max_seconds)
        try:
            samples = handle.read(dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as exc:
            raise UndecodableAudioError(
                "the audio is truncated or corrupt", detail={
                    **described, "decoder": "libsndfile",
                    "decoder_error": _decoder_message(exc), "declared_frames": declared_frames,
                }) from exc

    decoded_frames = samples.shape[0]
    allowed_shortfall = (max(2 * _MP3_FRAME_SAMPLES, declared_frames // 100)
                         if source_format == "mp3" else 0)
    if decoded_frames < declared_frames - allowed_shortfall:
        raise UndecodableAudioError(
            "the audio is truncated: fewer samples decoded than its header declares",
            detail={**described, "declared_frames": declared_frames,
                    "decoded_frames": decoded_frames})
    if decoded_frames == 0:
        raise EmptyAudioError("the audio contains no samples", detail=described)
    if not np.isfinite(samples).all():
        raise UndecodableAudioError("the audio contains NaN or infinite samples", detail=described)
    _check_duration(decoded_frames / sample_rate, max_seconds)

    mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]
    wav = resample(mono, sample_rate, target_sr)
    return DecodedAudio(wav=wav, duration_s=len(wav) / target_sr,
                        source_sample_rate=sample_rate, source_channels=channels,
                        source_format=source_format)


def load_audio_file(path: str | pathlib.Path, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Read a file from disk as mono float32 at target_sr (training and evaluation code).

    The bytes are read by Python, so non-ASCII file names work whatever libsndfile's
    locale, and files get the same truncation checks as uploads.
    """
    try:
        return decode_audio(pathlib.Path(path).read_bytes(), target_sr=target_sr).wav
    except AudioError as exc:
        raise type(exc)(f"{path}: {exc.message}", detail=exc.detail) from exc


def resample(wav: np.ndarray, source_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the exact rational factor target_sr/source_sr."""
    wav = np.asarray(wav, dtype=np.float32)
    if source_sr == target_sr:
        return np.ascontiguousarray(wav)
    common = math.gcd(int(source_sr), int(target_sr))
    out = resample_poly(wav, target_sr // common, source_sr // common)
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_duration(duration_s: float, max_seconds: float | None) -> None:
    if max_seconds is not None and duration_s > max_seconds:
        raise AudioTooLongError(
            f"the audio lasts {duration_s:.1f} s, more than the {max_seconds:g} s allowed",
            detail={"duration_s": round(duration_s, 3), "max_s": max_seconds})


def _check_container_complete(data: bytes, decoder_log: str, described: dict) -> None:
    source_format = described["format"]
    if source_format in ("wav", "wavex"):
        _check_riff_complete(data, decoder_log, described)
    elif source_format == "ogg":
        _check_ogg_complete(data, described)
    elif source_format not in ("flac", "mp3"):  # those fail or come up short when decoded
        _check_declared_sizes(decoder_log, described)


_SIZE_IN_LOG = re.compile(r"^\s*(\S[^:\n]*?)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_declared_sizes(decoder_log: str, described: dict) -> None:
    """Reject when libsndfile logged a chunk declaring more bytes than the file holds."""
    shortfalls = [match.group(0).strip() for match in _SIZE_IN_LOG.finditer(decoder_log)
                  if int(match.group(3)) < int(match.group(2))]
    if shortfalls:
        raise UndecodableAudioError(
            "the audio file is truncated: it is shorter than its header declares",
            detail={**described, "decoder_log": shortfalls})


def _check_riff_complete(data: bytes, decoder_log: str, described: dict) -> None:
    """Reject a WAV whose ``data`` chunk is shorter than its header says.

    libsndfile silently decodes what is there, so this walks the RIFF chunks itself.
    RF64 keeps its sizes in a ds64 chunk and is left to libsndfile.
    """
    if len(data) < 12 or data[8:12] != b"WAVE" or data[:4] not in (b"RIFF", b"RIFX"):
        return
    byteorder = "little" if data[:4] == b"RIFF" else "big"
    position = 12
    while position + 8 <= len(data):
        chunk_id = data[position:position + 4]
        size = int.from_bytes(data[position + 4:position + 8], byteorder)
        body = position + 8
        if chunk_id == b"data":
            present = len(data) - body
            # 0 and 0xFFFFFFFF are what streaming writers leave when the size is unknown
            if size not in (0, 0xFFFFFFFF) and present < size:
                log_lines = [line.strip() for line in decoder_log.splitlines()
                             if "should be" in line]
                raise UndecodableAudioError(
                    "the WAV file is truncated: its data chunk is shorter than declared",
                    detail={**described, "declared_data_bytes": size,
                            "present_data_bytes": present, "decoder_log": log_lines})
            return
        position = body + size + (size & 1)  # chunks are padded to an even size


def _check_ogg_complete(data: bytes, described: dict) -> None:
    """Reject an Ogg stream whose last page is cut short or is not an end-of-stream page."""
    position, last_page_flags = 0, 0
    while position + 27 <= len(data) and data[position:position + 4] == b"OggS":
        segment_count = data[position + 26]
        header_end = position + 27 + segment_count
        page_end = header_end + sum(data[position + 27:header_end])
        if page_end > len(data):
            raise UndecodableAudioError(
                "the Ogg file is truncated: its last page is incomplete",
                detail={**described, "page_offset": position, "page_bytes": page_end - position,
                        "present_bytes": len(data) - position})
        last_page_flags = data[position + 5]
        position = page_end
    if position < len(data) and len(data) - position < 27 and b"OggS".startswith(
            data[position:position + 4]):
        raise UndecodableAudioError("the Ogg file is truncated inside a page header",
                                    detail={**described, "page_offset": position})
    if not last_page_flags & 0x04:
        raise UndecodableAudioError(
            "the Ogg file is truncated: it does not end with an end-of-stream page",
            detail={**described, "pages_end_at": position})


def _decoder_message(exc: Exception) -> str:
    # LibsndfileError carries libsndfile's own text; str() adds "Error opening <BytesIO...>"
    return getattr(exc, "error_string", None) or str(exc)
