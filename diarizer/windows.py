"""The windows stage: which stretches of speech are embedded, and which of them are clear
enough of overlapped speech to take part in the clustering."""
from __future__ import annotations

import numpy as np

from diarizer.frames import runs, spans_mask


def sliding_windows(speech: list[tuple[float, float]], window_s: float, hop_s: float,
                    min_window_s: float) -> list[tuple[float, float]]:
    """Windows inside each speech segment; the last one is aligned to the segment's end."""
    windows = []
    for start, end in speech:
        length = end - start
        if length < min_window_s:
            continue
        if length <= window_s:
            windows.append((start, end))
            continue
        count = int(np.ceil((length - window_s) / hop_s)) + 1
        starts = [start + i * hop_s for i in range(count - 1)] + [end - window_s]
        windows.extend((s, s + window_s) for s in starts)
    return windows


def split_speech(speech, changes, overlapped: np.ndarray, frame_s: float):
    """Speech segments cut at change times, with overlapped frames removed."""
    mask = spans_mask(speech, len(overlapped), frame_s) & ~overlapped
    for t in changes:
        i = int(round(t / frame_s))
        mask[max(0, i - 1):i + 1] = False
    return [(a * frame_s, b * frame_s) for a, b, on in runs(mask.astype(int)) if on]


def windows_clear_of_overlap(windows, overlap: np.ndarray, max_overlap: float, frame_s: float) -> np.ndarray:
    """True for windows whose mean overlap probability is at most ``max_overlap``; all of
    them when fewer than two, or than half, would be left (too few to cluster on)."""
    clear = np.array([overlap[int(round(s / frame_s)):max(int(round(s / frame_s)) + 1,
                                                          int(round(e / frame_s)))].mean()
                      <= max_overlap for s, e in windows])
    if clear.sum() < max(2, 0.5 * len(windows)):
        clear[:] = True
    return clear
