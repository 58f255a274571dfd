"""Both models' embeddings of the evaluation corpus (and of the anchor corpus), from audio
through Silero VAD, crops and noise, cached per model, file and treatment."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Callable, Protocol, Sequence

import numpy as np

from nessa.lab.data import (EmbeddingCache, FileEmbeddings, default_audio_loader, embed_corpus, embed_segments,
                            list_utterances, speech_only_loader)
from nessa.lab.evaluation.conditions import Condition, NoiseSpec, add_noise, crop_bounds
from nessa.lab.train import AlignmentConfig

#: babble = this many other utterances (other speakers) summed
BABBLE_TALKERS = 5
#: the in-run alignments use the shipped alignment's chunk plan (seed 0) so the cache hits
TRAIN_CHUNK_SEED = 0


@dataclasses.dataclass
class EvalEmbeddings:
    """Both models' embeddings of the evaluation corpus.

    ``enroll_full`` / ``runtime_full``: (n, d) clean full-length embeddings (the enrollment
    side); ``tests[condition name] = (enrollment-model (n, d_e), runtime-model (n, d_r))``.
    Rows are utterances, in the order of ``speakers`` / ``names``.
    """

    speakers: np.ndarray
    names: list[str]
    enroll_full: np.ndarray
    runtime_full: np.ndarray
    tests: dict[str, tuple[np.ndarray, np.ndarray]]
    #: optional: condition name -> (n,) speech seconds of each test segment (for scorers
    #: whose calibration depends on the query's duration)
    test_seconds: dict[str, np.ndarray] | None = None


class EmbeddingProvider(Protocol):
    """Where embeddings come from (audio + models, or synthetic in tests)."""

    def evaluation_set(self, conditions: Sequence[Condition]) -> EvalEmbeddings: ...

    def anchor_files(self) -> list[FileEmbeddings]:
        """The anchor / alignment-training corpus, chunked as nessa.lab.train chunks it."""
        ...


class AudioEmbeddingProvider:
    """Real audio: decode -> Silero VAD speech only -> crops (+ noise) -> both models, cached."""

    def __init__(self, enroll_embedder, runtime_embedder, eval_dir, *, anchors_dir, cache_dir, crops, seed: int,
                 batch_size: int = 32, progress: bool = True, load_audio: Callable[[str], np.ndarray] | None = None):
        if enroll_embedder.sample_rate != runtime_embedder.sample_rate:
            raise ValueError("the two models disagree on the sample rate")
        self.enroll, self.runtime = enroll_embedder, runtime_embedder
        self.eval_dir, self.anchors_dir = eval_dir, anchors_dir
        self.cache_dir = pathlib.Path(cache_dir)
        self.crops = tuple(float(c) for c in crops)
        self.seed, self.batch_size, self.progress = seed, batch_size, progress
        self._load = load_audio or default_audio_loader()
        self._vad = None
        self._speech: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ audio
    def _speech_only(self, path: str) -> np.ndarray:
        if path not in self._speech:
            wav = np.asarray(self._load(path), dtype=np.float32)
            speech = self._detector().speech_only(wav)[0]
            self._speech[path] = speech if len(speech) else wav  # no speech found: keep it all
        return self._speech[path]

    def _noise_for(self, index: int, utterances, noise: NoiseSpec, n_samples: int) -> np.ndarray:
        speaker, path = utterances[index]
        rng = np.random.default_rng([self.seed, 7919, index])
        if noise.kind == "white":
            return rng.standard_normal(n_samples)
        others = [i for i, (spk, _) in enumerate(utterances) if spk != speaker]
        picked = rng.choice(others, size=min(BABBLE_TALKERS, len(others)), replace=False)
        babble = np.zeros(n_samples)
        for other in picked:
            talker = self._speech_only(utterances[other][1]).astype(np.float64)
            if len(talker) == 0:
                continue
            talker = np.tile(talker, n_samples // len(talker) + 2)
            start = int(rng.integers(0, len(talker) - n_samples))
            piece = talker[start:start + n_samples]
            babble += piece / max(np.sqrt(np.mean(piece ** 2)), 1e-9)  # equal-level talkers
        return babble

    def _detector(self):
        if self._vad is None:
            from speechcore.vad import SileroVAD

            self._vad = SileroVAD()
        return self._vad

    # ------------------------------------------------------------------ cache
    def _key(self, cache: EmbeddingCache, speaker: str, path: str, segment: dict, audio: dict) -> str:
        """One cache entry per (model, file, segment, audio treatment): the full speech is
        shared by every seed and crop list; a crop is keyed by its length and the seed."""
        stat = os.stat(path)
        model = cache.embedder
        identity = {"evaluation_segment": 1, "path": str(pathlib.Path(path).resolve()), "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns, "speaker": speaker, "segment": segment, "audio": audio,
                    "sample_rate": model.sample_rate, "version": model.version,
                    "weights_sha256": model.weights_sha256}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()

    def _embed_all(self, utterances, noise: NoiseSpec | None, corpus_sha: str) -> list[np.ndarray]:
        """Per model, (n_files, 1 + len(crops), dim): full speech then each crop."""
        from tqdm import tqdm

        models = (self.enroll, self.runtime)
        caches = [EmbeddingCache(self.cache_dir, model) for model in models]
        audio = {"vad": self._detector().identity(), "noise": None if noise is None else
                 {"kind": noise.kind, "snr_db": noise.snr_db, "seed": self.seed,
                  "corpus": corpus_sha if noise.kind == "babble" else ""}}
        segments = [{"crop": None}] + [{"crop": seconds, "seed": self.seed} for seconds in self.crops]
        out = [np.zeros((len(utterances), len(segments), model.dim), dtype=np.float32) for model in models]
        self._seconds = np.zeros((len(utterances), len(segments)))
        label = "embedding test set" + ("" if noise is None else f" ({noise.tag})")
        for index, (speaker, path) in enumerate(tqdm(utterances, desc=label, unit="file", disable=not self.progress)):
            speech = None
            for m, (model, cache) in enumerate(zip(models, caches)):
                keys = [self._key(cache, speaker, path, segment, audio) for segment in segments]
                missing = []
                for column, key in enumerate(keys):
                    entry = cache.load(key)
                    if entry is not None and entry[2].shape == (1, model.dim):
                        out[m][index, column] = entry[2][0]
                        self._seconds[index, column] = (entry[1][0, 1] - entry[1][0, 0]) / model.sample_rate
                    else:
                        missing.append(column)
                if not missing:
                    continue
                if speech is None:
                    speech = self._speech_only(path)
                    bounds = crop_bounds(len(speech), model.sample_rate, self.crops, self.seed, speaker, path)
                    if noise is not None:
                        speech = add_noise(speech, self._noise_for(index, utterances, noise, len(speech)),
                                           noise.snr_db)
                vectors = embed_segments(model, speech, bounds[missing], self.batch_size)
                for row, column in enumerate(missing):
                    cache.store(keys[column], len(speech), bounds[column:column + 1], vectors[row:row + 1])
                    out[m][index, column] = vectors[row]
                    self._seconds[index, column] = (bounds[column, 1] - bounds[column, 0]) / model.sample_rate
        return out

    def evaluation_set(self, conditions: Sequence[Condition]) -> EvalEmbeddings:
        utterances = list_utterances(self.eval_dir)
        corpus_sha = hashlib.sha256("\n".join(f"{s}/{pathlib.Path(p).name}" for s, p in utterances)
                                    .encode("utf-8")).hexdigest()
        clean_e, clean_r = self._embed_all(utterances, None, corpus_sha)
        seconds = self._seconds
        by_noise = {None: (clean_e, clean_r)}
        tests, test_seconds = {}, {}
        for condition in conditions:
            if condition.crop_seconds is not None and condition.crop_seconds not in self.crops:
                raise ValueError(f"condition {condition.name}: crop not among {self.crops}")
            if condition.noise not in by_noise:
                by_noise[condition.noise] = self._embed_all(utterances, condition.noise, corpus_sha)
            e, r = by_noise[condition.noise]
            column = 0 if condition.crop_seconds is None else 1 + self.crops.index(condition.crop_seconds)
            tests[condition.name] = (e[:, column], r[:, column])
            test_seconds[condition.name] = seconds[:, column].copy()
        return EvalEmbeddings(speakers=np.asarray([s for s, _ in utterances]),
                              names=[f"{s}/{pathlib.Path(p).name}" for s, p in utterances],
                              enroll_full=clean_e[:, 0], runtime_full=clean_r[:, 0], tests=tests,
                              test_seconds=test_seconds)

    def anchor_files(self) -> list[FileEmbeddings]:
        config = AlignmentConfig()  # the shipped alignment's chunking
        return embed_corpus(list_utterances(self.anchors_dir), self.runtime, self.enroll,
                            config.chunk_spec(TRAIN_CHUNK_SEED), cache_dir=self.cache_dir,
                            load_audio=speech_only_loader(self._load), audio_tag="speech_only",
                            batch_size=config.batch_size, progress=self.progress)
