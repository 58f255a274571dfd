"""Corpus preparation helpers: turn short single-word clips into multi-second utterances.

Speech Commands holds 1-s words; a speaker's words concatenated give an utterance long
enough for the chunk plans of ``nessa.lab.data`` (regression chunks, profile and test halves).
The concatenations are written once as 16 kHz FLAC under a speaker-folder layout, so that
``nessa.lab.data.list_utterances`` / ``EmbeddingCache`` treat them like any other corpus.
"""
from __future__ import annotations

import os
import pathlib
from typing import Callable

import numpy as np

from nessa.lab.data import list_utterances


def concatenate_speaker_clips(source: str | os.PathLike, out_dir: str | os.PathLike, *, min_clips: int = 3,
                              max_clips: int = 40, gap_seconds: float = 0.1,
                              load_audio: Callable[[str], np.ndarray] | None = None,
                              sample_rate: int = 16000) -> pathlib.Path:
    """Write ``<out_dir>/<speaker>/<speaker>-concat.flac`` per speaker with >= ``min_clips`` clips.

    Clips are taken in sorted order (at most ``max_clips``) and joined with ``gap_seconds``
    of silence. Existing outputs are kept (the listing is deterministic). Returns out_dir.
    """
    import soundfile as sf

    if load_audio is None:
        from nessa.lab.data import default_audio_loader

        load_audio = default_audio_loader()
    out_dir = pathlib.Path(out_dir)
    by_speaker: dict[str, list[str]] = {}
    for speaker, path in list_utterances(source):
        by_speaker.setdefault(speaker, []).append(path)
    gap = np.zeros(int(round(gap_seconds * sample_rate)), dtype=np.float32)
    for speaker, paths in sorted(by_speaker.items()):
        if len(paths) < min_clips:
            continue
        target = out_dir / speaker / f"{speaker}-concat.flac"
        if target.is_file():
            continue
        pieces = []
        for path in sorted(paths)[:max_clips]:
            pieces += [np.asarray(load_audio(path), dtype=np.float32), gap]
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.stem}.tmp.flac")
        sf.write(temporary, np.concatenate(pieces), sample_rate, subtype="PCM_16")
        os.replace(temporary, target)
    return out_dir
