"""Diarization evaluation: DER and JER (pyannote.metrics), speaker-count accuracy, RTF.

* ``score_file``: one reference vs one hypothesis, at collar 0 and 0.25 s, overlapped
  speech scored, restricted to the UEM when given.
* ``evaluate_folder``: a folder of audio + reference RTTM with pyannote-style ``.lst``
  (uris), ``.rttm`` and ``.uem`` files, e.g. ``conversations/pyannote-clips``; or a folder
  of ``<uri>.<audio>`` + ``<uri>.rttm`` pairs (e.g. simulated conversations).
* ``evaluate_simulated``: simulates conversations from ``<speaker>/<utterance>`` folders
  and scores them, optionally with naming against profiles enrolled from other utterances.

The command line is ``python -m bench.diarization --help`` (it builds the models; this
module only receives them).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
import unicodedata
import warnings

import numpy as np

from diarizer.result import Segment, parse_rttm, parse_uem

COLLARS = (0.0, 0.25)
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")


def _annotation(segments, uri: str):
    from pyannote.core import Annotation, Segment as PSegment

    annotation = Annotation(uri=uri)
    for i, seg in enumerate(segments):
        start, end, label = ((seg["start"], seg["end"], seg["label"]) if isinstance(seg, dict)
                             else (seg.start, seg.end, seg.label))
        if end > start:
            annotation[PSegment(start, end), i] = label
    return annotation


def _timeline(regions, uri: str):
    from pyannote.core import Segment as PSegment, Timeline

    return Timeline([PSegment(s, e) for s, e in regions], uri=uri)


class Scorer:
    """Accumulates DER/JER over files (pyannote's corpus-level totals) at several collars."""

    def __init__(self, collars=COLLARS):
        from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

        self.collars = tuple(collars)
        self.der = {c: DiarizationErrorRate(collar=c, skip_overlap=False) for c in self.collars}
        self.jer = {c: JaccardErrorRate(collar=c, skip_overlap=False) for c in self.collars}

    def add(self, uri: str, reference, hypothesis, uem=None) -> dict:
        ref, hyp = _annotation(reference, uri), _annotation(hypothesis, uri)
        uem_timeline = _timeline(uem, uri) if uem else None
        out = {}
        for c in self.collars:
            with warnings.catch_warnings():
                # without a UEM pyannote scores the union of both extents, and says so
                warnings.filterwarnings("ignore", message=".*uem.*approximated")
                der_detail = self.der[c](ref, hyp, uem=uem_timeline, detailed=True)
                jer = self.jer[c](ref, hyp, uem=uem_timeline)
            total = der_detail["total"] or 1.0
            out[f"der@{c}"] = round(float(der_detail["diarization error rate"]), 4)
            out[f"jer@{c}"] = round(float(jer), 4)
            if c == 0.0:
                out["miss"] = round(der_detail["missed detection"] / total, 4)
                out["false_alarm"] = round(der_detail["false alarm"] / total, 4)
                out["confusion"] = round(der_detail["confusion"] / total, 4)
        return out

    def totals(self) -> dict:
        out = {}
        for c in self.collars:
            out[f"der@{c}"] = round(float(abs(self.der[c])), 4)
            out[f"jer@{c}"] = round(float(abs(self.jer[c])), 4)
        return out


def score_file(reference, hypothesis, uem=None, uri: str = "audio", collars=COLLARS) -> dict:
    return Scorer(collars).add(uri, reference, hypothesis, uem)


def _fold(text: str) -> str:
    """ASCII fold (trñ00 -> trn00): the pyannote-clips RTTM/UEM spell one uri without the tilde."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _lookup(table: dict, uri: str):
    if uri in table:
        return table[uri]
    folded = {_fold(k): v for k, v in table.items()}
    return folded.get(_fold(uri))


@dataclasses.dataclass
class FolderItem:
    uri: str
    audio: pathlib.Path
    reference: list[Segment]
    uem: list[tuple[float, float]] | None
    subset: str = ""


def folder_items(folder: str | pathlib.Path, subsets: list[str] | None = None) -> list[FolderItem]:
    """The evaluation items of a folder.

    With ``*.lst`` files (pyannote protocol layout ``<prefix>.<subset>.lst`` + ``.rttm`` +
    ``.uem``): the uris of the requested subsets (all when None); uris whose audio exists
    but that have no reference turns are kept with an empty reference (then every
    hypothesised second is a false alarm). Without ``.lst`` files: every audio file that
    has a ``<stem>.rttm`` beside it.
    """
    folder = pathlib.Path(folder)
    items = []
    lists = sorted(folder.glob("*.lst"))
    if lists:
        for lst in lists:
            subset = lst.stem.split(".")[-1]
            if subsets and subset not in subsets:
                continue
            rttm, uem = lst.parent / f"{lst.stem}.rttm", lst.parent / f"{lst.stem}.uem"
            refs = parse_rttm(rttm) if rttm.exists() else {}
            uems = parse_uem(uem) if uem.exists() else {}
            for uri in lst.read_text(encoding="utf-8").split():
                audio = next((folder / f"{uri}{suffix}" for suffix in AUDIO_SUFFIXES
                              if (folder / f"{uri}{suffix}").exists()), None)
                if audio is None:
                    raise FileNotFoundError(f"{lst.name} lists {uri!r} but no audio file {uri}.* exists")
                items.append(FolderItem(uri, audio, _lookup(refs, uri) or [], _lookup(uems, uri), subset))
        return items
    for audio in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        rttm = audio.with_suffix(".rttm")
        if rttm.exists():
            refs = parse_rttm(rttm)
            reference = _lookup(refs, audio.stem) or (next(iter(refs.values())) if len(refs) == 1 else [])
            uem_path = audio.with_suffix(".uem")
            uem = _lookup(parse_uem(uem_path), audio.stem) if uem_path.exists() else None
            items.append(FolderItem(audio.stem, audio, reference, uem))
    return items


def count_speakers(segments) -> int:
    return len({(s["label"] if isinstance(s, dict) else s.label) for s in segments})


def evaluate_items(diarizer, items: list[FolderItem], *, plot_dir=None, hints=None,
                   hypothesis_dir=None, verbose: bool = False) -> dict:
    """Diarize each item and score it; returns per-file rows, totals, count accuracy and RTF."""
    from speechcore.audio import load_audio_file

    scorer = Scorer()
    rows, audio_seconds, compute_seconds = [], 0.0, 0.0
    for item in items:
        wav = load_audio_file(item.audio)
        true_count = count_speakers(item.reference)
        kwargs = {"num_speakers": true_count} if hints == "oracle" and true_count else {}
        start = time.perf_counter()
        result = diarizer.diarize(wav, **kwargs)
        elapsed = time.perf_counter() - start
        audio_seconds += len(wav) / 16000
        compute_seconds += elapsed
        row = {"uri": item.uri, "subset": item.subset, "ref_speakers": true_count,
               "hyp_speakers": result.num_speakers,
               "threshold_count": result.info.get("clustering", {}).get("threshold_count"),
               "eigengap_count": result.info.get("clustering", {}).get("eigengap_count"),
               "rtf": round(elapsed / max(len(wav) / 16000, 1e-9), 4)}
        row.update(scorer.add(item.uri, item.reference, result.segments, item.uem))
        rows.append(row)
        if verbose:
            print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
        if hypothesis_dir:
            pathlib.Path(hypothesis_dir).mkdir(parents=True, exist_ok=True)
            result.write_rttm(pathlib.Path(hypothesis_dir) / f"{item.uri}.rttm", uri=item.uri)
        if plot_dir:
            plot_timeline(item.reference, result.segments, pathlib.Path(plot_dir) / f"{item.uri}.png",
                          title=f"{item.uri}  DER {row['der@0.0']:.1%}")
    scored = [r for r in rows if r["ref_speakers"]]
    return {"files": rows, "totals": scorer.totals(),
            "count_accuracy": _mean([r["hyp_speakers"] == r["ref_speakers"] for r in scored]),
            "threshold_count_accuracy": _mean([r["threshold_count"] == r["ref_speakers"] for r in scored]),
            "rtf": round(compute_seconds / max(audio_seconds, 1e-9), 4),
            "audio_seconds": round(audio_seconds, 2)}


def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None


def evaluate_folder(diarizer, folder, subsets=None, **kwargs) -> dict:
    return evaluate_items(diarizer, folder_items(folder, subsets), **kwargs)


def plot_timeline(reference, hypothesis, path, title: str = "") -> pathlib.Path:
    """PNG with the reference turns above the hypothesis turns (one row per label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, segments in (("ref", reference), ("hyp", hypothesis)):
        labels = sorted({s.label for s in segments})
        rows.extend((name, label, [s for s in segments if s.label == label]) for label in labels)
    fig, ax = plt.subplots(figsize=(12, 0.4 * max(len(rows), 2) + 1))
    colours = plt.get_cmap("tab10")
    for y, (name, label, segments) in enumerate(rows):
        colour = colours(0) if name == "ref" else colours(1)
        ax.broken_barh([(s.start, s.end - s.start) for s in segments], (y - 0.4, 0.8), color=colour)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{name}: {label}" for name, label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_simulated(diarizer, source_dir, *, conversations: int = 5, num_speakers=(2, 3),
                       turns: int = 12, seed: int = 0, out_dir=None, enroll_embedder=None,
                       strangers: int = 0, verbose: bool = False, **simulate_kwargs) -> dict:
    """Simulate conversations from source_dir and score them.

    With ``enroll_embedder`` (CAM++), each simulated speaker except ``strangers`` of them is
    enrolled from utterances the simulator did not use, and naming accuracy is reported
    (a segment-duration-weighted share of reference speech labelled with the right person,
    and how many strangers stayed unknown).
    """
    from diarizer.simulate import simulate_conversation

    scorer = Scorer()
    rows, audio_seconds, compute_seconds = [], 0.0, 0.0
    rng = np.random.default_rng(seed)
    for index in range(conversations):
        n = int(rng.choice(num_speakers)) if not isinstance(num_speakers, int) else num_speakers
        conversation = simulate_conversation(source_dir, num_speakers=n, num_turns=turns,
                                             seed=seed * 1000 + index, vad=diarizer.vad,
                                             **simulate_kwargs)
        uri = f"sim{index:03d}"
        if out_dir:
            conversation.write(out_dir, uri)
        gallery, enrolled = None, []
        if enroll_embedder is not None:
            enrolled = conversation.speakers[strangers:]
            gallery = enroll_gallery(conversation, enrolled, enroll_embedder, diarizer.embedder,
                                     source_dir)
        start = time.perf_counter()
        result = diarizer.diarize(conversation.wav, gallery=gallery)
        elapsed = time.perf_counter() - start
        audio_seconds += conversation.duration
        compute_seconds += elapsed
        row = {"uri": uri, "ref_speakers": n, "hyp_speakers": result.num_speakers,
               "threshold_count": result.info.get("clustering", {}).get("threshold_count"),
               "eigengap_count": result.info.get("clustering", {}).get("eigengap_count"),
               "rtf": round(elapsed / conversation.duration, 4)}
        row.update(scorer.add(uri, conversation.reference, result.segments))
        if gallery is not None:
            row.update(naming_accuracy(conversation.reference, result.segments, enrolled))
        rows.append(row)
        if verbose:
            print(json.dumps(row), file=sys.stderr)
    return {"files": rows, "totals": scorer.totals(),
            "count_accuracy": _mean(r["hyp_speakers"] == r["ref_speakers"] for r in rows),
            "threshold_count_accuracy": _mean(r["threshold_count"] == r["ref_speakers"] for r in rows),
            "naming_accuracy": _mean(r["naming_accuracy"] for r in rows if "naming_accuracy" in r),
            "rtf": round(compute_seconds / max(audio_seconds, 1e-9), 4),
            "audio_seconds": round(audio_seconds, 2)}


def enroll_gallery(conversation, speakers, enroll_embedder, runtime_embedder, source_dir,
                   max_utterances: int = 3):
    """A Gallery for ``speakers`` from their utterances the conversation did not use."""
    from diarizer.naming import Gallery
    from speechcore.audio import load_audio_file
    from speechcore.embedder import l2_normalise

    enroll, runtime = [], []
    for speaker in speakers:
        paths = conversation.unused_utterances(source_dir, speaker)[:max_utterances]
        if not paths:
            raise ValueError(f"speaker {speaker} has no unused utterance to enroll from")
        wavs = [load_audio_file(p) for p in paths]
        enroll.append(l2_normalise(enroll_embedder.embed(wavs).mean(axis=0, keepdims=True))[0])
        runtime.append(l2_normalise(runtime_embedder.embed(wavs).mean(axis=0, keepdims=True))[0])
    return Gallery(list(speakers), np.stack(enroll), np.stack(runtime))


def naming_accuracy(reference, hypothesis, enrolled) -> dict:
    """Share of reference speech (frames of 10 ms) whose hypothesis label is correct:
    the person for enrolled speakers, any ``unknown-*`` for strangers."""
    frame = 0.01
    end = max([s.end for s in reference] + [s.end for s in hypothesis] + [0.0])
    n = int(np.ceil(end / frame)) + 1
    hyp = np.full(n, None, dtype=object)
    for s in hypothesis:
        hyp[int(round(s.start / frame)):int(round(s.end / frame))] = s.label
    correct = total = 0
    enrolled = {str(x) for x in enrolled}
    for s in reference:
        labels = hyp[int(round(s.start / frame)):int(round(s.end / frame))]
        total += len(labels)
        if s.label in enrolled:
            correct += int(np.sum(labels == s.label))
        else:
            correct += int(sum(1 for x in labels if isinstance(x, str) and x.startswith("unknown-")))
    return {"naming_accuracy": round(correct / max(total, 1), 4)}
