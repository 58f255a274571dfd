"""The domain-shift conditions (``nessa eval-shift``): which audio is enrolled, which is
tested, through which channel, and which trials are scored, built from the shared speech
folder (``../shared/data``: LibriSpeech test-other and train-clean-100, Speech Commands,
the extra speakers), deterministically from a seed.

Every speaker of a corpus falls in the *dev* or the *test* half (``split_halves``: the
speakers sorted by a hash of ``<corpus>/<speaker>``, the first half dev); a trial belongs
to a half when its profile's and its test's speakers both do (trials across halves are not
built). Method choices may look at dev trials only; test trials are for reporting.

Conditions (see ``docs/calibration.md`` for the figures):

* ``test-other`` clean (reference), through a telephone channel, in babble at 10 / 5 dB SNR,
  reverberant: profiles = 3 utterances drawn per speaker (``DRAWS`` seeded draws, as
  ``nessa eval``'s profile protocol), every utterance not drawn tested against every
  profile of its half. Telephone and reverberation are applied to both sides (the gallery's
  channel / room) and, as a second row, to the test side only (profiles enrolled clean);
  babble to the test side only (enrolled in quiet, verified in a crowd).
* ``speech-commands``: speakers with >= 6 distinct words; profile = 3 distinct words (one
  1-s clip each) concatenated; test = 3 other words of the speaker concatenated (a second
  test from 3 more words where the speaker has >= 9); every test against every profile.
* ``same-words``: the same genuine tests; impostors = up to ``SAME_WORD_IMPOSTORS`` other
  speakers of the half who have all 3 profile words, saying exactly those words in the same
  order (their own clips concatenated), each scored against that profile only.
* ``extra-speakers``: speakers with >= 2 files enroll their first file (sorted by name) and
  are tested on the others; speakers with one file are impostor tests only.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import pathlib

import numpy as np

from nessa.lab.data import AUDIO_EXTENSIONS, list_utterances
from nessa.lab.evaluation.protocols import profile_draws

DRAWS, N_ENROLL = 5, 3
BABBLE_TALKERS = (3, 5)
BABBLE_SNRS_DB = (10.0, 5.0)
RT60_SECONDS, DRR_DB = 0.5, 0.0
SC_WORDS_PER_SEGMENT, SC_MIN_WORDS = 3, 6
SAME_WORD_IMPOSTORS = 5
HALVES = ("dev", "test")


@dataclasses.dataclass(frozen=True)
class Item:
    """One audio the models embed: ``sources`` concatenated, then ``treatment`` (JSON)."""

    sources: tuple[str, ...]
    treatment: str = '{"kind": "clean"}'


@dataclasses.dataclass
class ShiftCondition:
    name: str
    corpus: str
    description: str
    #: (speaker, items averaged into the profile)
    profiles: list[tuple[str, tuple[Item, ...]]]
    #: (speaker, item)
    tests: list[tuple[str, Item]]
    #: (n, 2) rows (test index, profile index); ``is_target`` / ``half`` per row
    trials: np.ndarray
    is_target: np.ndarray
    half: np.ndarray

    def items(self) -> list[Item]:
        seen = dict.fromkeys(item for _, items in self.profiles for item in items)
        seen.update(dict.fromkeys(item for _, item in self.tests))
        return list(seen)


def treatment(kind: str, **params) -> str:
    return json.dumps({"kind": kind, **params}, sort_keys=True)


def _hash_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode("utf-8")).digest()[:8], "little")


def rng_for(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng([seed, _hash_int(*parts)])


def split_halves(speakers, corpus: str) -> dict[str, str]:
    """speaker -> "dev" / "test": sorted by a hash of ``<corpus>/<speaker>``, first half dev
    (the extra one, for an odd count)."""
    order = sorted(set(speakers), key=lambda s: (hashlib.sha256(f"{corpus}/{s}".encode()).hexdigest(), s))
    cut = (len(order) + 1) // 2
    return {speaker: HALVES[0] if i < cut else HALVES[1] for i, speaker in enumerate(order)}


def _condition(name, corpus, description, profiles, tests, pairs, halves) -> ShiftCondition:
    """``pairs``: (test index, profile index) rows; target when the speakers match."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    is_target = np.array([tests[t][0] == profiles[p][0] for t, p in pairs], dtype=bool)
    half = np.array([halves[profiles[p][0]] for _, p in pairs])
    return ShiftCondition(name, corpus, description, profiles, tests, pairs, is_target, half)


