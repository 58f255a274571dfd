"""The models on the request path give the same results when many threads call them at
once as when called one at a time: requests run VAD and embeddings in parallel, with no
lock (each thread runs its own copy of the stateful Silero module; the embedders and the
overlap network keep no state between calls and are shared)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.conftest import load_test_other_sample, requires_shared_data

pytestmark = [pytest.mark.models_only, pytest.mark.data, pytest.mark.usefixtures("single_torch_thread")]

THREADS = 4
ROUNDS = 2


def run_in_threads(function, inputs: list) -> list[list]:
    """Each of THREADS threads calls function on every input, ROUNDS times, starting
    together and each from a different input; returns, per thread, its results in input
    order (from its last round)."""
    barrier = threading.Barrier(THREADS)
    results: list[list] = [[None] * len(inputs) for _ in range(THREADS)]
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                for step in range(len(inputs)):
                    i = (thread + step) % len(inputs)
                    results[thread][i] = function(inputs[i])
        except BaseException as exc:  # collected: an assert in a thread would go unnoticed
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    return results


def assert_same_in_every_thread(function, inputs: list, equal=np.array_equal) -> None:
    serial = [function(x) for x in inputs]
    for per_thread in run_in_threads(function, inputs):
        for got, expected in zip(per_thread, serial):
            assert equal(got, expected)


@pytest.fixture(scope="module")
def utterances() -> list[np.ndarray]:
    return load_test_other_sample(slice(0, 4 * 16000))[1]  # 4-s crops keep it short


def test_vad_probabilities_and_segments(utterances):
    from speechcore.vad import SileroVAD

    vad = SileroVAD()
    assert_same_in_every_thread(vad.speech_probabilities, utterances)
    assert_same_in_every_thread(vad.segments, utterances, equal=lambda a, b: a == b)


@pytest.mark.parametrize("version", ["ge2e-256", "ge2e-256-onnx", "ge2e-256-onnx-int8"])
def test_runtime_embeddings(utterances, version):
    from app.model_catalog import load_embedder

    embedder = load_embedder(version)
    assert_same_in_every_thread(lambda wav: embedder.embed([wav])[0], utterances)


def test_overlap_probabilities():
    from diarizer.overlap import OverlapDetector
    from speechcore.audio import load_audio_file

    wav = load_audio_file(requires_shared_data("conversations", "pyannote-sample", "sample.wav"))
    detector = OverlapDetector()
    crops = [wav[start * 16000:(start + 12) * 16000] for start in (0, 9, 18)]
    assert_same_in_every_thread(lambda crop: np.stack(detector.probabilities(crop)), crops)
