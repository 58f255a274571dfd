"""Decode uploaded audio bytes to 16 kHz mono float32, at a cost bounded by the caller's limits.

Decoding goes through soundfile (libsndfile 1.2.2 as bundled with soundfile 0.14), which
reads WAV (also WAVEX/RF64/W64), FLAC, OGG/Vorbis and MP3 (via its bundled mpg123), plus
AIFF/CAF and a few rarer containers. Everything else (AAC/M4A, Opus-in-WebM, ...) is
reported as ``invalid_audio``.

**Bounded cost.** A few kilobytes can declare an absurd sample rate, channel count or
length, and decoding cost follows the header, not the upload's size. So the caller passes
``AudioLimits`` (``speechcore.audio_limits``; the service builds them from its settings)
and they are enforced in order:

* from the header, before any sample is decoded: the sample rate must lie in
  ``[min_sample_rate, max_sample_rate]`` (422 ``unsupported_sample_rate``; the service uses
  4-192 kHz), the channel count must not exceed ``max_channels`` (422 ``too_many_channels``;
  8), the declared duration must not exceed ``max_seconds`` (422 ``audio_too_long``), and
  the declared frames × channels -- the decoding work -- must not exceed
  ``max_decoded_samples`` (413 ``audio_too_large``; the service allows ``max_audio_seconds``
  × 96,000, i.e. as many samples as ``max_audio_seconds`` of 48 kHz stereo: 57.6 million
  for 600 s, so 8 channels at 48 kHz may last 150 s and mono at 192 kHz 300 s);
* while decoding, on what was actually decoded, so a header that understates its length
  cannot get past them: decoding stops as soon as either limit is exceeded;
* ``MemoryError`` anywhere in decoding becomes 413 ``audio_too_large``, never a crash.

Decoding reads blocks of about a megabyte, downmixes each block and feeds it to a streaming
polyphase resampler (``speechcore.resampling``), so peak memory is about twice the 16 kHz
mono result plus a block, whatever the source rate and channel count.

**Truncated files.** libsndfile decodes what is there of a truncated WAV or Ogg without
complaint; ``speechcore.audio_containers`` checks those containers from their bytes. A
truncated FLAC raises ("flac decoder lost sync", or a failed seek when cut on a frame
boundary) and a truncated MP3 decodes fewer frames than its header declares: both are caught
here by comparing decoded frames with the header's frame count (MP3 headers without an exact
length only carry an estimate, so a small shortfall is tolerated there). Streams that
declare no length (e.g. FLAC with total_samples = 0) cannot be read by soundfile (its
position update seeks, which fails), so they are reported as invalid.

Error details quote libsndfile's messages and log lines, truncated, so a crafted file
cannot make an error response arbitrarily large.
"""
from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np
import soundfile as sf

from speechcore.audio_containers import check_container_complete
from speechcore.audio_errors import (AudioError, AudioTooLargeError, EmptyAudioError, UndecodableAudioError,
                                     decoder_message)
from speechcore.audio_limits import (AudioHeader, AudioLimits, check_channels, check_decoding_work,
                                     check_duration, check_sample_rate)
from speechcore.resampling import StreamingResampler

TARGET_SAMPLE_RATE = 16000
#: libsndfile reports SF_COUNT_MAX frames when the header gives no length
_UNKNOWN_LENGTH = 1 << 62
#: MPEG layer III frames hold 1152 samples; headers without a Xing/LAME length are estimates
_MP3_FRAME_SAMPLES = 1152
#: samples (frames × channels) decoded per block: 1 MB of float32
_BLOCK_SAMPLES = 1 << 18


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
                 target_sr: int = TARGET_SAMPLE_RATE,
                 limits: AudioLimits | None = None) -> DecodedAudio:
    """Decode any supported container/rate/channel count to mono float32 at target_sr.

    Raises an AudioError subclass for anything it will not decode (see the module doc).
    ``max_seconds`` is a shorthand that overrides ``limits.max_seconds``.
    """
    limits = limits or AudioLimits()
    if max_seconds is not None:
        limits = dataclasses.replace(limits, max_seconds=max_seconds)
    if not data:
        raise EmptyAudioError("the upload is empty (0 bytes)")
    header = wav = None
    try:
        with _open(data) as handle:
            header = _read_header(handle, data, limits)
            wav, decoded_frames = _decode_blocks(handle, header, limits, target_sr)
    except MemoryError:
        pass  # answered below: raising here would chain the traceback, and with it every array
    if wav is None:
        raise AudioTooLargeError(
            "the audio is too large to decode with the memory available",
            detail={**(header.described() if header else {}), "size_bytes": len(data)})
    _check_decoded(header, decoded_frames)
    return DecodedAudio(wav=wav, duration_s=len(wav) / target_sr,
                        source_sample_rate=header.sample_rate, source_channels=header.channels,
                        source_format=header.format)