def _all_pairs_in_half(tests, profiles, halves) -> list[tuple[int, int]]:
    return [(t, p) for t, (ts, _) in enumerate(tests) for p, (ps, _) in enumerate(profiles)
            if halves[ts] == halves[ps]]


# ----------------------------------------------------------------------------- test-other
def _babble_treatment(path: str, talker_paths: list[str], snr_db: float, seed: int) -> str:
    rng = rng_for(seed, "babble", pathlib.Path(path).name)
    count = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
    picked = sorted(rng.choice(len(talker_paths), size=count, replace=False).tolist())
    return treatment("babble", snr_db=snr_db, talkers=[talker_paths[i] for i in picked],
                     seed=_hash_int(seed, "babble-offsets", pathlib.Path(path).name))


def _reverb_treatment(path: str, seed: int) -> str:
    return treatment("reverb", rt60=RT60_SECONDS, drr_db=DRR_DB,
                     seed=_hash_int(seed, "rir", pathlib.Path(path).name))


def test_other_conditions(shared_dir, seed: int = 0) -> list[ShiftCondition]:
    shared_dir = pathlib.Path(shared_dir)
    utterances = list_utterances(shared_dir / "librispeech" / "test-other")
    talkers = [path for _, path in list_utterances(shared_dir / "librispeech" / "train-clean-100")]
    speakers = np.asarray([s for s, _ in utterances])
    halves = split_halves(speakers.tolist(), "test-other")
    draws = profile_draws(speakers, N_ENROLL, DRAWS, seed)
    names = sorted(set(speakers.tolist()))
    clean = treatment("clean")
    variants = [("test-other clean", clean, lambda p: clean, "reference: LibriSpeech test-other as recorded")]
    telephone = treatment("telephone")
    variants += [("test-other telephone", telephone, lambda p: telephone,
                  "both sides through 8 kHz band-pass 300-3400 Hz G.711 mu-law"),
                 ("test-other telephone, clean profiles", clean, lambda p: telephone,
                  "test side through the telephone channel, profiles clean")]
    for snr in BABBLE_SNRS_DB:
        variants.append((f"test-other babble {snr:g} dB", clean,
                         lambda p, snr=snr: _babble_treatment(p, talkers, snr, seed),
                         f"test side + babble of 3-5 train-clean-100 talkers at {snr:g} dB SNR, profiles clean"))
    variants += [("test-other reverb", "per-file", lambda p: _reverb_treatment(p, seed),
                  f"both sides reverberant (synthetic RIR, RT60 {RT60_SECONDS:g} s, DRR {DRR_DB:g} dB)"),
                 ("test-other reverb, clean profiles", clean, lambda p: _reverb_treatment(p, seed),
                  "test side reverberant, profiles clean")]
    conditions = []
    for name, profile_treatment, test_treatment, description in variants:
        def profile_item(path, fixed=profile_treatment, per_file=test_treatment):
            return Item((path,), per_file(path) if fixed == "per-file" else fixed)

        tests = [(speaker, Item((path,), test_treatment(path))) for speaker, path in utterances]
        profiles, pairs = [], []
        for members in draws:
            drawn = {int(row) for rows in members for row in rows}
            for speaker, rows in zip(names, members):
                p = len(profiles)
                profiles.append((speaker, tuple(profile_item(utterances[row][1]) for row in rows)))
                pairs += [(t, p) for t in range(len(tests))
                          if t not in drawn and halves[tests[t][0]] == halves[speaker]]
        conditions.append(_condition(name, "test-other", description, profiles, tests, pairs, halves))
    return conditions


