"""The model registry (SQLite and PostgreSQL): states, the audit log, the activation gate,
rollback, retirement, and spaces that cannot be mixed. No audio: the gate's measurement
itself is exercised on real audio in test_model_upgrade.py."""
from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from app.store import models
from app.store.db import FloatVector
from app.services import registry

RIDGE = "ridge-ge2e256-to-campplus192-v1"
TWO_TOWER = "nessa-twotower-ge2e256-to-campplus192-v1"
GE2E_BOTH_SIDES = "ridge-ge2e256-to-ge2e256-v1"


def _done_enrollment(session, name: str) -> models.Enrollment:
    speaker = models.Speaker(name=name)
    session.add(speaker)
    session.flush()
    enrollment = models.Enrollment(speaker_id=speaker.id, status="done", audio_sha256="0" * 64, audio_bytes=1,
                                   duration_s=1.0)
    session.add(enrollment)
    session.flush()
    return enrollment


def _overview(harness, scope="identify"):
    response = harness.client.get("/v1/models", headers=harness.headers(scope))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _state(overview, kind, name):
    return next(item["state"] for item in overview[kind] if item["name"] == name)


def test_bootstrap_puts_the_configured_path_in_force(harness):
    overview = _overview(harness)
    active = overview["active"]
    assert active["action"] == "bootstrap" and active["actor"] == "system"
    assert (active["runtime_model"], active["enrollment_space"], active["alignment"]) == (
        "ge2e-256", "campplus-192", harness.settings.default_alignment)
    assert _state(overview, "models", "ge2e-256") == "active"
    assert _state(overview, "models", "campplus-192") == "active"
    assert _state(overview, "alignments", harness.settings.default_alignment) == "active"
    assert _state(overview, "alignments", RIDGE) == "registered"
    assert _state(overview, "alignments", GE2E_BOTH_SIDES) == "registered"
    # bundled artifacts do not register their models (that would embed every enrollment with them)
    assert {m["name"] for m in overview["models"]} == {"ge2e-256", "campplus-192"}
    health = harness.client.get("/v1/health").get_json()
    assert health["deployment"] == active["id"] and health["runtime_model"] == "ge2e-256"


def test_admin_endpoints_need_the_admin_scope_and_valid_input(harness):
    for method, url, body in (("post", "/v1/models", {"name": "ge2e-256-onnx"}),
                              ("post", "/v1/deployments", {"alignment": RIDGE}),
                              ("post", "/v1/deployments/rollback", None),
                              ("get", "/v1/models/history", None)):
        response = getattr(harness.client, method)(url, json=body, headers=harness.headers("identify"))
        assert response.status_code == 403, (url, response.get_json())
        assert response.get_json()["code"] == "forbidden"
    bad = [("/v1/models", {"name": "no-such-model"}, 404, "unknown_model"),
           ("/v1/models", {"nme": "x"}, 400, "invalid_fields"),
           ("/v1/deployments", {"alignment": "nope"}, 404, "alignment_not_found"),
           ("/v1/deployments", {"alignment": RIDGE, "force": "yes"}, 400, "invalid_field"),
           ("/v1/models/no-such-model/reembed", None, 404, "unknown_model")]
    for url, body, status, code in bad:
        response = harness.client.post(url, json=body, headers=harness.headers())
        assert response.status_code == status, (url, response.get_json())
        assert response.get_json()["code"] == code
    before = _overview(harness)
    assert before["active"]["alignment"] == harness.settings.default_alignment  # nothing changed


