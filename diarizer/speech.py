"""The speech stage's model outputs on the pipeline's frame grid: what the segmentation model
(pyannote segmentation-3.0) says about each frame, and the speech mask drawn from it."""
from __future__ import annotations

import dataclasses

import numpy as np

from diarizer.config import DiarizerConfig
from diarizer.frames import runs


@dataclasses.dataclass
class SegmentationFrames:
    #: per frame: probability of overlapped speech, and of any speech
    overlap: np.ndarray
    speech: np.ndarray
    #: per 10-s chunk: how many local speakers it holds (None: the detector cannot tell)
    chunk_speakers: list[int] | None
    #: times (s) of local speaker changes (None: the detector cannot tell)
    changes: list[float] | None


def segmentation_frames(detector, wav: np.ndarray, duration: float,
                        config: DiarizerConfig) -> SegmentationFrames:
    """The segmentation model's probabilities interpolated onto the frame grid, with its
    local speaker counts and changes when the detector reports them (``analyse``)."""
    frame = config.frame_s
    n_frames = int(np.ceil(duration / frame))
    centres = (np.arange(n_frames) + 0.5) * frame
    if hasattr(detector, "analyse"):
        out = detector.analyse(wav, step_s=config.segmentation_step_s, min_active_s=config.local_speaker_min_s)
        times, speech_prob, overlap_prob = out["times"], out["speech"], out["overlap"]
        chunk_speakers, changes = out["chunk_speakers"], out.get("changes")
    else:
        chunk_speakers = changes = None
        times, speech_prob, overlap_prob = detector.probabilities(wav, step_s=config.segmentation_step_s)
    return SegmentationFrames(np.interp(centres, times, overlap_prob), np.interp(centres, times, speech_prob),
                              chunk_speakers, changes)


def speech_mask(prob: np.ndarray, silero: np.ndarray, config: DiarizerConfig) -> np.ndarray:
    """Speech frames from the segmentation model's speech probability (see the config);
    ``silero`` is Silero's speech on the same grid, for the confirm and union options."""
    mask = prob >= config.seg_speech_threshold
    if config.seg_confirm_threshold is not None:
        mask &= (prob >= config.seg_confirm_threshold) | silero
    if config.seg_min_peak is not None:
        for a, b, on in runs(mask.astype(int)):
            if on and prob[a:b].max() < config.seg_min_peak:
                mask[a:b] = False
    pad = int(round(config.seg_pad_s / config.frame_s))
    if pad > 0 and mask.any():
        from scipy.ndimage import binary_dilation
        mask = binary_dilation(mask, structure=np.ones(2 * pad + 1, dtype=bool))
    if config.speech_source == "union":
        mask |= silero
    return mask
