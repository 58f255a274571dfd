"""The re-segmentation stage: from window clusters back to a speaker per 10-ms frame."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter

from diarizer.config import DiarizerConfig
from diarizer.frames import absorb_short_runs, fill_gaps, pad_edges, runs, spans_mask
from speechcore.embedder import l2_normalise


def resegment(feats: np.ndarray, labels: np.ndarray, windows, speech, duration, config: DiarizerConfig,
              overlap: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-frame cluster index (-1 = no speech): each frame takes the cluster whose
    centroid the windows covering it match best (mean cosine), median-smoothed.
    With overlap probabilities, overlapped speech frames also get the next-best
    cluster (the second array; -1 elsewhere), as in overlap-aware resegmentation."""
    frame = config.frame_s
    n_frames = int(np.ceil(duration / frame))
    k = int(labels.max()) + 1
    scores, covered = _frame_scores(feats, labels, windows, n_frames, frame)
    speech_mask = spans_mask(speech, n_frames, frame)
    _borrow_nearest_scores(scores, covered, speech_mask & ~covered)
    if k > 1 and config.median_frames > 1:
        scores = median_filter(scores, size=(config.median_frames | 1, 1), mode="nearest")
    frame_labels = np.where(speech_mask, np.argmax(scores, axis=1), -1)
    if k > 1 and config.min_segment_s > 0:
        frame_labels = absorb_short_runs(frame_labels, int(round(config.min_segment_s / frame)))
    if config.fill_gap_s > 0:
        frame_labels = fill_gaps(frame_labels, int(round(config.fill_gap_s / frame)))
    if config.output_pad_s > 0:
        frame_labels = pad_edges(frame_labels, int(round(config.output_pad_s / frame)))
    second = None
    if overlap is not None and k > 1:
        second = _second_speakers(scores, frame_labels, speech_mask & (overlap[:n_frames] >= config.overlap_threshold),
                                  config)
    return frame_labels, second


def _frame_scores(feats, labels, windows, n_frames: int, frame: float) -> tuple[np.ndarray, np.ndarray]:
    """(frames, clusters) mean cosine to each centroid of the windows covering a frame (0
    where no window does), and which frames a window covers."""
    k = int(labels.max()) + 1
    centroids = l2_normalise(np.stack([feats[labels == c].mean(axis=0) for c in range(k)]))
    window_scores = feats @ centroids.T  # (windows, k)
    total = np.zeros((n_frames, k))
    count = np.zeros(n_frames)
    for (s, e), scores in zip(windows, window_scores):
        a, b = int(round(s / frame)), min(n_frames, int(round(e / frame)))
        total[a:b] += scores
        count[a:b] += 1
    covered = count > 0
    return np.divide(total, count[:, None], out=np.zeros_like(total), where=covered[:, None]), covered


def _borrow_nearest_scores(scores: np.ndarray, covered: np.ndarray, uncovered_speech: np.ndarray) -> None:
    """Speech frames without a window take the scores of the nearest covered frame (in place)."""
    covered_idx = np.flatnonzero(covered)
    missing = np.flatnonzero(uncovered_speech)
    if len(missing) and len(covered_idx):
        pos = np.clip(np.searchsorted(covered_idx, missing), 0, len(covered_idx) - 1)
        prev = covered_idx[np.maximum(pos - 1, 0)]
        nxt = covered_idx[pos]
        nearest = np.where(np.abs(prev - missing) <= np.abs(nxt - missing), prev, nxt)
        scores[missing] = scores[nearest]


def _second_speakers(scores, frame_labels, overlapped: np.ndarray, config: DiarizerConfig) -> np.ndarray:
    """On overlapped speech frames, the best cluster other than the frame's own label (-1
    elsewhere); runs shorter than ``min_segment_s`` are dropped."""
    ranked = np.argsort(-scores, axis=1)
    alternative = np.where(ranked[:, 0] == frame_labels, ranked[:, 1], ranked[:, 0])
    second = np.where(overlapped, alternative, -1)
    if config.min_segment_s > 0:
        frame = config.frame_s
        min_frames = int(round(config.min_segment_s / frame))
        keep = spans_mask([(a * frame, b * frame) for a, b, c in runs(second) if c >= 0 and b - a >= min_frames],
                          len(second), frame)
        second = np.where(keep, second, -1)
    return second
