"""Decode uploaded audio bytes to 16 kHz mono float32, at a cost bounded by the caller's limits.

Decoding goes through soundfile (libsndfile 1.2.2 as bundled with soundfile 0.14), which
reads WAV (also WAVEX/RF64/W64), FLAC, OGG/Vorbis and MP3 (via its bundled mpg123), plus
AIFF/CAF and a few rarer containers. Everything else (AAC/M4A, Opus-in-WebM, ...) is
reported as ``invalid_audio``.

**Bounded cost.** A few kilobytes can declare an absurd sample rate, channel count or
length, and decoding cost follows the header, not the upload's size. So the caller passes
``AudioLimits`` (the service builds them from its settings) and they are enforced in order:

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
polyphase resampler, so peak memory is about twice the 16 kHz mono result plus a block,
whatever the source rate and channel count. The streamed result equals ``scipy.signal.
resample_poly`` applied to the whole signal (same filter; each output sample is computed
from a buffer holding its entire filter window). The filter has 20 × max(up, down) + 1 taps
for the reduced ratio up/down = 16000/rate; a rate coprime with 16,000 (e.g. 191,999 Hz)
would need millions of taps, so ratios whose factors exceed 8,192 are replaced by the
nearest ratio within that bound (at most 63 ppm off for rates in 4-192 kHz). Every common
rate (8, 11.025, 12, 16, 22.05, 24, 32, 37.8, 44.056, 44.1, 48, 88.2, 96, 176.4, 192 kHz)
is resampled exactly.

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

Error details quote libsndfile's messages and log lines, truncated, so a crafted file
cannot make an error response arbitrarily large.
"""
from __future__ import annotations

import dataclasses
import io
import math
import pathlib
import re
from fractions import Fraction

import numpy as np
import soundfile as sf
from scipy.signal import firwin, resample_poly

TARGET_SAMPLE_RATE = 16000
#: libsndfile reports SF_COUNT_MAX frames when the header gives no length
_UNKNOWN_LENGTH = 1 << 62
#: MPEG layer III frames hold 1152 samples; headers without a Xing/LAME length are estimates
_MP3_FRAME_SAMPLES = 1152
#: samples (frames × channels) decoded per block: 1 MB of float32
_BLOCK_SAMPLES = 1 << 18
#: largest up/down factor of the resampling ratio; the filter has 20 × this + 1 taps
_MAX_POLYPHASE_FACTOR = 8192
#: error details quote at most this many log lines, each cut to this many characters
_MAX_QUOTED_LINES, _MAX_QUOTED_CHARS = 5, 200


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


class SampleRateOutOfRangeError(AudioError):
    code = "unsupported_sample_rate"
    http_status = 422


class TooManyChannelsError(AudioError):
    code = "too_many_channels"
    http_status = 422


class AudioTooLargeError(AudioError):
    """Decoding would take more samples (or memory) than allowed."""

    code = "audio_too_large"
    http_status = 413


@dataclasses.dataclass(frozen=True)
class AudioLimits:
    """What an upload may cost to decode; ``None`` leaves a bound off (training code)."""

    max_seconds: float | None = None
    min_sample_rate: int | None = None
    max_sample_rate: int | None = None
    max_channels: int | None = None
    #: frames × channels: the decoding work, checked on the header and while decoding
    max_decoded_samples: int | None = None


@dataclasses.dataclass
class DecodedAudio:
    #: mono float32 samples at ``target_sr`` (16 kHz unless asked otherwise)
    wav: np.ndarray
    duration_s: float
    source_sample_rate: int
    source_channels: int
    #: libsndfile's container name in lower case: "wav", "flac", "ogg", "mp3", ...
    source_format: str


@dataclasses.dataclass(frozen=True)
class _Header:
    format: str
    subtype: str
    sample_rate: int
    channels: int
    declared_frames: int

    def described(self) -> dict:
        return {"format": self.format, "subtype": self.subtype,
                "sample_rate": self.sample_rate, "channels": self.channels}


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


def resample(wav: np.ndarray, source_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the exact rational factor target_sr/source_sr."""
    wav = np.asarray(wav, dtype=np.float32)
    if source_sr == target_sr:
        return np.ascontiguousarray(wav)
    common = math.gcd(int(source_sr), int(target_sr))
    out = resample_poly(wav, target_sr // common, source_sr // common)
    return np.ascontiguousarray(out, dtype=np.float32)


class StreamingResampler:
    """``resample_poly`` fed block by block, with the state carried between blocks.

    Output sample k is centred on input sample k·down/up and its filter reaches
    ``half_len``/up input samples either side. Each block is appended to the inputs still
    needed; outputs whose whole window is available are computed by ``resample_poly`` on
    that buffer (which equals the whole-signal result there) and inputs no later output
    needs are dropped. The buffer always starts on a multiple of ``down``, so its outputs
    line up with the whole signal's.
    """

    def __init__(self, source_sr: int, target_sr: int):
        self.up, self.down = polyphase_factors(source_sr, target_sr)
        self._passthrough = self.up == self.down == 1
        self._half_len = 10 * max(self.up, self.down)  # as resample_poly designs its filter
        # resample_poly's own filter in float32, designed once instead of once per block
        self._taps = None if self._passthrough else firwin(
            2 * self._half_len + 1, 1.0 / max(self.up, self.down),
            window=("kaiser", 5.0)).astype(np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._offset = 0   # index in the whole signal of _pending[0]
        self._emitted = 0  # output samples produced so far
        self._chunks: list[np.ndarray] = []

    def feed(self, samples: np.ndarray) -> None:
        if self._passthrough:
            self._chunks.append(np.array(samples, dtype=np.float32))
            return
        self._pending = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32)))
        last_input = self._offset + len(self._pending) - 1
        # outputs k with k·down + half_len <= last_input·up have every input they need
        self._emit_until((last_input * self.up - self._half_len) // self.down + 1)
        self._drop_consumed_inputs()

    def finish(self) -> np.ndarray:
        """All outputs, as resample_poly would give them (zeros after the last input)."""
        if not self._passthrough:
            total_inputs = self._offset + len(self._pending)
            self._emit_until(-(-total_inputs * self.up // self.down))
        self._pending = np.zeros(0, dtype=np.float32)
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._chunks)

    def _emit_until(self, stop: int) -> None:
        if stop <= self._emitted:
            return
        out = resample_poly(self._pending, self.up, self.down, window=self._taps)
        first = self._offset * self.up // self.down  # exact: _offset is a multiple of down
        self._chunks.append(out[self._emitted - first:stop - first].copy())
        self._emitted = stop

    def _drop_consumed_inputs(self) -> None:
        needed_from = max(0, (self._emitted * self.down - self._half_len) // self.up)
        new_offset = needed_from - needed_from % self.down
        if new_offset > self._offset:
            self._pending = self._pending[new_offset - self._offset:]
            self._offset = new_offset


def polyphase_factors(source_sr: int, target_sr: int) -> tuple[int, int]:
    """(up, down) for resampling source_sr to target_sr: the exact reduced ratio when both
    factors are at most _MAX_POLYPHASE_FACTOR, else the nearest ratio within that bound
    (the filter's length, and so its cost, grows with the larger factor)."""
    ratio = Fraction(int(target_sr), int(source_sr))
    if max(ratio.numerator, ratio.denominator) > _MAX_POLYPHASE_FACTOR:
        # bounding the denominator by F/ceil(ratio) also keeps the numerator within F
        ratio = ratio.limit_denominator(max(1, _MAX_POLYPHASE_FACTOR // math.ceil(ratio)))
    if ratio.numerator == 0:  # below 1/F: the strongest reduction allowed is the nearest
        return 1, _MAX_POLYPHASE_FACTOR
    return ratio.numerator, ratio.denominator


def _open(data: bytes) -> sf.SoundFile:
    try:
        return sf.SoundFile(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise UndecodableAudioError(
            "could not decode the upload as audio (supported: WAV, FLAC, OGG/Vorbis, MP3)",
            detail={"decoder": "libsndfile", "decoder_error": _decoder_message(exc),
                    "size_bytes": len(data)}) from exc


def _read_header(handle: sf.SoundFile, data: bytes, limits: AudioLimits) -> _Header:
    """Everything that can be refused before decoding, cheapest checks first."""
    header = _Header(format=handle.format.lower(), subtype=handle.subtype,
                     sample_rate=handle.samplerate, channels=handle.channels,
                     declared_frames=handle.frames)
    if header.sample_rate <= 0 or header.channels <= 0:
        raise UndecodableAudioError("the audio header is invalid", detail=header.described())
    _check_sample_rate(header, limits)
    _check_channels(header, limits)
    if header.declared_frames >= _UNKNOWN_LENGTH:
        raise UndecodableAudioError(
            "the audio stream declares no length (streamed encoding); re-encode it as a "
            "regular file", detail=header.described())
    _check_container_complete(data, handle.extra_info, header.described())
    if header.declared_frames == 0:
        raise EmptyAudioError("the audio contains no samples", detail=header.described())
    _check_duration(header.declared_frames / header.sample_rate, limits.max_seconds)
    _check_decoding_work(header, header.declared_frames, limits)
    return header


def _check_sample_rate(header: _Header, limits: AudioLimits) -> None:
    low, high = limits.min_sample_rate, limits.max_sample_rate
    if (low is None or header.sample_rate >= low) and (high is None or header.sample_rate <= high):
        return
    supported = (f"{low} to {high} Hz" if low is not None and high is not None
                 else f"at least {low} Hz" if low is not None else f"at most {high} Hz")
    raise SampleRateOutOfRangeError(
        f"the audio's sample rate is {header.sample_rate} Hz; supported rates are {supported}",
        detail={**header.described(), "min_sample_rate": low, "max_sample_rate": high})


def _check_channels(header: _Header, limits: AudioLimits) -> None:
    if limits.max_channels is not None and header.channels > limits.max_channels:
        raise TooManyChannelsError(
            f"the audio has {header.channels} channels; at most {limits.max_channels} are "
            "supported", detail={**header.described(), "max_channels": limits.max_channels})


def _check_decoding_work(header: _Header, frames: int, limits: AudioLimits) -> None:
    """Decoding costs frames × channels samples, however few bytes encode them."""
    budget = limits.max_decoded_samples
    if budget is None or frames * header.channels <= budget:
        return
    stereo_48k_seconds = budget / (2 * 48000)
    raise AudioTooLargeError(
        f"the audio holds {frames * header.channels:,} samples ({header.channels} channels × "
        f"{frames / header.sample_rate:.1f} s at {header.sample_rate} Hz); at most {budget:,} "
        f"samples (frames × channels) are decoded per upload, as in "
        f"{stereo_48k_seconds:g} s of 48 kHz stereo",
        detail={**header.described(), "samples": frames * header.channels,
                "duration_s": round(frames / header.sample_rate, 3), "max_samples": budget})


def _check_duration(duration_s: float, max_seconds: float | None) -> None:
    if max_seconds is not None and duration_s > max_seconds:
        raise AudioTooLongError(
            f"the audio lasts {duration_s:.1f} s, more than the {max_seconds:g} s allowed",
            detail={"duration_s": round(duration_s, 3), "max_s": max_seconds})


def _decode_blocks(handle: sf.SoundFile, header: _Header, limits: AudioLimits,
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
        _check_duration(decoded_frames / header.sample_rate, limits.max_seconds)
        _check_decoding_work(header, decoded_frames, limits)
        if not np.isfinite(block).all():
            raise UndecodableAudioError("the audio contains NaN or infinite samples",
                                        detail=header.described())
        # row means, as a whole-signal mean(axis=1) computes them; feed() copies the block
        resampler.feed(block.mean(axis=1, dtype=np.float32) if header.channels > 1 else block[:, 0])
    return resampler.finish(), decoded_frames


def _read_block(handle: sf.SoundFile, header: _Header, buffer: np.ndarray) -> np.ndarray:
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
                "decoder_error": _decoder_message(exc), "declared_frames": header.declared_frames,
            }) from exc
    return buffer[:frames]


def _check_decoded(header: _Header, decoded_frames: int) -> None:
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
    shortfalls = [match.group(0) for match in _SIZE_IN_LOG.finditer(decoder_log)
                  if int(match.group(3)) < int(match.group(2))]
    if shortfalls:
        raise UndecodableAudioError(
            "the audio file is truncated: it is shorter than its header declares",
            detail={**described, "decoder_log": _quoted_lines(shortfalls)})


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
                log_lines = [line for line in decoder_log.splitlines() if "should be" in line]
                raise UndecodableAudioError(
                    "the WAV file is truncated: its data chunk is shorter than declared",
                    detail={**described, "declared_data_bytes": size,
                            "present_data_bytes": present, "decoder_log": _quoted_lines(log_lines)})
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
    return _quoted(getattr(exc, "error_string", None) or str(exc))


def _quoted_lines(lines: list[str]) -> list[str]:
    """Log lines for an error detail: a crafted file can make libsndfile log a lot."""
    quoted = [_quoted(line) for line in lines[:_MAX_QUOTED_LINES]]
    if len(lines) > _MAX_QUOTED_LINES:
        quoted.append(f"... {len(lines) - _MAX_QUOTED_LINES} more lines")
    return quoted


def _quoted(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_QUOTED_CHARS else text[:_MAX_QUOTED_CHARS] + "..."
