"""What the diarization pipeline can be told: every stage's knobs in one dataclass, with
the defaults the service runs (tuned on data that is not the test split; docs/diarization.md)."""
from __future__ import annotations

import dataclasses

from diarizer.clustering import METHODS

FEATURES = ("raw", "aligned", "concat", "centered")


@dataclasses.dataclass
class DiarizerConfig:
    window_s: float = 1.5
    hop_s: float = 0.75
    #: speech segments shorter than this get no window of their own; their frames take the
    #: scores of the nearest embedded frames
    min_window_s: float = 0.5
    #: which embedding the clustering sees: raw GE2E windows, aligned ones, or both
    features: str = "raw"
    method: str = "spectral"
    #: AHC cosine-distance cut (used by ``ahc``); tuned per feature space (see docs)
    ahc_threshold: float | None = None
    #: upper bound on the eigengap search when no max_speakers hint is given
    max_speakers: int = 8
    #: row-wise affinity pruning share for spectral clustering (0 = dense). GE2E cosines
    #: are all high (ReLU outputs), so a dense affinity always gives one speaker
    pruning: float | str = 0.7
    #: at most this many neighbours per affinity row (None: the share alone)
    pruning_max_keep: int | None = 8
    frame_s: float = 0.01
    #: median filter over frame scores, in frames (odd)
    median_frames: int = 51
    #: runs shorter than this are given to a neighbour after smoothing
    min_segment_s: float = 0.2
    embed_batch: int = 64
    seed: int = 0
    #: Silero threshold of the VAD the Diarizer builds when none is passed in (far-field
    #: meeting audio loses much speech at silero's default 0.5)
    vad_threshold: float = 0.3
    #: with an overlap detector: where speech comes from ("silero", "segmentation" = the
    #: segmentation model's own speech probability, or "union" of both)
    speech_source: str = "segmentation"
    #: overlap probability above which a speech frame gets a second (next-best) speaker
    overlap_threshold: float = 0.5
    #: speech probability threshold on the segmentation model's output
    seg_speech_threshold: float = 0.5
    #: speech regions (runs above seg_speech_threshold) whose highest probability stays below
    #: this are dropped (isolated low-confidence noise); None keeps them
    seg_min_peak: float | None = 0.8
    #: frames whose speech probability is below this (but above seg_speech_threshold) are
    #: kept only where Silero also hears speech (Silero then runs); None = no Silero check
    seg_confirm_threshold: float | None = None
    #: each speech region of the segmentation model is widened by this much on both sides
    seg_pad_s: float = 0.0
    #: hop of the segmentation model's 10-s chunks (None: the detector's own step)
    segmentation_step_s: float | None = 5.0
    #: windows whose mean overlap probability is above this are left out of the clustering
    #: (they still get a cluster: the nearest centroid); None keeps them all
    cluster_overlap_max: float | None = None
    #: lower bound on the speaker count from the segmentation model: the most local
    #: speakers (each the likeliest class for >= local_speaker_min_s) in any 10-s chunk
    count_floor_from_segmentation: bool = True
    local_speaker_min_s: float = 1.0
    #: cut the embedding windows at the segmentation model's local speaker changes and
    #: keep them out of overlapped speech (the speech mask itself is not changed)
    split_at_changes: bool = True
    #: after clustering, clusters whose centroids' cosine is above this are merged (most
    #: similar pair first), never below the segmentation floor / min hint; only with the
    #: segmentation model (its floor guards against merging real speakers); None = never
    merge_threshold: float | None = 0.8
    #: a merge also needs the centroids' cosine above this share of the pair's mean
    #: window-to-own-centroid cosine (scale-free); None = the absolute threshold alone
    merge_relative: float | None = None
    #: non-speech gaps shorter than this between two runs of the same speaker are given to
    #: that speaker (pauses inside a turn); 0 = off
    fill_gap_s: float = 0.0
    #: non-speech frames within this distance of a labelled frame take its label (the output
    #: is widened at speech edges; windows and clustering are unchanged); 0 = off
    output_pad_s: float = 0.05
    #: with a gallery (and no num_speakers hint): also cluster into up to this many more
    #: speakers than estimated and keep the larger count when it names one more distinct
    #: enrolled person above the artifact's threshold (an under-count merges two people:
    #: the gallery tells them apart); 0 = off
    gallery_extra_speakers: int = 1

    def validate(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (0 < self.hop_s <= self.window_s):
            raise ValueError("need 0 < hop_s <= window_s")
        if self.min_window_s > self.window_s:
            raise ValueError("min_window_s must not exceed window_s")
        if self.speech_source not in ("silero", "segmentation", "union"):
            raise ValueError("speech_source must be silero, segmentation or union")


#: AHC cosine-distance thresholds per feature space, chosen on the real conversations
DEFAULT_AHC_THRESHOLDS = {"raw": 0.40, "aligned": 0.60, "concat": 0.50, "centered": 1.0}
