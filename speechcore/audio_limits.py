"""What decoding one upload may cost (sample rate, channels, duration, decoded samples),
and the checks that refuse an upload over those bounds, from its header or while decoding."""
from __future__ import annotations

import dataclasses

from speechcore.audio_errors import (AudioTooLargeError, AudioTooLongError, SampleRateOutOfRangeError,
                                     TooManyChannelsError)


@dataclasses.dataclass(frozen=True)
class AudioLimits:
    """What an upload may cost to decode; ``None`` leaves a bound off (training code)."""

    max_seconds: float | None = None
    min_sample_rate: int | None = None
    max_sample_rate: int | None = None
    max_channels: int | None = None
    #: frames × channels: the decoding work, checked on the header and while decoding
    max_decoded_samples: int | None = None


@dataclasses.dataclass(frozen=True)
class AudioHeader:
    """What the container's header declares, before any sample is decoded."""

    format: str
    subtype: str
    sample_rate: int
    channels: int
    declared_frames: int

    def described(self) -> dict:
        return {"format": self.format, "subtype": self.subtype,
                "sample_rate": self.sample_rate, "channels": self.channels}


def check_sample_rate(header: AudioHeader, limits: AudioLimits) -> None:
    low, high = limits.min_sample_rate, limits.max_sample_rate
    if (low is None or header.sample_rate >= low) and (high is None or header.sample_rate <= high):
        return
    supported = (f"{low} to {high} Hz" if low is not None and high is not None
                 else f"at least {low} Hz" if low is not None else f"at most {high} Hz")
    raise SampleRateOutOfRangeError(
        f"the audio's sample rate is {header.sample_rate} Hz; supported rates are {supported}",
        detail={**header.described(), "min_sample_rate": low, "max_sample_rate": high})


def check_channels(header: AudioHeader, limits: AudioLimits) -> None:
    if limits.max_channels is not None and header.channels > limits.max_channels:
        raise TooManyChannelsError(
            f"the audio has {header.channels} channels; at most {limits.max_channels} are "
            "supported", detail={**header.described(), "max_channels": limits.max_channels})


def check_decoding_work(header: AudioHeader, frames: int, limits: AudioLimits) -> None:
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


def check_duration(duration_s: float, max_seconds: float | None) -> None:
    if max_seconds is not None and duration_s > max_seconds:
        raise AudioTooLongError(
            f"the audio lasts {duration_s:.1f} s, more than the {max_seconds:g} s allowed",
            detail={"duration_s": round(duration_s, 3), "max_s": max_seconds})
