"""The domain-shift evaluation (`nessa eval-shift`): its channels do what they claim on real
speech, and its protocol builds the trials it says (no models run here)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from nessa.lab.evaluation import shift_channels as channels
from nessa.lab.evaluation import shift_protocol as protocol
from tests.conftest import requires_shared_data


def _speech(*parts: str) -> np.ndarray:
    from nessa.lab.data import default_audio_loader

    return np.asarray(default_audio_loader()(str(requires_shared_data(*parts))), dtype=np.float64)


def _band_fraction(wav: np.ndarray, low: float, high: float = 8000.0) -> float:
    spectrum = np.abs(np.fft.rfft(wav)) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1.0 / channels.SAMPLE_RATE)
    return float(spectrum[(freqs > low) & (freqs <= high)].sum() / spectrum.sum())


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return _speech("librispeech", "test-other", "1688", "1688-142285-0000.flac")


def test_mulaw_is_g711():
    codes = np.arange(256, dtype=np.uint8)
    levels = channels.mulaw_decode(codes)
    # every code but negative zero (0x7f) round-trips; the levels are G.711's
    assert np.array_equal(channels.mulaw_encode(levels)[codes != 0x7F], codes[codes != 0x7F])
    assert levels.max() == 32124 and levels.min() == -32124 and len(set(levels.tolist())) == 255
    ramp = np.linspace(-1, 1, 20001)
    error = np.abs(channels.mulaw_decode(channels.mulaw_encode(ramp)) / 32768.0 - ramp)
    assert error[np.abs(ramp) < 0.01].max() < 6e-4  # fine steps near zero (16 / 32768 at most)
    assert error.max() < 0.04  # coarse ones near full scale


def test_telephone_is_narrowband_and_mulaw_quantised(utterance):
    narrow = channels.telephone_narrowband(utterance)
    levels = set(channels.mulaw_decode(np.arange(256, dtype=np.uint8)).tolist())
    assert set(np.round(narrow * 32768.0).astype(int).tolist()) <= levels
    wide = channels.telephone(utterance)
    assert len(wide) == len(utterance)
    assert _band_fraction(utterance, 3400.0) > 0.01  # the source has high-band energy ...
    assert _band_fraction(wide, 4000.0) < 1e-4  # ... the channel has none above its Nyquist
    assert _band_fraction(wide, 3600.0) < 1e-3  # and almost none above the pass band
    assert _band_fraction(wide, 0.0, 200.0) < 1e-2


@pytest.mark.parametrize("snr_db", [10.0, 5.0])
def test_babble_snr(utterance, snr_db):
    talkers = [_speech("librispeech", "train-clean-100", name) for name in
               ("103-1240-0000.flac", "1034-121119-0000.flac", "1040-133433-0000.flac", "1069-133699-0000.flac")]
    mixed = channels.add_babble(utterance, talkers, snr_db, seed=3).astype(np.float64)
    noise = mixed - utterance
    measured = 10.0 * np.log10(channels.power(utterance) / channels.power(noise))
    assert abs(measured - snr_db) < 0.5
    again = channels.add_babble(utterance, talkers, snr_db, seed=3)
    assert np.array_equal(again, mixed.astype(np.float32))  # seeded


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reverb_rt60(utterance, seed):
    rir = channels.synthetic_rir(0.5, seed)
    assert abs(channels.estimate_rt60(rir) - 0.5) < 0.05
    tail = np.sum(rir[1:] ** 2)
    assert abs(10 * np.log10(rir[0] ** 2 / tail)) < 0.01  # DRR 0 dB
    wet = channels.reverberate(utterance, rir)
    assert abs(channels.power(wet) / channels.power(utterance) - 1) < 1e-3
    assert np.corrcoef(wet, utterance)[0, 1] < 0.95  # it did smear the speech


def _word(path: str) -> str:
    return pathlib.Path(path).name.split("_")[0]


def test_same_words_impostors_say_the_profile_words():
    shared = requires_shared_data("speech-commands").parent
    other, same = protocol.speech_commands_conditions(shared, seed=0)
    assert other.name == "speech-commands" and same.name == "same-words"
    impostors = same.trials[~same.is_target]
    assert len(impostors) > 500 and same.is_target.sum() == other.is_target.sum()
    for t, p in impostors:
        speaker, (profile,) = same.profiles[p]
        impostor, test = same.tests[t]
        assert impostor != speaker
        assert [_word(x) for x in test.sources] == [_word(x) for x in profile.sources]
        assert all(f"_{impostor}_" in x for x in test.sources)
    for t, p in same.trials[same.is_target]:  # genuine: other words of the same speaker
        (profile,), test = same.profiles[p][1], same.tests[t][1]
        assert not {_word(x) for x in profile.sources} & {_word(x) for x in test.sources}
        assert len(test.sources) == 3
    for condition in (other, same):  # no trial crosses the dev / test halves
        halves = protocol.split_halves(list(protocol.speech_commands_clips(shared / "speech-commands")),
                                       "speech-commands")
        for (t, p), half in zip(condition.trials, condition.half):
            assert halves[condition.tests[t][0]] == halves[condition.profiles[p][0]] == half


def test_halves_are_deterministic_and_balanced():
    shared = requires_shared_data("librispeech", "test-other").parent.parent
    first = protocol.test_other_conditions(shared, seed=0)
    again = protocol.test_other_conditions(shared, seed=0)
    for a, b in zip(first, again):
        assert np.array_equal(a.trials, b.trials) and a.tests == b.tests and a.profiles == b.profiles
    clean = first[0]
    assert sorted(np.unique(clean.half, return_counts=True)[1].tolist()) == [875, 875]
    extra = protocol.extra_speakers_condition(shared)
    assert {half for half in extra.half} == {"dev", "test"} and extra.is_target.any()


# ----------------------------------------------------------------------------- the light model alone, EER ratios
class _StubEmbedder:
    """Seeded stand-in vectors (CAM++ 192, GE2E 256, 2.9 s) per item: the scoring is tested, not the models."""

    def __init__(self):
        self.vectors = {}

    def embed(self, items):
        for item in items:
            if item not in self.vectors:
                rng = np.random.default_rng(protocol._hash_int(*item.sources))
                name = pathlib.Path(item.sources[0]).parent.name
                speaker = np.random.default_rng(protocol._hash_int(name))
                rng_speaker = np.random.default_rng(protocol._hash_int(name, "enroll"))
                self.vectors[item] = (rng_speaker.normal(size=192) + 0.5 * rng.normal(size=192),
                                      speaker.normal(size=256) + 0.5 * rng.normal(size=256), 2.9)


@pytest.fixture(scope="module")
def speech_commands_scored():
    from nessa.artifact import AlignmentArtifact
    from nessa.lab.evaluation import shift_eval

    shared = requires_shared_data("speech-commands").parent
    conditions = protocol.speech_commands_conditions(shared, seed=0)
    artifact = AlignmentArtifact.load(pathlib.Path(shift_eval.__file__).parents[2] / "artifacts"
                                      / "nessa-twotower-cca-ge2e256-to-campplus192-v3")
    embedder = _StubEmbedder()
    rows, info = shift_eval.evaluate_shift(conditions, artifact, embedder)
    return conditions, artifact, embedder, rows, info


def test_runtime_path_is_the_light_model_alone(speech_commands_scored):
    from nessa.lab.evaluation import shift_eval
    from nessa.lab.evaluation.systems import mean_vectors

    conditions, artifact, embedder, rows, info = speech_commands_scored
    assert "runtime" not in shift_eval.PATHS  # shift_methods loops over PATHS with calibrated LLRs
    same = conditions[1]
    scores = shift_eval.score_condition(artifact, same, embedder.vectors)
    profiles_r = mean_vectors([np.stack([embedder.vectors[i][1] for i in items]) for _, items in same.profiles])
    t, p = same.trials[:, 0], same.trials[:, 1]
    tests_r = np.stack([embedder.vectors[item][1] for _, item in same.tests])
    tests_r = tests_r / np.linalg.norm(tests_r, axis=1, keepdims=True)
    assert np.allclose(scores["runtime-raw"], np.sum(tests_r[t] * profiles_r[p], axis=1), atol=1e-5)
    # S-normalised against the stored cohort exactly as the fused score's runtime_cosine input
    profiles_e = mean_vectors([np.stack([embedder.vectors[i][0] for i in items]) for _, items in same.profiles])
    features = artifact.scorer.candidate_features(tests_r, profiles_e, profiles_r)
    assert "runtime_cosine" in artifact.scoring["snorm"]["features"]
    assert np.allclose(scores["runtime"], features["runtime_cosine"][t, p], rtol=1e-4, atol=1e-4)
    assert not np.allclose(scores["runtime"], scores["runtime-raw"])
    runtime_rows = [r for r in rows if r["path"] in shift_eval.RUNTIME_PATHS]
    assert len(runtime_rows) == 2 * 2 * 2  # 2 conditions x 2 paths x 2 halves
    assert all(not any(k.startswith("far@") for k in r) and r["eer"] == r["eer"] for r in runtime_rows)
    assert info["thresholds"]["runtime"] == {} and set(info["thresholds"]["fused"]) == {"far_1pct", "far_0.1pct"}
    table = shift_eval.markdown(rows, info)
    assert "| same-words | runtime |" in table and "| same-words / speech-commands | fused | dev |" in table


def test_eer_ratios(speech_commands_scored):
    from nessa.lab.evaluation import shift_eval

    _, _, _, rows, info = speech_commands_scored
    eer = {(r["condition"], r["path"], r["half"]): r["eer"] for r in rows}
    ratios = {(r["path"], r["half"]): r for r in info["eer_ratios"]}
    assert set(ratios) == {(p, h) for p in shift_eval.REPORTED_PATHS for h in protocol.HALVES}
    for (path, half), r in ratios.items():
        assert r["eer"] == eer[("same-words", path, half)] and r["reference_eer"] == eer[("speech-commands", path, half)]
        if r["reference_eer"] > 0:
            assert r["ratio"] == pytest.approx(r["eer"] / r["reference_eer"])
        assert r["within_bound"] == (r["ratio"] <= 2.0)
        assert ("fused_no_worse_than_runtime" in r) == (path == "fused")
    made_up = [{"condition": c, "path": p, "half": "dev", "eer": e} for c, p, e in
               [("same-words", "fused", 4.0), ("speech-commands", "fused", 1.0), ("same-words", "runtime", 3.0),
                ("speech-commands", "runtime", 2.0), ("same-words", "alignment", 0.0),
                ("speech-commands", "alignment", 0.0)]]
    out = {r["path"]: r for r in shift_eval.eer_ratios(made_up)}
    assert out["fused"]["ratio"] == 4.0 and not out["fused"]["within_bound"]
    assert out["fused"]["fused_no_worse_than_runtime"] is False and out["fused"]["runtime_eer"] == 3.0
    assert out["runtime"]["ratio"] == 1.5 and out["runtime"]["within_bound"]
    assert out["alignment"]["ratio"] == 1.0


def test_same_words_feature_table_matches_the_paths(speech_commands_scored):
    from nessa.lab.evaluation import same_words_features as study

    conditions, artifact, embedder, rows, _ = speech_commands_scored
    table = {r["feature"]: r for r in study.feature_table(artifact, {c.name: c for c in conditions},
                                                          embedder.vectors, "dev")}
    eer = {(r["condition"], r["path"]): r["eer"] for r in rows if r["half"] == "dev"}
    assert table["fused LLR"]["eer_same_words"] == pytest.approx(eer[("same-words", "fused")])
    assert table["alignment LLR"]["eer_other_words"] == pytest.approx(eer[("speech-commands", "alignment")])
    assert table["runtime_cosine"]["eer_same_words"] == pytest.approx(eer[("same-words", "runtime")])
    assert table["runtime_cosine (raw)"]["eer_other_words"] == pytest.approx(eer[("speech-commands", "runtime-raw")])
    weights = study.fusion_weights(artifact)
    assert set(weights) <= set(table) and table["runtime_cosine"]["fusion_weight"] == weights["runtime_cosine"]
    assert "| fused LLR | dev |" in study.feature_markdown(list(table.values()))


def test_cache_key_follows_the_speech_detector(tmp_path):
    """Embeddings cached under one VAD setting must not be reused under another: the
    shift table once mixed vectors made before and after a VAD change."""
    from nessa.lab.evaluation.shift_eval import ShiftEmbedder
    from nessa.lab.evaluation.shift_protocol import Item
    from speechcore.vad import SileroVAD

    class _Model:
        sample_rate, dim, version, weights_sha256 = 16000, 4, "m", "0" * 64

    source = tmp_path / "a.wav"
    source.write_bytes(b"RIFF")
    embedder = ShiftEmbedder(_Model(), _Model(), tmp_path / "cache", progress=False)
    cache = embedder.caches[0]
    item = Item(sources=(str(source),), treatment='{"kind": "clean"}')
    before = embedder._key(cache, item)
    assert embedder._key(cache, item) == before
    embedder._vad = SileroVAD(threshold=0.5)
    assert embedder._key(cache, item) != before
