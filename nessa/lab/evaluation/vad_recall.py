"""Missed speech and false alarms of the Silero VAD (``nessa eval-vad``, issue #12).

Reference speech: for each speech file, the segments the *baseline* detector (threshold 0.5,
no level normalisation: the service before the fix) finds on the clean 16 kHz audio. Each
condition changes the audio (telephone, quiet, 8 kHz, babble) and each detector variant is
scored by its **recall** of those reference frames (10 ms), the speech seconds it finds
(inside and outside the reference), the files where it finds none, and the fraction of
speakers whose speech over all their files falls under the 3 s enrollment minimum.

False alarms: speech found in audio with none (digital silence, seeded white and pink
noise at several levels, ``empty.flac``, and the gaps of the pyannote meeting clips that no
speaker turn covers, trimmed), under the same conditions except babble.

Speakers (and noise items) are split into dev / test halves with ``split_halves``; a
variant is chosen on dev and the test half is looked at once (docs/vad.md keeps the ledger).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import pathlib
from typing import Callable

import numpy as np

from nessa.lab.data import list_utterances
from nessa.lab.evaluation import shift_channels as channels
from nessa.lab.evaluation.shift_protocol import HALVES, rng_for, speech_commands_clips, split_halves
from speechcore.audio import load_audio_file
from speechcore.resampling import resample
from speechcore.vad import VAD_SAMPLE_RATE, LevelNormalisation, SileroVAD

SR = VAD_SAMPLE_RATE
FRAME_S = 0.01
MIN_ENROLL_SECONDS = 3.0  # the service's enrollment minimum (Settings.min_enroll_speech_seconds)
SC_SPEAKERS, SC_CLIPS = 40, 10
BABBLE_SNR_DB, BABBLE_TALKERS = 10.0, 3
NOISE_SECONDS, NOISE_SEEDS = 3.0, 2
NOISE_LEVELS_DBFS = (-70.0, -50.0, -30.0)
#: meeting gaps: no reference turn within GAP_TRIM_S of them, at least MIN_GAP_S long
GAP_TRIM_S, MIN_GAP_S = 0.25, 1.0
#: the detector before the fix; its clean-audio segments are the reference
BASELINE = {"threshold": 0.5, "level": None}
VARIANTS: dict[str, dict] = {
    "baseline": BASELINE,
    "thr-0.35": {"threshold": 0.35, "level": None},
    "thr-0.25": {"threshold": 0.25, "level": None},
    "norm-nofloor": {"threshold": 0.5, "level": LevelNormalisation(floor_dbfs=-90.0)},
    "norm": {"threshold": 0.5, "level": LevelNormalisation()},
    "norm-thr-0.35": {"threshold": 0.35, "level": LevelNormalisation()},
    "norm-thr-0.25": {"threshold": 0.25, "level": LevelNormalisation()},
    "shipped": {},  # SileroVAD() as the service constructs it
}


def _rms_to(wav: np.ndarray, dbfs: float) -> np.ndarray:
    rms = math.sqrt(channels.power(wav))
    return wav if rms <= 0 else (wav * (10.0 ** (dbfs / 20.0) / rms)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str
    description: str
    #: (16 kHz clean audio, rng) -> (audio the detector gets, its sample rate)
    apply: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, int]]
    speech_only: bool = False  # adds speech (babble): not run on the non-speech audio


def conditions(babble_talkers: list[np.ndarray]) -> list[Condition]:
    def babble(wav, rng):
        picks = rng.choice(len(babble_talkers), BABBLE_TALKERS, replace=False)
        noise = channels.babble([babble_talkers[i] for i in picks], len(wav), rng)
        return channels.add_at_snr(wav, noise, BABBLE_SNR_DB), SR

    return [
        Condition("clean", "16 kHz as recorded", lambda w, r: (w, SR)),
        Condition("resampled-8k", "resampled to 8 kHz, no band-pass or codec; the VAD gets 8 kHz",
                  lambda w, r: (resample(w, SR, 8000), 8000)),
        Condition("telephone", "8 kHz, 300-3400 Hz band-pass, G.711 mu-law; the VAD gets 8 kHz",
                  lambda w, r: (channels.telephone_narrowband(w).astype(np.float32), 8000)),
        Condition("quiet-45", "scaled to -45 dBFS RMS (whole file)", lambda w, r: (_rms_to(w, -45.0), SR)),
        Condition("quiet-55", "scaled to -55 dBFS RMS (whole file)", lambda w, r: (_rms_to(w, -55.0), SR)),
        Condition("telephone-quiet-45", "scaled to -45 dBFS RMS, then the telephone channel",
                  lambda w, r: (channels.telephone_narrowband(_rms_to(w, -45.0)).astype(np.float32), 8000)),
        Condition("babble-10", f"{BABBLE_TALKERS} test-other talkers added at {BABBLE_SNR_DB:.0f} dB SNR",
                  babble, speech_only=True),
    ]


# ----------------------------------------------------------------------------- audio sets
@dataclasses.dataclass(frozen=True)
class Clip:
    corpus: str
    speaker: str
    name: str
    load: Callable[[], np.ndarray]


def _file_clip(corpus: str, speaker: str, path) -> Clip:
    return Clip(corpus, speaker, str(path), lambda: load_audio_file(path))


def speech_clips(shared_dir, seed: int = 0) -> list[Clip]:
    """test-other (all), a seeded Speech Commands subset (SC_SPEAKERS speakers with at least
    SC_CLIPS clips, SC_CLIPS clips each) and every extra speaker (AudioMNIST digits included)."""
    shared = pathlib.Path(shared_dir)
    clips = [_file_clip("test-other", s, p) for s, p in list_utterances(shared / "librispeech" / "test-other")]
    by_speaker = {s: sorted(p for paths in words.values() for p in paths)
                  for s, words in speech_commands_clips(shared / "speech-commands").items()}
    eligible = sorted(s for s, paths in by_speaker.items() if len(paths) >= SC_CLIPS)
    rng = np.random.default_rng([seed, 12])
    for speaker in sorted(rng.choice(eligible, min(SC_SPEAKERS, len(eligible)), replace=False)):
        paths = by_speaker[speaker]
        for i in sorted(rng.choice(len(paths), SC_CLIPS, replace=False)):
            clips.append(_file_clip("speech-commands", speaker, paths[i]))
    clips += [_file_clip("extra-speakers", s, p) for s, p in list_utterances(shared / "extra-speakers")]
    return clips


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power spectrum: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def _synthetic(kind: str, level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    n = int(NOISE_SECONDS * SR)
    noise = rng.standard_normal(n) if kind == "white" else pink_noise(n, rng)
    return _rms_to(noise.astype(np.float32), level)


def meeting_gaps(folder) -> list[tuple[pathlib.Path, float, float]]:
    """(clip, start, end) of the stretches of each pyannote meeting clip (inside its scored
    region) that no reference speaker turn comes within GAP_TRIM_S of, >= MIN_GAP_S long."""
    folder = pathlib.Path(folder)
    turns, scored = collections.defaultdict(list), {}
    for rttm in sorted(folder.glob("*.rttm")):
        for line in rttm.read_text(encoding="utf-8").splitlines():
            f = line.split()
            if len(f) > 4 and f[0] == "SPEAKER":
                turns[f[1]].append((float(f[3]), float(f[3]) + float(f[4])))
    for uem in sorted(folder.glob("*.uem")):
        for line in uem.read_text(encoding="utf-8").splitlines():
            f = line.split()
            if len(f) == 4:
                scored[f[0]] = (float(f[2]), float(f[3]))
    gaps = []
    for uri, (begin, end) in sorted(scored.items()):
        clip = folder / f"{uri}.flac"
        if not clip.is_file():
            continue  # trñ00.flac is annotated as trn00: left out rather than guessed
        cursor = begin
        for start, stop in sorted(turns[uri]) + [(end + GAP_TRIM_S, end + GAP_TRIM_S)]:
            if start - GAP_TRIM_S - cursor >= MIN_GAP_S:
                gaps.append((clip, cursor, start - GAP_TRIM_S))
            cursor = max(cursor, stop + GAP_TRIM_S)
    return gaps


def noise_clips(shared_dir) -> list[Clip]:
    """Audio without speech; ``speaker`` is the unit the halves are drawn over."""
    clips = [Clip("silence", "silence", "silence", lambda: np.zeros(int(NOISE_SECONDS * SR), np.float32))]
    for kind in ("white", "pink"):
        for level in NOISE_LEVELS_DBFS:
            for seed in range(NOISE_SEEDS):
                name = f"{kind}{level:.0f}dB-s{seed}"
                clips.append(Clip(f"{kind}-noise", name, name, lambda k=kind, l=level, s=seed: _synthetic(k, l, s)))
    pyannote = pathlib.Path(shared_dir) / "conversations" / "pyannote-clips"
    if (pyannote / "empty.flac").is_file():
        clips.append(_file_clip("empty.flac", "empty", pyannote / "empty.flac"))
    for clip, start, end in meeting_gaps(pyannote):
        def load(path=clip, a=start, b=end):
            return load_audio_file(path)[int(a * SR):int(b * SR)]
        clips.append(Clip("meeting-gaps", clip.stem, f"{clip.stem}:{start:.2f}-{end:.2f}", load))
    return clips


def assign_halves(clips: list[Clip]) -> dict[tuple[str, str], str]:
    """(corpus, speaker) -> half, per corpus by ``split_halves``."""
    halves = {}
    for corpus in dict.fromkeys(c.corpus for c in clips):
        split = split_halves([c.speaker for c in clips if c.corpus == corpus], corpus)
        halves |= {(corpus, s): h for s, h in split.items()}
    return halves


def babble_talkers(shared_dir, count: int = 20) -> list[np.ndarray]:
    """Babble voices from train-clean-100 (speakers none of the measured corpora share)."""
    folder = pathlib.Path(shared_dir) / "librispeech" / "train-clean-100"
    return [load_audio_file(path) for path in sorted(folder.glob("*.flac"))[:count]]


# ----------------------------------------------------------------------------- measurement
def frame_mask(spans: list[tuple[int, int]], n_samples: int) -> np.ndarray:
    """10 ms frames (of a 16 kHz timeline) whose centre lies inside a (start, end) sample span."""
    step = int(FRAME_S * SR)
    centres = np.arange(math.ceil(n_samples / step)) * step + step // 2
    mask = np.zeros(len(centres), dtype=bool)
    for start, end in spans:
        mask |= (centres >= start) & (centres < end)
    return mask


def detectors(variants: dict[str, dict]) -> dict[str, SileroVAD]:
    return {name: SileroVAD(**kwargs) for name, kwargs in variants.items()}


def masks_by_variant(wav: np.ndarray, sample_rate: int, found_by: dict[str, SileroVAD],
                     n_samples: int) -> dict[str, np.ndarray]:
    """Each detector's speech frames; the model runs once per distinct front end."""
    wav16k = resample(wav, sample_rate, SR)
    probabilities, masks = {}, {}
    for name, vad in found_by.items():
        if vad.level not in probabilities:
            probabilities[vad.level] = vad.model_input_probabilities(wav16k)
        spans = vad.spans_from_probabilities(probabilities[vad.level], len(wav16k))
        masks[name] = frame_mask(spans, n_samples)
    return masks


