"""Identification keeps working when a shared-space (two-tower) alignment is activated."""
from __future__ import annotations


import pytest

from tests.conftest import REPO_ROOT, requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]
TWO_TOWER = REPO_ROOT / "nessa" / "artifacts" / "nessa-twotower-ge2e256-to-campplus192-v2"


def test_identify_with_each_bundled_alignment(harness):
    if not TWO_TOWER.is_dir():
        pytest.skip("no shared-space artifact bundled")
    root = requires_shared_data("librispeech", "test-other")
    speakers = sorted(p for p in root.iterdir() if p.is_dir())[:3]
    ids = {}
    for speaker in speakers:
        ids[speaker.name] = harness.create_speaker(speaker.name)
        for path in sorted(speaker.glob("*.flac"))[:2]:
            harness.upload(path, f"/v1/speakers/{ids[speaker.name]}/enrollments", "enroll")
    harness.drain_jobs()
    from app.services.registry import activate, current_deployment

    for name in ("ridge-ge2e256-to-campplus192-v1", TWO_TOWER.name):
        with harness.services.session() as session:
            if current_deployment(session).alignment != name:
                activate(session, name, actor="test", force=True)
            session.commit()
        for speaker in speakers:
            response = harness.upload(sorted(speaker.glob("*.flac"))[-1], "/v1/identify", "identify")
            assert response.status_code == 200, response.get_json()
            body = response.get_json()
            assert body["models"]["alignment"] == name
            assert body["candidates"][0]["id"] == ids[speaker.name]
