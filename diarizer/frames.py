"""The 10-ms frame grid the pipeline labels: spans to masks, runs of equal labels, and the
clean-ups applied to per-frame speaker labels (-1 = no speech) before they become segments."""
from __future__ import annotations

import numpy as np


def spans_mask(spans, n_frames: int, frame_s: float) -> np.ndarray:
    """True on the frames covered by (start, end) spans in seconds."""
    mask = np.zeros(n_frames, dtype=bool)
    for s, e in spans:
        mask[int(round(s / frame_s)):min(n_frames, int(round(e / frame_s)))] = True
    return mask


def runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, label) runs of equal values (end exclusive)."""
    if not len(labels):
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(labels)]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, ends)]


def pad_edges(labels: np.ndarray, pad: int) -> np.ndarray:
    """Non-speech frames (-1) within ``pad`` frames of speech take the nearest speech label."""
    speech = np.flatnonzero(labels >= 0)
    silent = np.flatnonzero(labels < 0)
    if not len(speech) or not len(silent) or pad <= 0:
        return labels
    pos = np.clip(np.searchsorted(speech, silent), 0, len(speech) - 1)
    prev = speech[np.maximum(pos - 1, 0)]
    nxt = speech[pos]
    nearest = np.where(np.abs(prev - silent) <= np.abs(nxt - silent), prev, nxt)
    close = np.abs(nearest - silent) <= pad
    out = labels.copy()
    out[silent[close]] = labels[nearest[close]]
    return out


def fill_gaps(labels: np.ndarray, max_frames: int) -> np.ndarray:
    """Non-speech runs (-1) shorter than max_frames between two runs of the same label."""
    labels = labels.copy()
    found = runs(labels)
    for i in range(1, len(found) - 1):
        a, b, label = found[i]
        if label < 0 and b - a < max_frames and found[i - 1][2] >= 0 and found[i - 1][2] == found[i + 1][2]:
            labels[a:b] = found[i - 1][2]
    return labels


def absorb_short_runs(labels: np.ndarray, min_frames: int) -> np.ndarray:
    """Speech runs shorter than min_frames flanked by speech take the longer neighbour's label."""
    labels = labels.copy()
    found = runs(labels)
    for i, (a, b, label) in enumerate(found):
        if label < 0 or b - a >= min_frames:
            continue
        left = found[i - 1] if i > 0 and found[i - 1][2] >= 0 else None
        right = found[i + 1] if i + 1 < len(found) and found[i + 1][2] >= 0 else None
        if left is None and right is None:
            continue
        pick = max((r for r in (left, right) if r is not None), key=lambda r: r[1] - r[0])
        labels[a:b] = pick[2]
    return labels


def frames_to_segments(frame_labels: np.ndarray, frame_s: float) -> list[tuple[float, float, int]]:
    return [(a * frame_s, b * frame_s, label) for a, b, label in runs(frame_labels) if label >= 0]
