"""The diarization result, and RTTM reading/writing.

RTTM (NIST Rich Transcription Time Marked) lines as written here and by pyannote::

    SPEAKER <uri> 1 <start> <duration> <NA> <NA> <label> <NA> <NA>
"""
from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Iterable, TextIO


@dataclasses.dataclass
class Segment:
    start: float
    end: float
    label: str
    #: the gallery speaker this cluster was named as; None for unknown-N
    speaker_id: object | None = None
    #: the calibrated LLR behind the name (for unknowns: the best rejected LLR), None
    #: when no gallery was given
    score: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "speaker_id": self.speaker_id,
                "score": None if self.score is None else round(float(self.score), 4)}


@dataclasses.dataclass
class SpeakerSummary:
    label: str
    speaker_id: object | None
    score: float | None
    #: seconds of speech attributed to this speaker
    speech_seconds: float
    segments: int
    #: cluster index inside the run (diagnostics)
    cluster: int = -1

    def to_dict(self) -> dict:
        return {"label": self.label, "speaker_id": self.speaker_id,
                "score": None if self.score is None else round(float(self.score), 4),
                "speech_seconds": round(self.speech_seconds, 3), "segments": self.segments}


@dataclasses.dataclass
class DiarizationResult:
    segments: list[Segment]
    speakers: list[SpeakerSummary]
    duration: float
    #: how the number of speakers was decided, the clustering used, timings, ...
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    def to_dict(self) -> dict:
        return {"duration": round(self.duration, 3), "num_speakers": self.num_speakers,
                "segments": [s.to_dict() for s in self.segments],
                "speakers": [s.to_dict() for s in self.speakers], "info": self.info}

    def to_rttm(self, uri: str = "audio") -> str:
        return rttm_lines(self.segments, uri)

    def write_rttm(self, path: str | os.PathLike, uri: str | None = None) -> None:
        path = pathlib.Path(path)
        path.write_text(self.to_rttm(uri or path.stem), encoding="utf-8")


def _rttm_token(text: str) -> str:
    """RTTM fields are whitespace separated: keep a label/uri a single token."""
    token = "_".join(str(text).split())
    return token or "NA"


def rttm_lines(segments: Iterable, uri: str = "audio") -> str:
    """RTTM text for segments (Segment objects or dicts with start/end/label)."""
    out = io.StringIO()
    for seg in segments:
        start, end, label = ((seg["start"], seg["end"], seg["label"]) if isinstance(seg, dict)
                             else (seg.start, seg.end, seg.label))
        if end <= start:
            continue
        out.write(f"SPEAKER {_rttm_token(uri)} 1 {start:.3f} {end - start:.3f} <NA> <NA> "
                  f"{_rttm_token(label)} <NA> <NA>\n")
    return out.getvalue()


def write_rttm(path: str | os.PathLike, segments: Iterable, uri: str) -> None:
    pathlib.Path(path).write_text(rttm_lines(segments, uri), encoding="utf-8")


def parse_rttm(source: str | os.PathLike | TextIO) -> dict[str, list[Segment]]:
    """uri -> segments (sorted by start) of an RTTM file, path or open text handle.

    Only SPEAKER lines are read; blank lines and ``#``/``;;`` comments are skipped.
    Raises ValueError with the line number on a malformed SPEAKER line.
    """
    if hasattr(source, "read"):
        text = source.read()
    else:
        text = pathlib.Path(source).read_text(encoding="utf-8")
    result: dict[str, list[Segment]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";;")) or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"RTTM line {number}: expected at least 8 fields, got {len(fields)}: {line!r}")
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError as exc:
            raise ValueError(f"RTTM line {number}: bad start/duration in {line!r}") from exc
        if duration < 0:
            raise ValueError(f"RTTM line {number}: negative duration in {line!r}")
        result.setdefault(fields[1], []).append(Segment(start, start + duration, fields[7]))
    for segments in result.values():
        segments.sort(key=lambda s: (s.start, s.end, s.label))
    return result


def parse_uem(source: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """uri -> scored regions of a UEM file (``<uri> <channel> <start> <end>``)."""
    regions: dict[str, list[tuple[float, float]]] = {}
    for line in pathlib.Path(source).read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 4:
            regions.setdefault(fields[0], []).append((float(fields[2]), float(fields[3])))
    return regions