def measure(clips: list[Clip], conds: list[Condition], variants: dict[str, dict], halves: dict,
            wanted: tuple[str, ...], seed: int = 0, is_speech: bool = True,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """One record per (clip, condition, variant) of the clips in the ``wanted`` halves:
    reference / found / hit frames (the reference: the baseline on the clean audio; for
    non-speech clips, none)."""
    found_by, reference = detectors(variants), SileroVAD(**BASELINE)
    records = []
    for clip in clips:
        half = halves[(clip.corpus, clip.speaker)]
        if half not in wanted:
            continue
        wav = np.asarray(clip.load(), dtype=np.float32)
        ref = masks_by_variant(wav, SR, {"ref": reference}, len(wav))["ref"] if is_speech else \
            np.zeros(math.ceil(len(wav) / (FRAME_S * SR)), dtype=bool)
        for cond in conds:
            if cond.speech_only and not is_speech:
                continue
            audio, rate = cond.apply(wav, rng_for(seed, clip.name, cond.name))
            for name, mask in masks_by_variant(audio, rate, found_by, len(wav)).items():
                records.append({"corpus": clip.corpus, "speaker": clip.speaker, "clip": clip.name,
                                "half": half, "condition": cond.name, "variant": name,
                                "seconds": len(wav) / SR, "ref": int(ref.sum()),
                                "found": int(mask.sum()), "hit": int((mask & ref).sum())})
        if progress:
            progress(clip.name)
    return records


def _groups(records: list[dict]) -> dict[tuple, list[dict]]:
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r["corpus"], r["condition"], r["variant"], r["half"])].append(r)
    return groups


