"""Truncation checks libsndfile does not make: it is lenient in ways that matter for an
upload endpoint.

* a truncated WAV is *not* an error for libsndfile: it shrinks the frame count to what is
  present and only notes ``data : N (should be M)`` in its log. We compare the RIFF
  ``data`` chunk's declared size with the bytes present and reject the file. The other
  uncompressed containers (RF64, W64, AIFF, ...) behave the same way; for them we reject
  when libsndfile's log shows a declared size larger than what the file holds;
* a truncated Ogg either fails to open, or opens with 0 frames (cut before the first
  audio page), or silently decodes the complete pages. Ogg declares no total length, but
  every page carries its own length and the last one the end-of-stream flag, so we walk
  the pages and reject an incomplete last page or a missing end-of-stream page;
* FLAC and MP3 need no check here: a truncated one fails or comes up short when decoded
  (``speechcore.audio`` compares decoded frames with the header's).
"""
from __future__ import annotations

import re

from speechcore.audio_errors import UndecodableAudioError, quoted_lines


def check_container_complete(data: bytes, decoder_log: str, described: dict) -> None:
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
            detail={**described, "decoder_log": quoted_lines(shortfalls)})


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
                            "present_data_bytes": present, "decoder_log": quoted_lines(log_lines)})
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