def test_gate_force_rollback_and_audit_log(harness):
    first = _overview(harness)["active"]
    # never evaluated against the path in force: refused
    response = harness.client.post("/v1/deployments", json={"alignment": RIDGE}, headers=harness.headers())
    assert response.status_code == 409 and response.get_json()["code"] == "not_evaluated"
    # a failed evaluation: refused, with the figures in the error
    with harness.services.session() as session:
        session.add(models.PathEvaluation(
            alignment=RIDGE, baseline_alignment=first["alignment"], eval_set={"path": "x"},
            candidate={"conditions": {"full": {"eer": 9.0, "top1": 80.0}}},
            baseline={"conditions": {"full": {"eer": 1.0, "top1": 100.0}}},
            tolerance={"eer_points": 0.5, "top1_points": 1.0}, passed=False, actor="test"))
        session.commit()
    response = harness.client.post("/v1/deployments", json={"alignment": RIDGE}, headers=harness.headers())
    assert response.status_code == 409 and response.get_json()["code"] == "gate_failed"
    assert response.get_json()["detail"]["candidate"]["conditions"]["full"]["eer"] == 9.0
    assert _overview(harness)["active"]["id"] == first["id"]

    # the explicit override
    response = harness.client.post("/v1/deployments", json={"alignment": RIDGE, "force": True},
                                   headers=harness.headers())
    assert response.status_code == 201, response.get_json()
    forced = response.get_json()
    assert forced["alignment"] == RIDGE and forced["gate"]["forced"] is True and forced["gate"]["passed"] is False
    assert forced["actor"].startswith("api-key:") and "test-admin" in forced["actor"]
    overview = _overview(harness)
    assert overview["active"]["id"] == forced["id"]
    assert _state(overview, "alignments", RIDGE) == "active"
    assert _state(overview, "alignments", first["alignment"]) == "registered"
    again = harness.client.post("/v1/deployments", json={"alignment": RIDGE, "force": True}, headers=harness.headers())
    assert again.status_code == 409 and again.get_json()["code"] == "already_active"

    # rollback returns to the path before; a second rollback undoes the first
    back = harness.client.post("/v1/deployments/rollback", headers=harness.headers()).get_json()
    assert back["alignment"] == first["alignment"] and back["action"] == "rollback"
    assert back["gate"] == {"rolled_back_from": forced["id"], "restores": first["id"]}
    forth = harness.client.post("/v1/deployments/rollback", headers=harness.headers()).get_json()
    assert forth["alignment"] == RIDGE

    history = harness.client.get("/v1/models/history", headers=harness.headers()).get_json()
    assert [d["action"] for d in history["deployments"]] == ["rollback", "rollback", "activate", "bootstrap"]
    actions = [(e["action"], e["subject"]) for e in history["events"]]
    assert ("activate", RIDGE) in actions and ("rollback", first["alignment"]) in actions
    assert all(e["actor"] and e["created_at"] for e in history["events"])


def test_exactly_one_path_in_force_and_states_follow_it(harness):
    with harness.services.session() as session:
        for name in (RIDGE, TWO_TOWER, RIDGE):
            if registry.current_deployment(session).alignment != name:
                registry.activate(session, name, actor="test", force=True)
        session.commit()
        active = session.scalars(sa.select(models.AlignmentArtifact.name).filter_by(state="active")).all()
        assert active == [RIDGE]
        assert registry.current_deployment(session).alignment == RIDGE
    path = harness.services.path()
    assert path.artifact.name == RIDGE and path.versions()["alignment"] == RIDGE


def test_retire_refuses_what_is_in_force_and_stops_new_vectors(harness):
    response = harness.client.post("/v1/models/ge2e-256/retire", headers=harness.headers())
    assert response.status_code == 409 and response.get_json()["code"] == "model_in_use"
    response = harness.client.post(f"/v1/alignments/{harness.settings.default_alignment}/retire",
                                   headers=harness.headers())
    assert response.status_code == 409 and response.get_json()["code"] == "alignment_in_use"

    assert harness.client.post("/v1/models", json={"name": "ge2e-256-onnx"}, headers=harness.headers()).status_code == 201
    with harness.services.session() as session:
        assert "ge2e-256-onnx" in registry.live_model_versions(session)
    response = harness.client.post("/v1/models/ge2e-256-onnx/retire", headers=harness.headers())
    assert response.status_code == 200
    assert _state(response.get_json(), "models", "ge2e-256-onnx") == "retired"
    with harness.services.session() as session:
        assert "ge2e-256-onnx" not in registry.live_model_versions(session)
    # registering again revives it
    assert harness.client.post("/v1/models", json={"name": "ge2e-256-onnx"}, headers=harness.headers()).status_code == 201
    assert _state(_overview(harness), "models", "ge2e-256-onnx") == "registered"