def speech_rows(records: list[dict]) -> list[dict]:
    """Per (corpus, condition, variant, half): recall of the reference frames, seconds found
    (and outside the reference), files with none, speakers under the enrollment minimum."""
    clean_ref = collections.defaultdict(float)
    for r in records:
        if r["condition"] == "clean" and r["variant"] == "baseline":
            clean_ref[(r["corpus"], r["speaker"])] += r["ref"] * FRAME_S
    rows = []
    for (corpus, condition, variant, half), group in _groups(records).items():
        ref, found, hit = (sum(r[k] for r in group) for k in ("ref", "found", "hit"))
        per_speaker = collections.defaultdict(float)
        for r in group:
            per_speaker[r["speaker"]] += r["found"] * FRAME_S
        under = [s for s, seconds in per_speaker.items() if seconds < MIN_ENROLL_SECONDS]
        rows.append({"corpus": corpus, "condition": condition, "variant": variant, "half": half,
                     "files": len(group), "ref_s": ref * FRAME_S, "found_s": found * FRAME_S,
                     "extra_s": (found - hit) * FRAME_S, "recall": hit / ref if ref else float("nan"),
                     "files_without": sum(1 for r in group if r["ref"] and not r["found"]),
                     "speakers": len(per_speaker), "under_min": len(under),
                     "newly_under_min": sum(1 for s in under if clean_ref[(corpus, s)] >= MIN_ENROLL_SECONDS)})
    return rows


