"""Simulated conversations from ``<speaker>/<utterance>`` folders (e.g. LibriSpeech test-other).

Turns alternate between randomly chosen speakers (never the same speaker twice in a row);
each turn is an excerpt of an utterance not used before in this conversation, levelled to
the same loudness; turns are separated by pauses (exponential, ``pause_mean_s``) or, with
probability ``overlap_ratio``, start before the previous turn ends. Optional white noise
at ``snr_db``. The reference RTTM holds each turn's *speech*: Silero VAD (default
threshold 0.5) on the excerpt by default (``vad="silero"``), another VAD object when one is
given, or the whole excerpt, pauses included, with ``vad=None`` (a harder, pessimistic
reference: every pause inside a turn counts as missed speech). Everything is drawn from one seeded
generator, so the same arguments give the same audio and RTTM. The conversation records
which utterances it used, so each speaker can be enrolled from other ones.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from diarizer.result import Segment, rttm_lines

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")
TARGET_RMS_DBFS = -25.0


def speaker_utterances(source_dir) -> dict[str, list[pathlib.Path]]:
    """speaker folder name -> sorted audio files inside it."""
    source_dir = pathlib.Path(source_dir)
    out = {}
    for folder in sorted(p for p in source_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if files:
            out[folder.name] = files
    if not out:
        raise ValueError(f"{source_dir} has no <speaker>/<utterance> audio folders")
    return out


@dataclasses.dataclass
class Conversation:
    wav: np.ndarray
    reference: list[Segment]
    speakers: list[str]
    #: speaker -> utterance paths (relative to the source folder) used in the mix
    utterances: dict[str, list[str]]
    turns: list[dict]
    settings: dict
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.wav) / self.sample_rate

    def to_rttm(self, uri: str) -> str:
        return rttm_lines(self.reference, uri)

    def unused_utterances(self, source_dir, speaker: str) -> list[pathlib.Path]:
        """The speaker's utterances that this conversation did not use (for enrollment)."""
        used = set(self.utterances.get(speaker, []))
        root = pathlib.Path(source_dir)
        return [p for p in speaker_utterances(root)[speaker]
                if p.relative_to(root).as_posix() not in used]

    def write(self, out_dir, uri: str) -> dict[str, pathlib.Path]:
        """Write ``<uri>.flac``, ``<uri>.rttm`` and ``<uri>.json`` (turns, utterances, settings)."""
        import soundfile as sf

        out_dir = pathlib.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"audio": out_dir / f"{uri}.flac", "rttm": out_dir / f"{uri}.rttm",
                 "json": out_dir / f"{uri}.json"}
        sf.write(str(paths["audio"]), np.clip(self.wav, -1.0, 1.0), self.sample_rate, subtype="PCM_16")
        paths["rttm"].write_text(self.to_rttm(uri), encoding="utf-8")
        paths["json"].write_text(json.dumps({"uri": uri, "speakers": self.speakers,
                                             "utterances": self.utterances, "turns": self.turns,
                                             "settings": self.settings}, indent=2), encoding="utf-8")
        return paths


