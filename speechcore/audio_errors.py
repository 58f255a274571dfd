"""The ways an upload can be refused, each with its API error code and HTTP status, and
the quoting of decoder messages in their details: a crafted file can make libsndfile say a
lot, so what is echoed back is truncated."""
from __future__ import annotations

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


def decoder_message(exc: Exception) -> str:
    # LibsndfileError carries libsndfile's own text; str() adds "Error opening <BytesIO...>"
    return _quoted(getattr(exc, "error_string", None) or str(exc))


def quoted_lines(lines: list[str]) -> list[str]:
    """Log lines for an error detail: a crafted file can make libsndfile log a lot."""
    quoted = [_quoted(line) for line in lines[:_MAX_QUOTED_LINES]]
    if len(lines) > _MAX_QUOTED_LINES:
        quoted.append(f"... {len(lines) - _MAX_QUOTED_LINES} more lines")
    return quoted


def _quoted(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_QUOTED_CHARS else text[:_MAX_QUOTED_CHARS] + "..."