def test_switching_enrollment_space_needs_every_speaker_there(harness):
    """A path into another enrollment space is refused while enrolled speakers lack a
    profile there (re-embed or bridge first), even when its evaluation passed."""
    with harness.services.session() as session:
        speaker = models.Speaker(name="a")
        session.add(speaker)
        session.flush()
        session.add(models.Profile(speaker_id=speaker.id, space="campplus-192", model_version="campplus-192",
                                   dim=192, vector=FloatVector.to_bytes(np.ones(192, np.float32) / np.sqrt(192)),
                                   n_embeddings=1))
        session.add(models.PathEvaluation(
            alignment=GE2E_BOTH_SIDES, baseline_alignment=harness.settings.default_alignment, eval_set={"path": "x"},
            candidate={"conditions": {}}, baseline={"conditions": {}},
            tolerance={"eer_points": 0.5, "top1_points": 1.0}, passed=True, actor="test"))
        session.commit()
    response = harness.client.post("/v1/deployments", json={"alignment": GE2E_BOTH_SIDES}, headers=harness.headers())
    assert response.status_code == 409, response.get_json()
    body = response.get_json()
    assert body["code"] == "space_incomplete" and body["detail"]["missing"] == 1 and body["detail"]["speakers"] == 1
    forced = harness.client.post("/v1/deployments", json={"alignment": GE2E_BOTH_SIDES, "force": True},
                                 headers=harness.headers())
    assert forced.status_code == 201
    assert forced.get_json()["gate"]["coverage"] == {"speakers": 1, "missing": 1}


@pytest.mark.parametrize("space, dim, model_version, via", [
    ("campplus-192", 256, "campplus-192", None),   # wrong dimension for the space
    ("campplus-192", 192, "ge2e-256", None),       # another model's vector without a bridge
    ("no-such-space", 192, "campplus-192", None),  # a space no model defines
])
def test_spaces_cannot_be_mixed(harness, space, dim, model_version, via):
    with harness.services.session() as session:
        enrollment = _done_enrollment(session, "x")
        session.add(models.Embedding(enrollment_id=enrollment.id, speaker_id=enrollment.speaker_id,
                                     model_version=model_version,
                                     space=space, dim=dim, vector=FloatVector.to_bytes(np.zeros(dim, np.float32)),
                                     via_alignment=via))
        with pytest.raises(sa.exc.IntegrityError):
            session.flush()
        session.rollback()
    with harness.services.session() as session:
        speaker = models.Speaker(name="y")
        session.add(speaker)
        session.flush()
        session.add(models.Profile(speaker_id=speaker.id, space=space, model_version=model_version, dim=dim,
                                   vector=FloatVector.to_bytes(np.zeros(dim, np.float32)), n_embeddings=1))
        if model_version == space:  # a profile's model is its space's; only dim/space can be wrong
            with pytest.raises(sa.exc.IntegrityError):
                session.flush()
        session.rollback()


def test_a_bridged_embedding_names_its_alignment(harness):
    with harness.services.session() as session:
        enrollment = _done_enrollment(session, "b")
        session.add(models.Embedding(enrollment_id=enrollment.id, speaker_id=enrollment.speaker_id,
                                     model_version="ge2e-256",
                                     space="campplus-192", dim=192, via_alignment=RIDGE,
                                     vector=FloatVector.to_bytes(np.zeros(192, np.float32))))
        session.flush()  # allowed: produced by ge2e-256, mapped into campplus-192 by RIDGE
        session.rollback()