def _level(wav: np.ndarray, dbfs: float = TARGET_RMS_DBFS) -> np.ndarray:
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    return wav if rms == 0 else (wav * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def simulate_conversation(source_dir, *, num_speakers: int = 2, num_turns: int = 10,
                          min_turn_s: float = 2.0, max_turn_s: float = 6.0,
                          pause_mean_s: float = 0.4, overlap_ratio: float = 0.1,
                          max_overlap_s: float = 1.0, snr_db: float | None = None,
                          speakers: list[str] | None = None, seed: int = 0, vad="silero",
                          lead_in_s: float = 0.5) -> Conversation:
    """One conversation (see the module docstring). ``speakers`` fixes who takes part."""
    from speechcore.audio import load_audio_file

    if num_speakers < 1 or num_turns < 1:
        raise ValueError("num_speakers and num_turns must be at least 1")
    if not 0 <= overlap_ratio <= 1:
        raise ValueError("overlap_ratio must be within [0, 1]")
    if not 0 < min_turn_s <= max_turn_s:
        raise ValueError("need 0 < min_turn_s <= max_turn_s")
    if isinstance(vad, str):
        if vad != "silero":
            raise ValueError(f"vad must be a VAD object, None or 'silero', got {vad!r}")
        from speechcore.vad import SileroVAD
        vad = SileroVAD()
    root = pathlib.Path(source_dir)
    available = speaker_utterances(root)
    rng = np.random.default_rng(seed)
    if speakers is None:
        if num_speakers > len(available):
            raise ValueError(f"asked for {num_speakers} speakers, {root} has {len(available)}")
        speakers = sorted(rng.choice(sorted(available), size=num_speakers, replace=False).tolist())
    else:
        speakers = list(speakers)
        num_speakers = len(speakers)
    queues = {s: [available[s][i] for i in rng.permutation(len(available[s]))] for s in speakers}
    order = _turn_order(speakers, {s: len(q) for s, q in queues.items()}, num_turns, rng)
    pieces, turns, used = [], [], {s: [] for s in speakers}
    cursor = lead_in_s
    for index, speaker in enumerate(order):
        if not queues[speaker]:
            raise ValueError(f"speaker {speaker} has too few utterances for {num_turns} turns")
        path = queues[speaker].pop(0)
        wav = load_audio_file(path)
        length = min(len(wav) / SAMPLE_RATE, float(rng.uniform(min_turn_s, max_turn_s)))
        offset = float(rng.uniform(0, len(wav) / SAMPLE_RATE - length))
        excerpt = _level(wav[int(offset * SAMPLE_RATE):int((offset + length) * SAMPLE_RATE)])
        if index > 0:
            if rng.random() < overlap_ratio:
                prev_len = turns[-1]["end"] - turns[-1]["start"]
                overlap = float(rng.uniform(0.2, max_overlap_s))
                cursor = max(turns[-1]["start"] + 0.1, cursor - min(overlap, 0.5 * prev_len, 0.5 * length))
            else:
                cursor += float(rng.exponential(pause_mean_s))
        start = round(cursor, 3)
        speech = (vad.segments(excerpt) if vad is not None else [(0.0, len(excerpt) / SAMPLE_RATE)])
        turns.append({"speaker": speaker, "utterance": path.relative_to(root).as_posix(),
                      "source_offset": round(offset, 3), "start": start,
                      "end": round(start + len(excerpt) / SAMPLE_RATE, 3),
                      "speech": [(round(start + s, 3), round(start + e, 3)) for s, e in speech]})
        used[speaker].append(path.relative_to(root).as_posix())
        pieces.append((int(round(start * SAMPLE_RATE)), excerpt))
        cursor = start + len(excerpt) / SAMPLE_RATE
    mix = _mix(pieces, int(lead_in_s * SAMPLE_RATE), snr_db, rng)
    reference = sorted((Segment(s, e, t["speaker"]) for t in turns for s, e in t["speech"]),
                       key=lambda seg: (seg.start, seg.label))
    settings = {"num_speakers": num_speakers, "num_turns": num_turns, "min_turn_s": min_turn_s,
                "max_turn_s": max_turn_s, "pause_mean_s": pause_mean_s,
                "overlap_ratio": overlap_ratio, "max_overlap_s": max_overlap_s, "snr_db": snr_db,
                "seed": seed, "vad_reference": vad is not None}
    return Conversation(mix.astype(np.float32), reference, speakers, used, turns, settings)


def _turn_order(speakers: list[str], utterances_left: dict[str, int], num_turns: int, rng) -> list[str]:
    """Who speaks each turn: every speaker once before anyone twice, never the same speaker
    twice in a row (unless alone), and no speaker more often than they have utterances."""
    order, previous = [], None
    left = dict(utterances_left)
    for turn in range(num_turns):
        pool = [s for s in speakers if (s != previous or len(speakers) == 1) and left[s] > 0]
        if turn < len(speakers):
            pool = [s for s in speakers if s not in order] or pool
        if not pool:
            raise ValueError(f"{len(speakers)} speakers do not have enough utterances for "
                             f"{num_turns} alternating turns (each utterance is used once)")
        previous = pool[int(rng.integers(len(pool)))]
        left[previous] -= 1
        order.append(previous)
    return order


def _mix(pieces: list[tuple[int, np.ndarray]], tail: int, snr_db: float | None, rng) -> np.ndarray:
    """The (onset sample, excerpt) pieces summed, ``tail`` samples of silence after the last,
    white noise at ``snr_db`` to the speech's power, and scaled down to peak at 0.99 at most."""
    total = max(o + len(p) for o, p in pieces) + tail
    mix = np.zeros(total, dtype=np.float64)
    for onset, excerpt in pieces:
        mix[onset:onset + len(excerpt)] += excerpt
    if snr_db is not None:
        speech_power = np.mean(np.concatenate([p for _, p in pieces]).astype(np.float64) ** 2)
        noise = rng.standard_normal(total) * np.sqrt(speech_power / 10 ** (snr_db / 10))
        mix += noise
    peak = np.max(np.abs(mix))
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix
