"""What `nessa align train` calls: corpus folders in, saved artifact out."""
from __future__ import annotations

import os
from typing import Sequence

from nessa.artifact import AlignmentArtifact
from nessa.data import list_utterances
from nessa.train import AlignmentConfig, train_alignment
from speechcore.embedder import Embedder


def train_from_folder(source: Embedder, target: Embedder, train_dirs: Sequence[str], out_dir: str | os.PathLike,
                      name: str, seed: int = 0, cache_dir: str | os.PathLike = "var/cache/embeddings",
                      command: str = "", config: AlignmentConfig | dict | None = None,
                      progress: bool = True) -> AlignmentArtifact:
    """Train ``source`` (runtime) -> ``target`` (enrollment) on every utterance under ``train_dirs``.

    Each entry may be a speaker-folder corpus, a flat LibriSpeech folder or a
    ``<speaker_id> <path>`` list file (see ``nessa.data.list_utterances``). Speaker ids
    are taken as they are, so the same speaker listed in two sources is one speaker.
    The artifact is written to ``<out_dir>/<name>/`` and returned.
    """
    if not train_dirs:
        raise ValueError("give at least one training corpus")
    utterances = sorted({item for directory in train_dirs for item in list_utterances(directory)})
    return train_alignment(source, target, utterances, out_dir=out_dir, name=name, config=config, seed=seed,
                           cache_dir=cache_dir, progress=progress, command=command,
                           data_sources=[str(directory) for directory in train_dirs])


def train_network_from_folders(*args, **kwargs):
    """`nessa align train --arch ...`: see ``nessa.train_network.train_network_from_folders``."""
    from nessa.train_network import train_network_from_folders as train

    return train(*args, **kwargs)