def noise_rows(records: list[dict]) -> list[dict]:
    """Per (corpus, condition, variant, half): seconds of 'speech' found in audio with none."""
    return [{"corpus": corpus, "condition": condition, "variant": variant, "half": half,
             "items": len(group), "audio_s": sum(r["seconds"] for r in group),
             "found_s": sum(r["found"] for r in group) * FRAME_S,
             "items_with_speech": sum(1 for r in group if r["found"])}
            for (corpus, condition, variant, half), group in _groups(records).items()]


def _table(rows: list[dict], variants: list[str], cell: Callable[[dict], str], lead: str) -> list[str]:
    keyed = {(r["corpus"], r["condition"], r["variant"]): r for r in rows}
    lines = [f"| corpus | condition | {lead} | " + " | ".join(variants) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in variants) + " |"]
    for corpus, condition in dict.fromkeys((r["corpus"], r["condition"]) for r in rows):
        first = keyed[(corpus, condition, variants[0])]
        lead_value = f"{first['ref_s']:.1f}" if "ref_s" in first else f"{first['audio_s']:.1f}"
        lines.append(f"| {corpus} | {condition} | {lead_value} | "
                     + " | ".join(cell(keyed[(corpus, condition, v)]) for v in variants) + " |")
    return lines


def markdown(speech: list[dict], noise: list[dict], variants: list[str]) -> str:
    """Per half: recall, enrollment and false-alarm tables (one column per variant)."""
    out = []
    for half in HALVES:
        s_rows, n_rows = [r for r in speech if r["half"] == half], [r for r in noise if r["half"] == half]
        if not s_rows and not n_rows:
            continue
        out += [f"### {half} half", "", "Recall of the reference speech frames, % (speech seconds found):", ""]
        out += _table(s_rows, variants, lambda r: f"{100 * r['recall']:.1f} ({r['found_s']:.1f})", "ref s")
        out += ["", f"Speakers under {MIN_ENROLL_SECONDS:.0f} s of speech (of whom newly, i.e. "
                    f"not under on clean audio) / speakers; files with no speech found:", ""]
        out += _table(s_rows, variants, lambda r: f"{r['under_min']} ({r['newly_under_min']}) / "
                                                  f"{r['speakers']}; {r['files_without']}", "ref s")
        out += ["", "False alarms: speech seconds found in audio without speech (items with any / items):", ""]
        out += _table(n_rows, variants, lambda r: f"{r['found_s']:.2f} ({r['items_with_speech']}/{r['items']})",
                      "audio s")
        out.append("")
    return "\n".join(out)
