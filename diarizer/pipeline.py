"""The diarization pipeline.

    speech (the segmentation model's when an overlap detector is given, low-confidence
    regions dropped; else Silero VAD)
    -> sliding windows over speech (cut at local speaker changes, outside overlap)
    -> runtime (GE2E) embeddings, batched -> clustering (count floored by the segmentation
    model's local speaker count; near-duplicate clusters merged; with a gallery, one more
    cluster kept when it names one more enrolled person)
    -> frame-level re-segmentation (10 ms), median smoothing, speech edges widened,
    overlap second speakers -> naming.

Everything model-like (runtime embedder, artifact, VAD, gallery) is passed in; this
package never imports ``app``.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable

import numpy as np
from scipy.ndimage import median_filter

from diarizer.clustering import METHODS, cluster, validate_hints
from diarizer.naming import Gallery, name_clusters
from diarizer.result import DiarizationResult, Segment, SpeakerSummary
from speechcore.embedder import l2_normalise

SAMPLE_RATE = 16000
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

    # ------------------------------------------------------------------ stages
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

    # ------------------------------------------------------------------ main entry
    def diarize(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, *,
                gallery: Gallery | None = None, candidates: Iterable | None = None,
                num_speakers: int | None = None, min_speakers: int | None = None,
                max_speakers: int | None = None) -> DiarizationResult:
        hints = validate_hints(num_speakers, min_speakers, max_speakers)
        if gallery is not None and self.artifact is None:
            raise ValueError("naming against a gallery needs the alignment artifact")
        config = self.config
        timings = {}
        t0 = time.perf_counter()
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono 1-D waveform, got shape {wav.shape}")
        if sample_rate != SAMPLE_RATE:
            from speechcore.audio import resample
            wav = resample(wav, sample_rate, SAMPLE_RATE)
        duration = len(wav) / SAMPLE_RATE
        use_segmentation = self.overlap_detector is not None and config.speech_source != "silero"
        speech = []
        if len(wav) and not (use_segmentation and config.speech_source == "segmentation"
                             and config.seg_confirm_threshold is None):
            # Silero only where its speech is used (the segmentation model's is enough alone)
            speech = [(s, min(e, duration)) for s, e in self.vad.segments(wav)]
        overlap = None
        chunk_speakers, changes = None, None
        if self.overlap_detector is not None and len(wav) and (speech or use_segmentation):
            t_overlap = time.perf_counter()
            overlap, seg_speech, chunk_speakers, changes = self._segmentation_frames(wav, duration)
            timings["overlap_s"] = time.perf_counter() - t_overlap
            if use_segmentation:
                silero = _mask(speech, len(seg_speech), config.frame_s)
                mask = self._speech_mask(seg_speech, silero)
                speech = [(a * config.frame_s, b * config.frame_s)
                          for a, b, on in _runs(mask.astype(int)) if on]
        timings["vad_s"] = time.perf_counter() - t0 - timings.get("overlap_s", 0.0)
        info = {"config": dataclasses.asdict(config), "timings": timings,
                "speech_seconds": round(sum(e - s for s, e in speech), 3)}
        if self.artifact is not None:
            info["artifact"] = self.artifact.name
        window_speech = speech
        if config.split_at_changes and overlap is not None:
            window_speech = _split_speech(speech, changes or [], overlap >= config.overlap_threshold,
                                          config.frame_s)
        windows = sliding_windows(window_speech, config.window_s, config.hop_s, config.min_window_s)
        if not windows and speech:
            # only very short speech: one window per segment, however short
            windows = list(speech)
        info["windows"] = len(windows)
        if not windows:
            timings["total_s"] = time.perf_counter() - t0
            return DiarizationResult([], [], duration, info)

        t1 = time.perf_counter()
        raw = self.embed_windows(wav, windows)
        aligned = self.artifact.transform(raw) if self.artifact is not None else None
        timings["embed_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        feats = self.features(raw, aligned)
        threshold = config.ahc_threshold
        if threshold is None:
            threshold = DEFAULT_AHC_THRESHOLDS[config.features]
        clean = np.ones(len(windows), dtype=bool)
        if overlap is not None and config.cluster_overlap_max is not None:
            frame = config.frame_s
            clean = np.array([overlap[int(round(s / frame)):max(int(round(s / frame)) + 1,
                                                               int(round(e / frame)))].mean()
                              <= config.cluster_overlap_max for s, e in windows])
            if clean.sum() < max(2, 0.5 * len(windows)):
                clean[:] = True
        floor = None
        if config.count_floor_from_segmentation and chunk_speakers and hints.num_speakers is None:
            floor = max(chunk_speakers)
            if hints.max_speakers is not None:
                floor = min(floor, hints.max_speakers)
            if floor > (hints.min_speakers or 1):
                hints = dataclasses.replace(hints, min_speakers=floor)
        labels, cluster_info = cluster(feats[clean], config.method, hints, threshold=threshold,
                                       max_speakers_default=config.max_speakers,
                                       pruning=config.pruning, seed=config.seed,
                                       max_keep=config.pruning_max_keep)
        if config.merge_threshold is not None and floor is not None and hints.num_speakers is None:
            labels, merged = _merge_clusters(feats[clean], labels, config.merge_threshold,
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
        timings["cluster_s"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        frame_labels, second = self.resegment(feats, labels, windows, speech, duration, overlap)
        segments = frames_to_segments(frame_labels, config.frame_s)
        if second is not None:
            segments = sorted(segments + frames_to_segments(second, config.frame_s))
            info["overlap_seconds"] = round(float((second >= 0).sum() * config.frame_s), 3)
        timings["resegment_s"] = time.perf_counter() - t3

        # clusters that survived re-segmentation, numbered by first appearance
        order: list[int] = []
        for _, _, c in segments:
            if c not in order:
                order.append(c)
        t4 = time.perf_counter()
        runtime_centroids = np.stack([l2_normalise(raw[labels == c].mean(axis=0, keepdims=True))[0]
                                      for c in order]) if order else np.zeros((0, raw.shape[1]))
        names = name_clusters(self.artifact, runtime_centroids, gallery, candidates) if order else []
        timings["naming_s"] = time.perf_counter() - t4
        by_cluster = dict(zip(order, names))
        out_segments = [Segment(s, e, by_cluster[c].label, by_cluster[c].speaker_id, by_cluster[c].score)
                        for s, e, c in segments]
        speakers = []
        for c in order:
            name = by_cluster[c]
            mine = [seg for seg in out_segments if seg.label == name.label]
            speakers.append(SpeakerSummary(name.label, name.speaker_id, name.score,
                                           sum(seg.duration for seg in mine), len(mine), c))
        info["naming"] = [{"label": n.label, "speaker_id": n.speaker_id, "score": n.score,
                           "threshold": n.threshold, "path": n.path} for n in names]
        timings["total_s"] = time.perf_counter() - t0
        timings.update({k: round(v, 4) for k, v in timings.items()})
        return DiarizationResult(out_segments, speakers, duration, info)

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

    def _segmentation_frames(self, wav, duration) -> tuple:
        """Overlap probability and speech mask from the segmentation model, on our frame grid,
        and the number of local speakers in each of its chunks (None if not available)."""
        frame = self.config.frame_s
        n_frames = int(np.ceil(duration / frame))
        centres = (np.arange(n_frames) + 0.5) * frame
        if hasattr(self.overlap_detector, "analyse"):
            out = self.overlap_detector.analyse(wav, step_s=self.config.segmentation_step_s,
                                                min_active_s=self.config.local_speaker_min_s)
            times, speech_prob, overlap_prob = out["times"], out["speech"], out["overlap"]
            chunk_speakers, changes = out["chunk_speakers"], out.get("changes")
        else:
            chunk_speakers = changes = None
            times, speech_prob, overlap_prob = self.overlap_detector.probabilities(
                wav, step_s=self.config.segmentation_step_s)
        return (np.interp(centres, times, overlap_prob),
                np.interp(centres, times, speech_prob), chunk_speakers, changes)

    def _speech_mask(self, prob: np.ndarray, silero: np.ndarray) -> np.ndarray:
        """Speech frames from the segmentation model's speech probability (see the config)."""
        config = self.config
        mask = prob >= config.seg_speech_threshold
        if config.seg_confirm_threshold is not None:
            mask &= (prob >= config.seg_confirm_threshold) | silero
        if config.seg_min_peak is not None:
            for a, b, on in _runs(mask.astype(int)):
                if on and prob[a:b].max() < config.seg_min_peak:
                    mask[a:b] = False
        pad = int(round(config.seg_pad_s / config.frame_s))
        if pad > 0 and mask.any():
            from scipy.ndimage import binary_dilation
            mask = binary_dilation(mask, structure=np.ones(2 * pad + 1, dtype=bool))
        if config.speech_source == "union":
            mask |= silero
        return mask

    def resegment(self, feats: np.ndarray, labels: np.ndarray, windows, speech, duration,
                  overlap: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-frame cluster index (-1 = no speech): each frame takes the cluster whose
        centroid the windows covering it match best (mean cosine), median-smoothed.
        With overlap probabilities, overlapped speech frames also get the next-best
        cluster (the second array; -1 elsewhere), as in overlap-aware resegmentation."""
        config = self.config
        frame = config.frame_s
        n_frames = int(np.ceil(duration / frame))
        k = int(labels.max()) + 1
        centroids = l2_normalise(np.stack([feats[labels == c].mean(axis=0) for c in range(k)]))
        window_scores = feats @ centroids.T  # (windows, k)
        total = np.zeros((n_frames, k))
        count = np.zeros(n_frames)
        for (s, e), scores in zip(windows, window_scores):
            a, b = int(round(s / frame)), min(n_frames, int(round(e / frame)))
            total[a:b] += scores
            count[a:b] += 1
        speech_mask = np.zeros(n_frames, dtype=bool)
        for s, e in speech:
            speech_mask[int(round(s / frame)):min(n_frames, int(round(e / frame)))] = True
        covered = count > 0
        scores = np.divide(total, count[:, None], out=np.zeros_like(total), where=covered[:, None])
        # speech frames without a window take the scores of the nearest covered frame
        covered_idx = np.flatnonzero(covered)
        missing = np.flatnonzero(speech_mask & ~covered)
        if len(missing) and len(covered_idx):
            pos = np.clip(np.searchsorted(covered_idx, missing), 0, len(covered_idx) - 1)
            prev = covered_idx[np.maximum(pos - 1, 0)]
            nxt = covered_idx[pos]
            nearest = np.where(np.abs(prev - missing) <= np.abs(nxt - missing), prev, nxt)
            scores[missing] = scores[nearest]
        if k > 1 and config.median_frames > 1:
            scores = median_filter(scores, size=(config.median_frames | 1, 1), mode="nearest")
        frame_labels = np.where(speech_mask, np.argmax(scores, axis=1), -1)
        if k > 1 and config.min_segment_s > 0:
            frame_labels = _absorb_short_runs(frame_labels, int(round(config.min_segment_s / frame)))
        if config.fill_gap_s > 0:
            frame_labels = _fill_gaps(frame_labels, int(round(config.fill_gap_s / frame)))
        if config.output_pad_s > 0:
            frame_labels = _pad_edges(frame_labels, int(round(config.output_pad_s / frame)))
        second = None
        if overlap is not None and k > 1:
            ranked = np.argsort(-scores, axis=1)
            alternative = np.where(ranked[:, 0] == frame_labels, ranked[:, 1], ranked[:, 0])
            on = speech_mask & (overlap[:n_frames] >= config.overlap_threshold)
            second = np.where(on, alternative, -1)
            if config.min_segment_s > 0:
                min_frames = int(round(config.min_segment_s / frame))
                second = np.where(_mask([(a * frame, b * frame) for a, b, c in _runs(second)
                                         if c >= 0 and b - a >= min_frames], n_frames, frame),
                                  second, -1)
        return frame_labels, second


def _merge_clusters(feats: np.ndarray, labels: np.ndarray, threshold: float, low: int,
                    relative: float | None = None):
    """Merge the two clusters with the most similar centroids while their cosine > threshold
    (and, with ``relative``, > relative x the pair's mean window-to-own-centroid cosine)."""
    labels = labels.copy()
    merged = 0
    while True:
        ids = np.unique(labels)
        if len(ids) <= max(1, low):
            break
        centroids = l2_normalise(np.stack([feats[labels == c].mean(axis=0) for c in ids]))
        sim = centroids @ centroids.T
        np.fill_diagonal(sim, -np.inf)
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[i, j] <= threshold:
            break
        if relative is not None:
            within = [float((l2_normalise(feats[labels == ids[m]]) @ centroids[m]).mean()) for m in (i, j)]
            if sim[i, j] <= relative * float(np.mean(within)):
                break
        labels[labels == ids[j]] = ids[i]
        merged += 1
    if merged:
        mapping: dict[int, int] = {}
        labels = np.array([mapping.setdefault(int(x), len(mapping)) for x in labels], dtype=int)
    return labels, merged


def _split_speech(speech, changes, overlapped: np.ndarray, frame_s: float):
    """Speech segments cut at change times, with overlapped frames removed."""
    mask = _mask(speech, len(overlapped), frame_s) & ~overlapped
    for t in changes:
        i = int(round(t / frame_s))
        mask[max(0, i - 1):i + 1] = False
    return [(a * frame_s, b * frame_s) for a, b, on in _runs(mask.astype(int)) if on]


def _mask(spans, n_frames: int, frame_s: float) -> np.ndarray:
    mask = np.zeros(n_frames, dtype=bool)
    for s, e in spans:
        mask[int(round(s / frame_s)):min(n_frames, int(round(e / frame_s)))] = True
    return mask


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, label) runs of equal values (end exclusive)."""
    if not len(labels):
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(labels)]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, ends)]


def _pad_edges(labels: np.ndarray, pad: int) -> np.ndarray:
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


def _fill_gaps(labels: np.ndarray, max_frames: int) -> np.ndarray:
    """Non-speech runs (-1) shorter than max_frames between two runs of the same label."""
    labels = labels.copy()
    runs = _runs(labels)
    for i in range(1, len(runs) - 1):
        a, b, label = runs[i]
        if label < 0 and b - a < max_frames and runs[i - 1][2] >= 0 and runs[i - 1][2] == runs[i + 1][2]:
            labels[a:b] = runs[i - 1][2]
    return labels


def _absorb_short_runs(labels: np.ndarray, min_frames: int) -> np.ndarray:
    """Speech runs shorter than min_frames flanked by speech take the longer neighbour's label."""
    labels = labels.copy()
    runs = _runs(labels)
    for i, (a, b, label) in enumerate(runs):
        if label < 0 or b - a >= min_frames:
            continue
        left = runs[i - 1] if i > 0 and runs[i - 1][2] >= 0 else None
        right = runs[i + 1] if i + 1 < len(runs) and runs[i + 1][2] >= 0 else None
        if left is None and right is None:
            continue
        pick = max((r for r in (left, right) if r is not None), key=lambda r: r[1] - r[0])
        labels[a:b] = pick[2]
    return labels


def frames_to_segments(frame_labels: np.ndarray, frame_s: float) -> list[tuple[float, float, int]]:
    return [(a * frame_s, b * frame_s, label) for a, b, label in _runs(frame_labels) if label >= 0]
