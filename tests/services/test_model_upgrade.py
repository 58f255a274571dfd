"""Independent model upgrades on real models and real audio, through the API and the CLI.

The story: the "old" system runs GE2E on both sides. The enrollment side is upgraded to
CAM++ by re-embedding the retained enrollment audio in background jobs; then the runtime
side to the int8 ONNX export of GE2E. Identification accuracy is measured after every
step, nobody enrolls again, and a rollback restores the previous path. A second test does
the enrollment upgrade without retained audio (profiles bridged by an alignment).
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.store import models
from tests.conftest import REPO_ROOT, ServiceHarness, make_settings, requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]

OLD_PATH = "ridge-ge2e256-to-ge2e256-v1"            # GE2E both sides (near-identity map, calibrated)
BRIDGE = "ridge-ge2e256-to-campplus192-v1"          # maps GE2E vectors into the CAM++ space itself
INT8_PATH = "nessa-twotower-ge2e256int8-to-campplus192-v2"  # int8 ONNX GE2E queries vs CAM++ profiles
TWO_TOWER = "nessa-twotower-ge2e256-to-campplus192-v2"
#: a step may lose at most this much identification accuracy (points) against the step before
TOLERANCE = 10.0
N_SPEAKERS, N_ENROLL, N_TEST = 6, 2, 2


def _corpus(*alignments):
    root = requires_shared_data("librispeech", "test-other")
    for name in alignments:
        if not (REPO_ROOT / "nessa" / "artifacts" / name / "artifact.json").is_file():
            pytest.fail(f"bundled alignment {name} is missing")
    speakers = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir())[:N_SPEAKERS]:
        # utterances long enough to enroll (>= 3 s of speech)
        files = [f for f in sorted(directory.glob("*.flac")) if f.stat().st_size > 150_000]
        speakers[directory.name] = (files[:N_ENROLL], files[N_ENROLL:N_ENROLL + N_TEST])
    return root, speakers


#: the gate's tolerance on this small trial set (60 target trials per condition); the
#: default (0.5 EER points, 1 top-1 point) is meant for full evaluation sets
GATE_TOLERANCE = {"tolerance_eer_points": 3.0, "tolerance_top1_points": 5.0}


def _identify_all(harness, speakers, ids) -> tuple[float, list[dict]]:
    bodies, right = [], 0
    for name, (_, test) in speakers.items():
        for path in test:
            response = harness.upload(path, "/v1/identify", "identify")
            assert response.status_code == 200, response.get_json()
            body = response.get_json()
            bodies.append(body)
            right += bool(body["speaker"]) and body["speaker"]["id"] == ids[name]
    return 100.0 * right / len(bodies), bodies


def _enroll_all(harness, speakers) -> dict:
    ids = {}
    for name, (enroll, _) in speakers.items():
        ids[name] = harness.create_speaker(name)
        for path in enroll:
            response = harness.upload(path, f"/v1/speakers/{ids[name]}/enrollments", "enroll")
            assert response.status_code == 202, response.get_json()
    harness.drain_jobs(wait=True)
    return ids


def _post(harness, url, body=None, status=None):
    response = harness.client.post(url, json=body, headers=harness.headers())
    if status is not None:
        assert response.status_code == status, (url, response.get_json())
    return response.get_json()


def _job(harness, job_id):
    return harness.client.get(f"/v1/jobs/{job_id}", headers=harness.headers()).get_json()


def _enrollment_ids(harness):
    with harness.services.session() as session:
        return sorted(session.scalars(sa.select(models.Enrollment.id).filter_by(status="done")))


def _evaluate_and_activate(harness, alignment, eval_dir):
    """The gate: the candidate path against the path in force on all ten test-other
    speakers (profiles from 2 utterances, 3 queries each, whole and 2-s crops)."""
    job = _post(harness, f"/v1/alignments/{alignment}/evaluate",
                {"eval_dir": str(eval_dir), "n_enroll": 2, "max_queries": 3, "crops": [2], **GATE_TOLERANCE}, status=202)["job"]
    harness.drain_jobs(wait=True)
    result = _job(harness, job["id"])
    assert result["status"] == "succeeded", result
    evaluation = result["result"]
    assert evaluation["candidate"]["alignment"] == alignment
    assert evaluation["baseline_alignment"] == _post_models(harness)["active"]["alignment"]
    assert evaluation["passed"], evaluation
    deployment = _post(harness, "/v1/deployments", {"alignment": alignment}, status=201)
    assert deployment["gate"]["passed"] is True and deployment["gate"]["forced"] is False
    return evaluation, deployment


def _post_models(harness):
    return harness.client.get("/v1/models", headers=harness.headers("identify")).get_json()


def test_upgrade_enrollment_then_runtime_model_without_re_enrolling(tmp_path, database_url, monkeypatch, capsys):
    eval_dir, speakers = _corpus(OLD_PATH, TWO_TOWER, INT8_PATH)
    harness = ServiceHarness(make_settings(tmp_path, database_url, enroll_model="ge2e-256", runtime_model="ge2e-256",
                                           default_alignment=OLD_PATH))
    try:
        report = {}

        # step 0: the old system, GE2E on both sides
        assert _post_models(harness)["active"]["alignment"] == OLD_PATH
        ids = _enroll_all(harness, speakers)
        enrollments = _enrollment_ids(harness)
        assert len(enrollments) == N_SPEAKERS * N_ENROLL
        report["old"], bodies = _identify_all(harness, speakers, ids)
        assert all(b["models"]["enrollment_space"] == "ge2e-256" for b in bodies)
        assert report["old"] >= 90.0, report

        # step 1: enrollment upgrade to CAM++: register, re-embed in background jobs
        # (through the CLI: progress bar, a worker of its own), gate, switch
        _post(harness, "/v1/models", {"name": "campplus-192"}, status=201)
        monkeypatch.setenv("NESSA_DATABASE_URL", harness.settings.resolved_database_url)
        monkeypatch.setenv("NESSA_DATA_DIR", str(harness.settings.data_dir))
        from app.cli import main

        assert main(["models", "reembed", "campplus-192", "--workers", "1"]) == 0
        out = capsys.readouterr()
        assert f'"embedded": {N_SPEAKERS * N_ENROLL}' in out.out and "100%" in out.err, (out.out[-500:], out.err[-500:])
        campaign = int(out.out.split("queued re-embedding job ")[1].split()[0])
        job = _job(harness, campaign)
        assert job["kind"] == "reembed" and job["status"] == "succeeded" and job["progress"] == 1.0
        assert job["children"] == {"succeeded": 1}  # 12 enrollments: one batch
        overview = _post_models(harness)
        campplus = next(m for m in overview["models"] if m["name"] == "campplus-192")
        assert campplus["profiles"] == N_SPEAKERS and campplus["bridged_profiles"] == 0
        assert overview["active"]["enrollment_space"] == "ge2e-256"  # built beside the old space

        _, deployment = _evaluate_and_activate(harness, TWO_TOWER, eval_dir)
        report["enroll_upgraded"], bodies = _identify_all(harness, speakers, ids)
        assert all(b["models"] == {"deployment": deployment["id"], "runtime_model": "ge2e-256",
                                   "enrollment_space": "campplus-192",
                                   "alignment": TWO_TOWER} for b in bodies)
        assert all(c["scoring"] == "fused" for b in bodies for c in b["candidates"])
        assert report["enroll_upgraded"] >= report["old"] - TOLERANCE, report

        # step 2: runtime upgrade to the int8 ONNX model. Registered and evaluated, then
        # switched *before* its runtime vectors exist: those profiles are scored through
        # the new alignment alone, and responses say so
        _post(harness, "/v1/models", {"name": "ge2e-256-onnx-int8"}, status=201)
        _, deployment = _evaluate_and_activate(harness, INT8_PATH, eval_dir)
        report["runtime_upgraded_alignment_only"], bodies = _identify_all(harness, speakers, ids)
        assert all(b["models"]["runtime_model"] == "ge2e-256-onnx-int8" for b in bodies)
        assert all(c["scoring"] == "alignment" for b in bodies for c in b["candidates"])
        job = _post(harness, "/v1/models/ge2e-256-onnx-int8/reembed", status=202)["job"]
        harness.drain_jobs(wait=True)
        assert _job(harness, job["id"])["result"]["embedded"] == N_SPEAKERS * N_ENROLL
        report["runtime_upgraded"], bodies = _identify_all(harness, speakers, ids)
        assert all(c["scoring"] == "fused" for b in bodies for c in b["candidates"])
        assert report["runtime_upgraded"] >= report["enroll_upgraded"] - TOLERANCE, report

        # nobody enrolled again: the same enrollments, now with a vector in every space
        assert _enrollment_ids(harness) == enrollments
        with harness.services.session() as session:
            spaces = dict(session.execute(sa.select(models.Embedding.space, sa.func.count())
                                          .group_by(models.Embedding.space)).all())
        assert spaces == {"ge2e-256": 12, "campplus-192": 12, "ge2e-256-onnx-int8": 12}

        # roll back in one call: the previous path answers again
        back = _post(harness, "/v1/deployments/rollback", status=201)
        _, bodies = _identify_all(harness, speakers, ids)
        assert all(b["models"]["runtime_model"] == "ge2e-256" and b["models"]["deployment"] == back["id"]
                   for b in bodies)
        print("identification accuracy per step (%):", report)
    finally:
        harness.close()


def test_enrollment_upgrade_bridges_profiles_without_retained_audio(tmp_path, database_url):
    _, speakers = _corpus(OLD_PATH, BRIDGE)
    harness = ServiceHarness(make_settings(tmp_path, database_url, enroll_model="ge2e-256", runtime_model="ge2e-256",
                                           default_alignment=OLD_PATH, retain_enrollment_audio=False))
    try:
        ids = _enroll_all(harness, speakers)
        before, _ = _identify_all(harness, speakers, ids)
        _post(harness, "/v1/models", {"name": "campplus-192"}, status=201)
        # without a bridge nothing can be re-embedded
        job = _post(harness, "/v1/models/campplus-192/reembed", status=202)["job"]
        harness.drain_jobs(wait=True)
        result = _job(harness, job["id"])["result"]
        assert result["embedded"] == 0 and result["not_retained"] == N_SPEAKERS * N_ENROLL
        refused = harness.client.post("/v1/deployments", json={"alignment": BRIDGE}, headers=harness.headers())
        assert refused.status_code == 409 and refused.get_json()["code"] == "not_evaluated"
        # a shared-space alignment cannot bridge
        bad = harness.client.post("/v1/models/campplus-192/reembed",
                                  json={"bridge": TWO_TOWER},
                                  headers=harness.headers())
        assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_bridge"

        job = _post(harness, "/v1/models/campplus-192/reembed", {"bridge": BRIDGE}, status=202)["job"]
        harness.drain_jobs(wait=True)
        result = _job(harness, job["id"])["result"]
        assert result["bridged"] == N_SPEAKERS * N_ENROLL and result["embedded"] == 0
        campplus = next(m for m in _post_models(harness)["models"] if m["name"] == "campplus-192")
        assert campplus["profiles"] == N_SPEAKERS and campplus["bridged_profiles"] == N_SPEAKERS
        with harness.services.session() as session:
            rows = session.execute(sa.select(models.Embedding.model_version, models.Embedding.via_alignment)
                                   .filter_by(space="campplus-192")).all()
        assert set(rows) == {("ge2e-256", BRIDGE)}

        # campaigns resume: only what is missing is done again (here: one vector lost as if
        # its batch had crashed before committing), nothing twice
        with harness.services.session() as session:
            victim = session.scalars(sa.select(models.Embedding).filter_by(space="campplus-192")).first()
            session.delete(victim)
            session.commit()
        job = _post(harness, "/v1/models/campplus-192/reembed", {"bridge": BRIDGE}, status=202)["job"]
        harness.drain_jobs(wait=True)
        result = _job(harness, job["id"])["result"]
        assert (result["batches"], result["bridged"], result["profiles"]) == (1, 1, N_SPEAKERS)
        job = _post(harness, "/v1/models/campplus-192/reembed", {"bridge": BRIDGE}, status=202)["job"]
        harness.drain_jobs(wait=True)
        assert _job(harness, job["id"])["result"]["batches"] == 0

        # the GE2E -> CAM++ path over bridged profiles; the GE2E runtime vectors still fuse
        _post(harness, "/v1/deployments", {"alignment": BRIDGE, "force": True}, status=201)
        after, bodies = _identify_all(harness, speakers, ids)
        assert all(c["bridged_profile"] is True for b in bodies for c in b["candidates"])
        assert all(b["models"]["enrollment_space"] == "campplus-192" for b in bodies)
        assert after >= before - TOLERANCE, (before, after)
        print(f"bridged enrollment upgrade: identification {before:.0f}% -> {after:.0f}%")
    finally:
        harness.close()
