"""The diarization pipeline.

    speech (the segmentation model's when an overlap detector is given, low-confidence
    regions dropped; else Silero VAD)
    -> sliding windows over speech (cut at local speaker changes, outside overlap)
    -> runtime (GE2E) embeddings, batched -> clustering (count floored by the segmentation
    model's local speaker count; near-duplicate clusters merged; with a gallery, one more
    cluster kept when it names one more enrolled person)
    -> frame-level re-segmentation (10 ms), median smoothing, speech edges widened,
    overlap second speakers -> naming.

``Diarizer.diarize`` calls one method per stage and times each through one ``StageClock``;
the stages' work lives in speech.py, windows.py, clustering.py, resegmentation.py and
naming.py, their knobs in config.py.

Everything model-like (runtime embedder, artifact, VAD, gallery) is passed in; this
package never imports ``app``.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from diarizer.clustering import SpeakerHints, cluster, merge_clusters, validate_hints
from diarizer.config import DEFAULT_AHC_THRESHOLDS, DiarizerConfig
from diarizer.frames import frames_to_segments, runs, spans_mask
from diarizer.naming import Gallery, name_clusters
from diarizer.resegmentation import resegment
from diarizer.result import DiarizationResult, Segment, SpeakerSummary
from diarizer.speech import SegmentationFrames, segmentation_frames, speech_mask
from diarizer.timing import StageClock, StageHook
from diarizer.windows import sliding_windows, split_speech, windows_clear_of_overlap
from speechcore.embedder import l2_normalise
from speechcore.resampling import resample

SAMPLE_RATE = 16000
#: stage -> its name in ``info["timings"]``, the names the API and CLI have always reported
#: (the windows stage is cheap and counted in ``total_s`` only)
TIMING_NAMES = {"segmentation": "overlap_s", "speech": "vad_s", "embeddings": "embed_s",
                "clustering": "cluster_s", "resegmentation": "resegment_s", "naming": "naming_s"}


class Diarizer:
    """Who spoke when, named against a gallery of voice profiles.

    ``runtime_embedder``: the runtime-side Embedder (GE2E); ``artifact``: the active
    AlignmentArtifact; ``vad``: a SileroVAD (constructed if None).
    """

    def __init__(self, runtime_embedder, artifact, vad=None, config: DiarizerConfig | None = None,
                 overlap_detector=None):
        self.embedder = runtime_embedder
        self.artifact = artifact
        self.config = config or DiarizerConfig()
        if vad is None:
            from speechcore.vad import SileroVAD
            vad = SileroVAD(threshold=self.config.vad_threshold)
        self.vad = vad
        #: optional diarizer.overlap.OverlapDetector (pyannote segmentation-3.0)
        self.overlap_detector = overlap_detector
        self.config.validate()
        if artifact is not None and (artifact.source_version != runtime_embedder.version
                                     or artifact.source_dim != runtime_embedder.dim):
            raise ValueError(f"artifact {artifact.name!r} maps {artifact.source_version} "
                             f"({artifact.source_dim}-d), but the runtime embedder is "
                             f"{runtime_embedder.version} ({runtime_embedder.dim}-d)")


    # ------------------------------------------------------------------ main entry
    def diarize(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, *,
                gallery: Gallery | None = None, candidates: Iterable | None = None,
                num_speakers: int | None = None, min_speakers: int | None = None,
                max_speakers: int | None = None, hook: StageHook | None = None) -> DiarizationResult:
        """Speech -> windows -> embeddings -> clustering -> re-segmentation -> naming. Each
        stage's wall seconds go to ``hook(stage, seconds)`` as it ends (when given) and into
        ``info["timings"]``; the segmentation model runs as a stage inside speech."""
        hints = validate_hints(num_speakers, min_speakers, max_speakers)
        if gallery is not None and self.artifact is None:
            raise ValueError("naming against a gallery needs the alignment artifact")
        clock = StageClock(hook)
        with clock.stage("speech"):
            wav = _mono_at_sample_rate(wav, sample_rate)
            duration = len(wav) / SAMPLE_RATE
            speech, segmentation = self._speech(wav, duration, clock)
        info = {"config": dataclasses.asdict(self.config), "timings": {},
                "speech_seconds": round(sum(e - s for s, e in speech), 3)}
        if self.artifact is not None:
            info["artifact"] = self.artifact.name
        with clock.stage("windows"):
            windows = self._windows(speech, segmentation)
        info["windows"] = len(windows)
        if not windows:
            info["timings"] = clock.timings(TIMING_NAMES)
            return DiarizationResult([], [], duration, info)
        with clock.stage("embeddings"):
            raw = self.embed_windows(wav, windows)
            aligned = self.artifact.transform(raw) if self.artifact is not None else None
        with clock.stage("clustering"):
            feats = self.features(raw, aligned)
            labels = self._cluster(feats, raw, windows, segmentation, hints, gallery, candidates, info)
        with clock.stage("resegmentation"):
            segments = self._resegment(feats, labels, windows, speech, duration, segmentation, info)
        with clock.stage("naming"):
            named_segments, speakers = self._name(raw, labels, segments, gallery, candidates, info)
        info["timings"] = clock.timings(TIMING_NAMES)
        return DiarizationResult(named_segments, speakers, duration, info)

    # ------------------------------------------------------------------ stages
    def _speech(self, wav: np.ndarray, duration: float,
                clock: StageClock) -> tuple[list[tuple[float, float]], SegmentationFrames | None]:
        """Speech segments (s) and, with an overlap detector, its frames: Silero's speech, or
        the segmentation model's (``speech_source``); Silero only runs where it is used."""
        config = self.config
        use_segmentation = self.overlap_detector is not None and config.speech_source != "silero"
        speech = []
        if len(wav) and not (use_segmentation and config.speech_source == "segmentation"
                             and config.seg_confirm_threshold is None):
            speech = [(s, min(e, duration)) for s, e in self.vad.segments(wav)]
        if self.overlap_detector is None or not len(wav) or not (speech or use_segmentation):
            return speech, None
        with clock.stage("segmentation"):
            segmentation = segmentation_frames(self.overlap_detector, wav, duration, config)
        if use_segmentation:
            silero = spans_mask(speech, len(segmentation.speech), config.frame_s)
            mask = speech_mask(segmentation.speech, silero, config)
            speech = [(a * config.frame_s, b * config.frame_s) for a, b, on in runs(mask.astype(int)) if on]
        return speech, segmentation

    def _windows(self, speech, segmentation: SegmentationFrames | None) -> list[tuple[float, float]]:
        """Sliding windows over speech, cut at local speaker changes and kept out of
        overlapped speech when the segmentation model ran (``split_at_changes``)."""
        config = self.config
        window_speech = speech
        if config.split_at_changes and segmentation is not None:
            window_speech = split_speech(speech, segmentation.changes or [],
                                         segmentation.overlap >= config.overlap_threshold, config.frame_s)
        # only very short speech: one window per segment, however short
        return sliding_windows(window_speech, config.window_s, config.hop_s, config.min_window_s) or list(speech)

    def embed_windows(self, wav: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
        pieces = [wav[int(round(s * SAMPLE_RATE)):int(round(e * SAMPLE_RATE))] for s, e in windows]
        out = [self.embedder.embed(pieces[i:i + self.config.embed_batch])
               for i in range(0, len(pieces), self.config.embed_batch)]
        return np.concatenate(out) if out else np.zeros((0, self.embedder.dim), np.float32)

    def features(self, raw: np.ndarray, aligned: np.ndarray | None) -> np.ndarray:
        kind = self.config.features
        if kind == "centered":
            # GE2E windows all point the same way (ReLU outputs): remove the recording's mean
            unit = l2_normalise(raw)
            return l2_normalise(unit - unit.mean(axis=0, keepdims=True)) if len(unit) > 1 else unit
        if kind == "raw" or aligned is None:
            return l2_normalise(raw)
        if kind == "aligned":
            return aligned
        return l2_normalise(np.concatenate([l2_normalise(raw), aligned], axis=1))

    def _cluster(self, feats, raw, windows, segmentation: SegmentationFrames | None, hints: SpeakerHints,
                 gallery, candidates, info: dict) -> np.ndarray:
        """A cluster per window: clustered on the windows clear of overlap (the others take
        the nearest centroid), the count floored by the segmentation model, near-duplicate
        clusters merged, and with a gallery one more cluster kept while it names one more person."""
        config = self.config
        threshold = config.ahc_threshold
        if threshold is None:
            threshold = DEFAULT_AHC_THRESHOLDS[config.features]
        clean = np.ones(len(windows), dtype=bool)
        if segmentation is not None and config.cluster_overlap_max is not None:
            clean = windows_clear_of_overlap(windows, segmentation.overlap, config.cluster_overlap_max,
                                             config.frame_s)
        floor, hints = self._segmentation_floor(segmentation, hints)
        labels, cluster_info = cluster(feats[clean], config.method, hints, threshold=threshold,
                                       max_speakers_default=config.max_speakers,
                                       pruning=config.pruning, seed=config.seed,
                                       max_keep=config.pruning_max_keep)
        if config.merge_threshold is not None and floor is not None and hints.num_speakers is None:
            labels, merged = merge_clusters(feats[clean], labels, config.merge_threshold,
                                            hints.min_speakers or 1, config.merge_relative)
            if merged:
                cluster_info["merged"] = merged
                cluster_info["count"] = int(labels.max()) + 1
        if (gallery is not None and config.gallery_extra_speakers > 0 and hints.num_speakers is None
                and len(gallery.restrict(candidates))):
            labels = self._gallery_count(feats[clean], raw[clean], labels, hints, threshold, gallery,
                                         candidates, cluster_info)
        if not clean.all():
            k = int(labels.max()) + 1
            centroids = l2_normalise(np.stack([feats[clean][labels == c].mean(axis=0) for c in range(k)]))
            full = np.argmax(feats @ centroids.T, axis=1)
            full[clean] = labels
            labels = full
            cluster_info["clustered_windows"] = int(clean.sum())
        info["clustering"] = cluster_info
        if floor is not None:
            cluster_info["segmentation_floor"] = floor
        return labels

    def _segmentation_floor(self, segmentation: SegmentationFrames | None,
                            hints: SpeakerHints) -> tuple[int | None, SpeakerHints]:
        """The most local speakers in any of the segmentation model's chunks (None when not
        used), and the hints with it as their minimum speaker count."""
        chunk_speakers = segmentation.chunk_speakers if segmentation is not None else None
        if not (self.config.count_floor_from_segmentation and chunk_speakers and hints.num_speakers is None):
            return None, hints
        floor = max(chunk_speakers)
        if hints.max_speakers is not None:
            floor = min(floor, hints.max_speakers)
        if floor > (hints.min_speakers or 1):
            hints = dataclasses.replace(hints, min_speakers=floor)
        return floor, hints

    def _gallery_count(self, feats, raw, labels, hints, threshold, gallery, candidates, info):
        """Try k+1, k+2, ... clusters (k = the estimate); keep a larger count only while each
        step names one more distinct enrolled person (accepted by the artifact's threshold)."""
        config = self.config
        high = hints.max_speakers or config.max_speakers

        def named(lab):
            k = int(lab.max()) + 1
            centroids = l2_normalise(np.stack([raw[lab == c].mean(axis=0) for c in range(k)]))
            return sum(n.speaker_id is not None for n in name_clusters(self.artifact, centroids, gallery,
                                                                       candidates))

        best, best_named = labels, named(labels)
        k = int(labels.max()) + 1
        for extra in range(1, config.gallery_extra_speakers + 1):
            if k + extra > min(high, len(feats)):
                break
            alt, _ = cluster(feats, config.method, dataclasses.replace(hints, num_speakers=k + extra),
                             threshold=threshold, max_speakers_default=config.max_speakers,
                             pruning=config.pruning, seed=config.seed, max_keep=config.pruning_max_keep)
            if int(alt.max()) + 1 != k + extra:
                break
            alt_named = named(alt)
            if alt_named <= best_named:
                break
            best, best_named = alt, alt_named
        if best is not labels:
            info["gallery_count"] = int(best.max()) + 1
            info["count"] = int(best.max()) + 1
        return best

    def _resegment(self, feats, labels, windows, speech, duration,
                   segmentation: SegmentationFrames | None, info: dict) -> list[tuple[float, float, int]]:
        """(start, end, cluster) segments from the frame labels, overlapped speech's second
        speakers among them."""
        frame = self.config.frame_s
        frame_labels, second = resegment(feats, labels, windows, speech, duration, self.config,
                                         segmentation.overlap if segmentation is not None else None)
        segments = frames_to_segments(frame_labels, frame)
        if second is not None:
            segments = sorted(segments + frames_to_segments(second, frame))
            info["overlap_seconds"] = round(float((second >= 0).sum() * frame), 3)
        return segments

    def _name(self, raw, labels, segments, gallery, candidates,
              info: dict) -> tuple[list[Segment], list[SpeakerSummary]]:
        """Each cluster that survived re-segmentation, numbered by first appearance, named
        against the gallery (``unknown-N`` without one or when nobody enrolled matches)."""
        order: list[int] = []
        for _, _, c in segments:
            if c not in order:
                order.append(c)
        runtime_centroids = np.stack([l2_normalise(raw[labels == c].mean(axis=0, keepdims=True))[0]
                                      for c in order]) if order else np.zeros((0, raw.shape[1]))
        names = name_clusters(self.artifact, runtime_centroids, gallery, candidates) if order else []
        by_cluster = dict(zip(order, names))
        named_segments = [Segment(s, e, by_cluster[c].label, by_cluster[c].speaker_id, by_cluster[c].score)
                          for s, e, c in segments]
        speakers = []
        for c in order:
            name = by_cluster[c]
            mine = [seg for seg in named_segments if seg.label == name.label]
            speakers.append(SpeakerSummary(name.label, name.speaker_id, name.score,
                                           sum(seg.duration for seg in mine), len(mine), c))
        info["naming"] = [{"label": n.label, "speaker_id": n.speaker_id, "score": n.score,
                           "threshold": n.threshold, "path": n.path} for n in names]
        return named_segments, speakers


def _mono_at_sample_rate(wav, sample_rate: int) -> np.ndarray:
    """The waveform as 1-D float32 at the pipeline's 16 kHz."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {wav.shape}")
    if sample_rate != SAMPLE_RATE:
        wav = resample(wav, sample_rate, SAMPLE_RATE)
    return wav