# ----------------------------------------------------------------------------- Speech Commands
def speech_commands_clips(folder) -> dict[str, dict[str, list[str]]]:
    """speaker -> word -> clip paths (sorted), from ``<speaker>/<word>_<speaker>_nohash_<n>``."""
    clips: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for speaker, path in list_utterances(folder):
        clips[speaker][pathlib.Path(path).name.split("_")[0]].append(path)
    return {speaker: {word: sorted(paths) for word, paths in words.items()} for speaker, words in clips.items()}


def _segment(clips: dict[str, list[str]], words) -> Item:
    return Item(tuple(clips[word][0] for word in words))


def speech_commands_conditions(shared_dir, seed: int = 0) -> list[ShiftCondition]:
    """``speech-commands`` (other words) and ``same-words`` (impostors say the profile's words)."""
    clips = speech_commands_clips(pathlib.Path(shared_dir) / "speech-commands")
    halves = split_halves(list(clips), "speech-commands")
    k = SC_WORDS_PER_SEGMENT
    profiles, tests, profile_words = [], [], []
    for speaker in sorted(clips):
        words = sorted(clips[speaker])
        if len(words) < SC_MIN_WORDS:
            continue
        order = [words[i] for i in rng_for(seed, "sc-words", speaker).permutation(len(words))]
        profiles.append((speaker, (_segment(clips[speaker], order[:k]),)))
        profile_words.append(tuple(order[:k]))
        for start in range(k, len(order) - k + 1, k)[:2]:
            tests.append((speaker, _segment(clips[speaker], order[start:start + k])))
    other = _condition("speech-commands", "speech-commands",
                       f"profile = {k} words (1-s clips) concatenated, test = {k} other words of a speaker",
                       profiles, tests, _all_pairs_in_half(tests, profiles, halves), halves)
    same_tests = list(tests)
    pairs = [(t, p) for t, (ts, _) in enumerate(tests) for p, (ps, _) in enumerate(profiles) if ts == ps]
    for p, ((speaker, _), words) in enumerate(zip(profiles, profile_words)):
        candidates = sorted(s for s in clips if s != speaker and halves[s] == halves[speaker]
                            and all(word in clips[s] for word in words))
        rng = rng_for(seed, "sc-impostors", speaker)
        for impostor in rng.permutation(candidates)[:SAME_WORD_IMPOSTORS].tolist():
            pairs.append((len(same_tests), p))
            same_tests.append((impostor, _segment(clips[impostor], words)))
    same = _condition("same-words", "speech-commands",
                      "impostors say the profile's very words (same order); genuine tests say other words",
                      profiles, same_tests, pairs, halves)
    return [other, same]


# ----------------------------------------------------------------------------- extra speakers
def extra_speakers_condition(shared_dir) -> ShiftCondition:
    folder = pathlib.Path(shared_dir) / "extra-speakers"
    files = {entry.name: sorted(str(p) for p in entry.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
             for entry in sorted(folder.iterdir()) if entry.is_dir()}
    enrolled = [s for s, paths in files.items() if len(paths) >= 2]
    # the enrolled and the impostor-only speakers are halved separately, so both halves get some
    halves = split_halves(enrolled, "extra-speakers") | split_halves(
        [s for s in files if s not in enrolled], "extra-speakers")
    profiles = [(s, (Item((files[s][0],)),)) for s in enrolled]
    tests = [(s, Item((path,))) for s, paths in files.items()
             for path in (paths[1:] if s in enrolled else paths)]
    return _condition("extra-speakers", "extra-speakers",
                      "VCTK / ARCTIC / AISHELL / Common Voice / AudioMNIST / LibriSpeech extras: speakers with "
                      ">= 2 files enroll the first, are tested on the rest; 1-file speakers are impostors only",
                      profiles, tests, _all_pairs_in_half(tests, profiles, halves), halves)


def build_conditions(shared_dir, seed: int = 0, only: set | None = None) -> list[ShiftCondition]:
    """Every condition (or those whose name starts with one of ``only``)."""
    conditions = test_other_conditions(shared_dir, seed) + speech_commands_conditions(shared_dir, seed) + [
        extra_speakers_condition(shared_dir)]
    return [c for c in conditions if not only or any(c.name.startswith(prefix) for prefix in only)]
