"""Uploads whose decoding cost is out of all proportion to their size (issue #10, defect 2).

Each bomb is built here, posted through the real API (identify and enrollment), and must be
refused with a 4xx {code, message, detail} in well under a second and without the memory
that decoding it used to take (the 8-channel FLAC cost 1.1 GB and 12.6 s, the 1 MHz WAV
915 MB). The decode-level tests below show that what is allowed still decodes, and that
the duration limit holds on what a file really contains.
"""
from __future__ import annotations

import io
import struct
import time
import tracemalloc
import types

import numpy as np
import pytest
import soundfile as sf

from conftest import ServiceHarness, fresh_database, make_settings

MAX_SECONDS_PER_REQUEST = 1.0
MAX_TRACED_GROWTH_BYTES = 100 * 1024 * 1024


# -- building the bombs ------------------------------------------------------------------
def pcm16_wav(sample_rate: int, frames: int, *, channels: int = 1, data_size: int | None = None) -> bytes:
    """A 16-bit PCM WAV written by hand, so its header can say anything (soundfile refuses
    to write absurd rates); ``data_size`` overrides the data chunk's declared size."""
    block_align = 2 * channels
    body = b"\x00\x01" * (frames * channels)
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, (sample_rate * block_align) & 0xFFFFFFFF,
                      block_align, 16)
    declared = len(body) if data_size is None else data_size
    return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
            + fmt + b"data" + struct.pack("<I", declared) + body)


def silent_file(fmt: str, seconds: int, channels: int, sample_rate: int) -> bytes:
    """Real silence written a second at a time: the encoder never holds the whole signal."""
    buffer = io.BytesIO()
    second = np.zeros((sample_rate, channels), dtype=np.float32)
    with sf.SoundFile(buffer, "w", samplerate=sample_rate, channels=channels, format=fmt) as out:
        for _ in range(seconds):
            out.write(second)
    return buffer.getvalue()


def long_silent_ogg(seconds: int, channels: int, sample_rate: int) -> bytes:
    """A complete Ogg/Vorbis stream of silence, made by repeating one steady audio page of a
    20-s encoding (encoding 599 s of 8 channels would take 20 s). It decodes to exactly
    ``seconds``: the last page's granule position trims the final page."""
    pages = _ogg_pages(silent_file("OGG", 20, channels, sample_rate))
    audio = [index for index, page in enumerate(pages) if _granule(page) > 0]
    first, steady = audio[0], audio[1]  # the first audio page primes the decoder
    step = _granule(pages[steady]) - _granule(pages[first])
    total = seconds * sample_rate
    out, position = pages[:first + 1], _granule(pages[first])
    while position + step < total:
        position += step
        out.append(_restamped(pages[steady], sequence=len(out), granule=position, flags=0))
    out.append(_restamped(pages[steady], sequence=len(out), granule=total, flags=0x04))  # end of stream
    return b"".join(out)


def _ogg_pages(data: bytes) -> list[bytes]:
    pages, position = [], 0
    while position < len(data):
        segments = data[position + 26]
        end = position + 27 + segments + sum(data[position + 27:position + 27 + segments])
        pages.append(data[position:end])
        position = end
    return pages


def _granule(page: bytes) -> int:
    return struct.unpack_from("<q", page, 6)[0]


def _restamped(page: bytes, *, sequence: int, granule: int, flags: int) -> bytes:
    page = bytearray(page)
    page[5] = flags
    struct.pack_into("<q", page, 6, granule)
    struct.pack_into("<I", page, 18, sequence)
    struct.pack_into("<I", page, 22, 0)
    struct.pack_into("<I", page, 22, _ogg_crc(page))
    return bytes(page)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def _ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected), over the page with a zero CRC."""
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


#: bomb -> (status, code) the API must answer
EXPECTED = {
    "wav_1000003_hz": (422, "unsupported_sample_rate"),
    "wav_2147483647_hz": (422, "unsupported_sample_rate"),
    "wav_1_hz_600_samples": (422, "unsupported_sample_rate"),
    "flac_599s_8ch_48k": (413, "audio_too_large"),
    "ogg_599s_8ch_48k": (413, "audio_too_large"),
    # a streaming header (data size unknown) over 601 s of real samples
    "wav_streaming_header_601s": (422, "audio_too_long"),
}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    made = {
        "wav_1000003_hz": pcm16_wav(1_000_003, 1600),
        "wav_2147483647_hz": pcm16_wav(2**31 - 1, 1600),
        "wav_1_hz_600_samples": pcm16_wav(1, 600),
        "flac_599s_8ch_48k": silent_file("FLAC", 599, 8, 48000),
        "ogg_599s_8ch_48k": long_silent_ogg(599, 8, 48000),
        "wav_streaming_header_601s": pcm16_wav(4000, 601 * 4000, data_size=0xFFFFFFFF),
    }
    assert len(made["wav_1000003_hz"]) == 3244 and len(made["wav_1_hz_600_samples"]) == 1244
    assert len(made["flac_599s_8ch_48k"]) < 300_000 and len(made["ogg_599s_8ch_48k"]) < 300_000
    for name in ("flac_599s_8ch_48k", "ogg_599s_8ch_48k"):  # what they declare is what they hold
        info = sf.info(io.BytesIO(made[name]))
        assert (info.frames, info.channels, info.samplerate) == (599 * 48000, 8, 48000)
    return made


@pytest.fixture(scope="module")
def service(tmp_path_factory, test_database_kind):
    """One service for the module (the bombs never reach the database)."""
    tmp = tmp_path_factory.mktemp("bombs")
    with fresh_database(test_database_kind, tmp) as url:
        harness = ServiceHarness(make_settings(tmp, url))
        try:
            yield harness, harness.create_speaker("Bomb target")
        finally:
            harness.close()


ENDPOINTS = {"identify": ("/v1/identify", "identify"),
             "enroll": ("/v1/speakers/{speaker}/enrollments", "enroll")}


def _post(service, endpoint: str, data: bytes):
    harness, speaker = service
    url, scope = ENDPOINTS[endpoint]
    return harness.upload(data, url.format(speaker=speaker), scope)


def _traced_growth(call) -> tuple[object, int]:
    """(result, peak bytes allocated above the starting point); numpy arrays are traced."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        result = call()
        return result, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


# -- through the API -------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_bomb_is_refused_quickly_and_cheaply(service, bombs, name, endpoint):
    started = time.perf_counter()
    response = _post(service, endpoint, bombs[name])
    elapsed = time.perf_counter() - started

    status, code = EXPECTED[name]
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == {"code", "message", "detail"} and body["code"] == code
    assert elapsed < MAX_SECONDS_PER_REQUEST, f"{name}: {elapsed:.2f} s"
    again, growth = _traced_growth(lambda: _post(service, endpoint, bombs[name]))
    assert again.status_code == status
    assert growth < MAX_TRACED_GROWTH_BYTES, f"{name}: +{growth / 1e6:.0f} MB"


def test_the_errors_say_what_the_limits_are(service, bombs):
    rate = _post(service, "identify", bombs["wav_1000003_hz"]).get_json()
    assert "4000 to 192000 Hz" in rate["message"]
    assert rate["detail"].items() >= {"sample_rate": 1_000_003, "min_sample_rate": 4000,
                                      "max_sample_rate": 192000}.items()
    work = _post(service, "identify", bombs["flac_599s_8ch_48k"]).get_json()
    assert "57,600,000 samples" in work["message"] and "600 s of 48 kHz stereo" in work["message"]
    assert work["detail"]["samples"] == 599 * 48000 * 8 and work["detail"]["max_samples"] == 57_600_000
    lying = _post(service, "identify", bombs["wav_streaming_header_601s"]).get_json()
    assert lying["detail"] == {"duration_s": 601.0, "max_s": 600.0}  # what the file holds


def test_too_many_channels_is_refused_from_the_header(service):
    nine = pcm16_wav(16000, 160, channels=9)
    response = _post(service, "identify", nine)
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "too_many_channels" and body["detail"]["max_channels"] == 8


# -- what is allowed still decodes; the limits hold on what a file contains ---------------
def _decode_upload(data: bytes):
    from app.services.audio_input import decode_upload
    from app.settings import Settings

    return decode_upload(types.SimpleNamespace(settings=Settings()), data)


@pytest.mark.models_only
def test_a_long_file_within_every_limit_decodes_in_bounded_memory():
    # 599 s of 48 kHz stereo: just inside both the duration limit and the sample budget
    upload = silent_file("FLAC", 599, 2, 48000)
    decoded, growth = _traced_growth(lambda: _decode_upload(upload))
    assert decoded.duration_s == pytest.approx(599.0)
    assert (decoded.source_sample_rate, decoded.source_channels) == (48000, 2)
    result_bytes = decoded.wav.nbytes  # 38 MB; decoding everything at once took 8 times that
    assert growth < 2.5 * result_bytes, f"+{growth / 1e6:.0f} MB for a {result_bytes / 1e6:.0f} MB result"


@pytest.mark.models_only
def test_an_awkward_rate_inside_the_range_costs_little():
    # 191,999 Hz is coprime with 16 kHz: the exact resampling filter would have 3.8 million taps
    upload = pcm16_wav(191_999, 1600)
    started = time.perf_counter()
    decoded, growth = _traced_growth(lambda: _decode_upload(upload))
    assert time.perf_counter() - started < 0.5
    assert growth < 20 * 1024 * 1024
    assert abs(len(decoded.wav) - 1600 * 16000 / 191_999) <= 1


@pytest.mark.models_only
def test_the_duration_limit_holds_on_what_is_decoded(monkeypatch):
    """libsndfile stops at the frame count it reported, so no real file decodes past it;
    this checks the second line of defence for a decoder that would (a header that
    understates its length): decoding stops as soon as the limit is passed."""
    import speechcore.audio as audio

    honest = audio._read_block
    extra_blocks = []

    def decoder_that_keeps_going(handle, header, buffer):
        block = honest(handle, header, buffer)
        if len(block):
            return block
        extra_blocks.append(1)
        buffer[:] = 0.0
        return buffer

    monkeypatch.setattr(audio, "_read_block", decoder_that_keeps_going)
    from app.errors import ApiError

    header_says_10_s = silent_file("FLAC", 10, 1, 16000)
    with pytest.raises(ApiError) as caught:
        _decode_upload(header_says_10_s)
    assert (caught.value.status, caught.value.code) == (422, "audio_too_long")
    seconds_per_block = audio._BLOCK_SAMPLES / 16000
    assert len(extra_blocks) == int((600 - 10) / seconds_per_block) + 1