def load_audio_file(path: str | pathlib.Path, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Read a file from disk as mono float32 at target_sr (training and evaluation code).

    The bytes are read by Python, so non-ASCII file names work whatever libsndfile's
    locale, and files get the same truncation checks as uploads.
    """
    try:
        return decode_audio(pathlib.Path(path).read_bytes(), target_sr=target_sr).wav
    except AudioError as exc:
        raise type(exc)(f"{path}: {exc.message}", detail=exc.detail) from exc


def _open(data: bytes) -> sf.SoundFile:
    try:
        return sf.SoundFile(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise UndecodableAudioError(
            "could not decode the upload as audio (supported: WAV, FLAC, OGG/Vorbis, MP3)",
            detail={"decoder": "libsndfile", "decoder_error": decoder_message(exc),
                    "size_bytes": len(data)}) from exc


def _read_header(handle: sf.SoundFile, data: bytes, limits: AudioLimits) -> AudioHeader:
    """Everything that can be refused before decoding, cheapest checks first."""
    header = AudioHeader(format=handle.format.lower(), subtype=handle.subtype,
                         sample_rate=handle.samplerate, channels=handle.channels,
                         declared_frames=handle.frames)
    if header.sample_rate <= 0 or header.channels <= 0:
        raise UndecodableAudioError("the audio header is invalid", detail=header.described())
    check_sample_rate(header, limits)
    check_channels(header, limits)
    if header.declared_frames >= _UNKNOWN_LENGTH:
        raise UndecodableAudioError(
            "the audio stream declares no length (streamed encoding); re-encode it as a "
            "regular file", detail=header.described())
    check_container_complete(data, handle.extra_info, header.described())
    if header.declared_frames == 0:
        raise EmptyAudioError("the audio contains no samples", detail=header.described())
    check_duration(header.declared_frames / header.sample_rate, limits.max_seconds)
    check_decoding_work(header, header.declared_frames, limits)
    return header


def _decode_blocks(handle: sf.SoundFile, header: AudioHeader, limits: AudioLimits,
                   target_sr: int) -> tuple[np.ndarray, int]:
    """Read, check, downmix and resample block by block; (16 kHz mono, frames decoded).

    The limits are checked again on the frames actually decoded, so decoding stops as soon
    as a file turns out longer than its header said.
    """
    resampler = StreamingResampler(header.sample_rate, target_sr)
    buffer = np.empty((max(1, _BLOCK_SAMPLES // header.channels), header.channels), np.float32)
    decoded_frames = 0
    while len(block := _read_block(handle, header, buffer)):
        decoded_frames += len(block)
        check_duration(decoded_frames / header.sample_rate, limits.max_seconds)
        check_decoding_work(header, decoded_frames, limits)
        if not np.isfinite(block).all():
            raise UndecodableAudioError("the audio contains NaN or infinite samples",
                                        detail=header.described())
        # row means, as a whole-signal mean(axis=1) computes them; feed() copies the block
        resampler.feed(block.mean(axis=1, dtype=np.float32) if header.channels > 1 else block[:, 0])
    return resampler.finish(), decoded_frames


def _read_block(handle: sf.SoundFile, header: AudioHeader, buffer: np.ndarray) -> np.ndarray:
    """Decode up to len(buffer) frames into buffer; the filled part (empty at the end).

    Calls libsndfile's sf_readf_float directly: SoundFile.read seeks to its own position
    after every read, and for MP3 that seek restarts mpg123 at a frame boundary, which
    changes the samples around every block boundary (by up to 0.15 on real files with
    bit-reservoir errors). libsndfile itself stops at the header's frame count.
    """
    try:
        frames = sf._snd.sf_readf_float(handle._file, sf._ffi.cast("float *", buffer.ctypes.data),
                                        len(buffer))
        error = sf._snd.sf_error(handle._file)
        if error:
            raise sf.LibsndfileError(error)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise UndecodableAudioError(
            "the audio is truncated or corrupt", detail={
                **header.described(), "decoder": "libsndfile",
                "decoder_error": decoder_message(exc), "declared_frames": header.declared_frames,
            }) from exc
    return buffer[:frames]


def _check_decoded(header: AudioHeader, decoded_frames: int) -> None:
    declared_frames = header.declared_frames
    allowed_shortfall = (max(2 * _MP3_FRAME_SAMPLES, declared_frames // 100)
                         if header.format == "mp3" else 0)
    if decoded_frames < declared_frames - allowed_shortfall:
        raise UndecodableAudioError(
            "the audio is truncated: fewer samples decoded than its header declares",
            detail={**header.described(), "declared_frames": declared_frames,
                    "decoded_frames": decoded_frames})
    if decoded_frames == 0:
        raise EmptyAudioError("the audio contains no samples", detail=header.described())
