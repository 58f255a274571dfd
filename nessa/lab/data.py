"""Training corpora for alignments: listing, chunk plans, and cached paired embeddings.

A corpus is a list of ``(speaker_id, path)``. Each file gets a deterministic *segment
plan* (``plan_segments``): chunks of several lengths at seeded random offsets plus the
whole utterance (the regression pairs), and fixed windows of its first half (profile
material) and second half (test material) for dev trials. Every segment is embedded by
both models; embeddings are cached per file and per model, so re-runs are fast and an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import zipfile
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
LIBRISPEECH_FILE = re.compile(r"^(?P<speaker>\d+)-(?P<chapter>\d+)-(?P<utterance>\d+)\.flac$", re.IGNORECASE)

# Segment roles in a plan.
ROLE_CHUNK = 0    # random-offset chunk: regression pair
ROLE_FULL = 1     # the whole utterance: regression pair
ROLE_PROFILE = 2  # first-half material for a dev profile
ROLE_TEST = 3     # second-half window scored against dev profiles

Utterance = tuple[str, str]


# ----------------------------------------------------------------------------- listing
def _is_audio(path: pathlib.Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS


def list_utterances(source: str | os.PathLike) -> list[Utterance]:
    """List ``(speaker_id, path)`` pairs, sorted, from one of three layouts.

    * a folder of speaker folders, ``<speaker>/<...>/<utterance>.{wav,flac,mp3,ogg}``
      (audio anywhere below the speaker folder, so LibriSpeech's chapter level works);
    * a flat LibriSpeech folder of ``<speaker>-<chapter>-<utt>.flac``;
    * a text file of ``<speaker_id> <path>`` lines (relative paths are relative to the
      list file; blank lines and ``#`` comments are skipped).
    """
    source = pathlib.Path(source)
    if source.is_file():
        return _list_from_file(source)
    if not source.is_dir():
        raise FileNotFoundError(f"no corpus at {source}")
    utterances: list[Utterance] = []
    unrecognised: list[str] = []
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            utterances += [(entry.name, str(path)) for path in sorted(entry.rglob("*")) if _is_audio(path)]
        elif _is_audio(entry):
            match = LIBRISPEECH_FILE.match(entry.name)
            if match:
                utterances.append((match["speaker"], str(entry)))
            else:
                unrecognised.append(entry.name)
    if unrecognised:
        raise ValueError(f"{source}: audio files with no speaker: {unrecognised[:5]} (expected "
                         "<speaker>/<file> folders or LibriSpeech <speaker>-<chapter>-<utt>.flac names)")
    if not utterances:
        raise ValueError(f"{source}: no audio files found ({', '.join(AUDIO_EXTENSIONS)})")
    return sorted(utterances)


def _list_from_file(list_file: pathlib.Path) -> list[Utterance]:
    utterances = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{list_file}:{number}: expected '<speaker_id> <path>', got {line!r}")
        speaker, path = parts[0], pathlib.Path(parts[1])
        if not path.is_absolute():
            path = list_file.parent / path
        if not path.is_file():
            raise FileNotFoundError(f"{list_file}:{number}: {path} does not exist")
        utterances.append((speaker, str(path)))
    if not utterances:
        raise ValueError(f"{list_file}: no utterances listed")
    return sorted(utterances)


def describe_utterances(utterances: Sequence[Utterance]) -> tuple[dict, str]:
    """Counts and a machine-independent sha256 of ``<speaker>/<file name> <size>`` lines."""
    lines = sorted(f"{speaker}/{pathlib.Path(path).name} {os.path.getsize(path)}" for speaker, path in utterances)
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    description = {"n_speakers": len({speaker for speaker, _ in utterances}),
                   "n_utterances": len(utterances),
                   "total_bytes": int(sum(os.path.getsize(path) for _, path in utterances))}
    return description, digest


# ----------------------------------------------------------------------------- segment plans
@dataclasses.dataclass(frozen=True)
class ChunkSpec:
    #: lengths of the random-offset regression chunks, seconds
    chunk_seconds: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    #: how many chunks of each length per utterance (lengths longer than it are skipped)
    chunks_per_length: int = 8
    #: also pair the whole utterance
    include_full: bool = True
    #: the first half is tiled with windows of this length (plus the whole first half)
    profile_window_seconds: float = 3.0
    #: the second half is tiled with non-overlapping windows of each of these lengths
    test_seconds: tuple[float, ...] = (1.0, 2.0, 3.0)
    seed: int = 0

    def as_dict(self) -> dict:
        return {field.name: (list(value) if isinstance(value := getattr(self, field.name), tuple) else value)
                for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    #: (n, 2) sample offsets [start, end)
    bounds: np.ndarray
    #: (n,) ROLE_* codes
    roles: np.ndarray
    #: (n,) nominal length in seconds (the true length for whole-utterance / half segments)
    seconds: np.ndarray


def _file_seed(seed: int, speaker: str, path: str) -> np.random.Generator:
    """Offsets depend on the seed and the file's identity, not on where the corpus lives."""
    identity = hashlib.sha256(f"{speaker}/{pathlib.Path(path).name}".encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(identity[:8], "little")])


def _tile(start: int, stop: int, window: int) -> list[tuple[int, int]]:
    return [(offset, offset + window) for offset in range(start, stop - window + 1, window)]


def plan_segments(n_samples: int, sample_rate: int, spec: ChunkSpec, speaker: str, path: str) -> SegmentPlan:
    rng = _file_seed(spec.seed, speaker, path)
    bounds: list[tuple[int, int]] = []
    roles: list[int] = []
    seconds: list[float] = []

    def add(segment: tuple[int, int], role: int, nominal: float) -> None:
        bounds.append(segment)
        roles.append(role)
        seconds.append(nominal)

    for length in spec.chunk_seconds:
        window = int(round(length * sample_rate))
        if window > n_samples:
            continue
        for offset in rng.integers(0, n_samples - window + 1, size=spec.chunks_per_length):
            add((int(offset), int(offset) + window), ROLE_CHUNK, float(length))
    if spec.include_full and n_samples > 0:
        add((0, n_samples), ROLE_FULL, n_samples / sample_rate)
    half = n_samples // 2
    if half > 0:
        add((0, half), ROLE_PROFILE, half / sample_rate)
        profile_window = int(round(spec.profile_window_seconds * sample_rate))
        for segment in _tile(0, half, profile_window):
            add(segment, ROLE_PROFILE, spec.profile_window_seconds)
        for length in spec.test_seconds:
            for segment in _tile(half, n_samples, int(round(length * sample_rate))):
                add(segment, ROLE_TEST, float(length))
    return SegmentPlan(bounds=np.asarray(bounds, dtype=np.int64).reshape(-1, 2),
                       roles=np.asarray(roles, dtype=np.int8), seconds=np.asarray(seconds, dtype=np.float32))


# ----------------------------------------------------------------------------- embedding cache
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class EmbeddingCache:
    """One .npz per (model, file, chunk spec), under ``<cache_dir>/<version>-<weights sha>/``."""

    def __init__(self, cache_dir: str | os.PathLike, embedder):
        self.embedder = embedder
        self.directory = pathlib.Path(cache_dir) / f"{_slug(embedder.version)}-{embedder.weights_sha256[:16]}"

    def key(self, path: str, spec: ChunkSpec, speaker: str, audio_tag: str = "") -> str:
        stat = os.stat(path)
        identity = {"path": str(pathlib.Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                    "speaker": speaker, "spec": spec.as_dict(), "audio": audio_tag,
                    "sample_rate": self.embedder.sample_rate,
                    "version": self.embedder.version, "weights_sha256": self.embedder.weights_sha256}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()

    def _path(self, key: str) -> pathlib.Path:
        return self.directory / key[:2] / f"{key}.npz"

    def load(self, key: str) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(utterance length in samples, segment bounds, embeddings), or None on a miss."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return int(stored["n_samples"]), stored["bounds"], stored["embeddings"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # a damaged entry is recomputed

    def store(self, key: str, n_samples: int, bounds: np.ndarray, embeddings: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, n_samples=np.int64(n_samples), bounds=bounds, embeddings=embeddings)
        os.replace(temporary, path)  # atomic: a killed run never leaves a half-written entry


@dataclasses.dataclass
class FileEmbeddings:
    speaker: str
    path: str
    plan: SegmentPlan
    #: (n_segments, source_dim) runtime-model embeddings
    source: np.ndarray
    #: (n_segments, target_dim) enrollment-model embeddings
    target: np.ndarray


def default_audio_loader() -> Callable[[str], np.ndarray]:
    from speechcore.audio import load_audio_file

    return lambda path: load_audio_file(path, target_sr=16000)


def speech_only_loader(load_audio: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
    """Keep only what Silero VAD calls speech, as the service does before embedding."""
    from speechcore.vad import SileroVAD

    vad = SileroVAD()
    return lambda path: vad.speech_only(np.asarray(load_audio(path), dtype=np.float32))[0]


def embed_segments(embedder, waveform: np.ndarray, bounds: np.ndarray, batch_size: int) -> np.ndarray:
    """Embed waveform[start:end] for every row of ``bounds``, batching similar lengths."""
    lengths = bounds[:, 1] - bounds[:, 0]
    order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch: less padding
    output = np.zeros((len(bounds), embedder.dim), dtype=np.float32)
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        batch = [np.ascontiguousarray(waveform[bounds[row, 0]:bounds[row, 1]], dtype=np.float32) for row in rows]
        embeddings = np.asarray(embedder.embed(batch), dtype=np.float32)
        if embeddings.shape != (len(rows), embedder.dim):
            raise ValueError(f"{embedder.version}.embed returned {embeddings.shape}, expected {(len(rows), embedder.dim)}")
        output[rows] = embeddings
    return output


def embed_corpus(utterances: Iterable[Utterance], source, target, spec: ChunkSpec, *,
                 cache_dir: str | os.PathLike, load_audio: Callable[[str], np.ndarray] | None = None,
                 audio_tag: str = "", batch_size: int = 16, progress: bool = True) -> list[FileEmbeddings]:
    """Plan and embed every file with both models, through the per-file cache.

    ``audio_tag`` names what ``load_audio`` does beyond decoding (e.g. "speech_only"); it
    is part of the cache key. A file cached for both models is not even decoded.
    """
    if source.sample_rate != target.sample_rate:
        raise ValueError(f"models disagree on sample rate: {source.sample_rate} vs {target.sample_rate}")
    models = (source, target)
    caches = [EmbeddingCache(cache_dir, model) for model in models]
    results = []
    for speaker, path in tqdm(list(utterances), desc="embedding chunks", unit="file", disable=not progress):
        keys = [cache.key(path, spec, speaker, audio_tag) for cache in caches]
        cached = [cache.load(key) for cache, key in zip(caches, keys)]
        waveform = None
        if all(entry is not None for entry in cached) and cached[0][0] == cached[1][0]:
            n_samples = cached[0][0]
        else:
            load_audio = load_audio or default_audio_loader()
            waveform = np.asarray(load_audio(path), dtype=np.float32)
            n_samples = len(waveform)
        plan = plan_segments(n_samples, source.sample_rate, spec, speaker, path)
        if len(plan.bounds) == 0:
            continue  # empty audio: nothing to pair
        embeddings = []
        for model, cache, key, entry in zip(models, caches, keys, cached):
            if entry is not None and entry[0] == n_samples and np.array_equal(entry[1], plan.bounds):
                embeddings.append(entry[2])
                continue
            if waveform is None:
                load_audio = load_audio or default_audio_loader()
                waveform = np.asarray(load_audio(path), dtype=np.float32)
            vectors = embed_segments(model, waveform, plan.bounds, batch_size)
            cache.store(key, n_samples, plan.bounds, vectors)
            embeddings.append(vectors)
        results.append(FileEmbeddings(speaker=speaker, path=path, plan=plan,
                                      source=embeddings[0], target=embeddings[1]))
    return results
