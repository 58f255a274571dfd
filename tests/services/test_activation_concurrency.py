"""Parallel identify requests while the runtime path is switched and rolled back: no
request fails, and each one is scored entirely by the path it names (its threshold is
that path's alignment's threshold)."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from app.store import models
from tests.conftest import requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]

RIDGE = "ridge-ge2e256-to-campplus192-v1"
N_CLIENTS, REQUESTS_EACH = 6, 6


def test_identify_during_activation_and_rollback(harness):
    root = requires_shared_data("librispeech", "test-other")
    speakers = sorted(p for p in root.iterdir() if p.is_dir())[:3]
    ids, queries = {}, []
    for speaker in speakers:
        ids[speaker.name] = harness.create_speaker(speaker.name)
        files = [f for f in sorted(speaker.glob("*.flac")) if f.stat().st_size > 150_000]
        assert harness.upload(files[0], f"/v1/speakers/{ids[speaker.name]}/enrollments", "enroll").status_code == 202
        queries.append((speaker.name, files[-1].read_bytes()))
    harness.drain_jobs()
    default = harness.services.path().artifact.name

    results, errors = [], []
    start = threading.Barrier(N_CLIENTS + 1)
    stop_switching = threading.Event()

    def client(k: int) -> None:
        start.wait()
        for i in range(REQUESTS_EACH):
            name, audio = queries[(k + i) % len(queries)]
            try:
                response = harness.upload(audio, "/v1/identify", "identify")
                results.append((name, response.status_code, response.get_json()))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))

    def switcher() -> None:
        start.wait()
        n = 0
        while not stop_switching.is_set():
            if n % 2 == 0:
                response = harness.client.post("/v1/deployments", json={"alignment": RIDGE, "force": True},
                                               headers=harness.headers())
            else:
                response = harness.client.post("/v1/deployments/rollback", headers=harness.headers())
            if response.status_code != 201:
                errors.append(f"switch {n}: {response.status_code} {response.get_json()}")
            n += 1
            stop_switching.wait(0.02)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(N_CLIENTS)]
    switch_thread = threading.Thread(target=switcher)
    for thread in threads + [switch_thread]:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    stop_switching.set()
    switch_thread.join(timeout=60)

    assert not errors, errors[:5]
    assert len(results) == N_CLIENTS * REQUESTS_EACH
    with harness.services.session() as session:
        deployments = dict(session.execute(sa.select(models.Deployment.id, models.Deployment.alignment)).all())
    assert len(deployments) > 3, "the path was switched during the requests"
    from nessa.calibration import threshold_name

    point = threshold_name(harness.services.settings.far_target)  # the default operating point
    thresholds = {name: {fused: harness.services.paths.load(name).scorer.candidate_threshold(fused=fused, name=point)
                         for fused in (True, False)}
                  for name in (RIDGE, default)}
    seen = set()
    for name, status, body in results:
        assert status == 200, body
        used = body["models"]
        # the deployment it names is the one whose alignment scored it
        assert deployments[used["deployment"]] == used["alignment"]
        assert used["runtime_model"] == "ge2e-256" and used["enrollment_space"] == "campplus-192"
        assert body["threshold"] == pytest.approx(thresholds[used["alignment"]][body["scoring"] == "fused"])
        assert body["candidates"][0]["id"] == ids[name]
        seen.add(used["alignment"])
    assert seen == {RIDGE, default}, f"both paths should have answered some requests, saw {seen}"
