"""Speaker diarization that names its speakers against stored voice profiles.

Library code: receives the runtime embedder, the alignment artifact, a VAD and the
gallery as arguments; imports ``speechcore`` and ``nessa`` only (never ``app``).
"""
from diarizer.clustering import HintError, SpeakerHints, validate_hints
from diarizer.config import DEFAULT_AHC_THRESHOLDS, DiarizerConfig
from diarizer.naming import Gallery, name_clusters
from diarizer.pipeline import Diarizer
from diarizer.result import (DiarizationResult, Segment, SpeakerSummary, parse_rttm, parse_uem,
                             rttm_lines, write_rttm)

__all__ = ["Diarizer", "DiarizerConfig", "DEFAULT_AHC_THRESHOLDS", "DiarizationResult", "Segment",
           "SpeakerSummary", "Gallery", "name_clusters", "HintError", "SpeakerHints",
           "validate_hints", "parse_rttm", "parse_uem", "rttm_lines", "write_rttm"]
