"""`nessa align adapt --from-gallery`: adapt the active alignment on the gallery's own
enrollments, register and activate it, and keep identifying correctly."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, requires_shared_data

pytestmark = [pytest.mark.data, pytest.mark.slow]


def test_adapt_from_gallery_registers_an_adapted_alignment(harness):
    root = requires_shared_data("librispeech", "test-other")
    speakers = sorted(p for p in root.iterdir() if p.is_dir())[:4]
    ids = {}
    for speaker in speakers:
        ids[speaker.name] = harness.create_speaker(speaker.name)
        # utterances long enough to enroll (>= 3 s of speech)
        for path in [f for f in sorted(speaker.glob("*.flac")) if f.stat().st_size > 150_000][:2]:
            assert harness.upload(path, f"/v1/speakers/{ids[speaker.name]}/enrollments", "enroll").status_code == 202
    harness.drain_jobs()
    parent = harness.services.path().artifact

    env = {**os.environ, "NESSA_DATABASE_URL": harness.settings.resolved_database_url,
           "NESSA_DATA_DIR": str(harness.settings.data_dir)}
    result = subprocess.run([sys.executable, "-m", "app.cli", "align", "adapt", "--from-gallery", "--activate",
                             "--name", "gallery-adapted"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered and activated gallery-adapted" in result.stdout

    manifest = json.loads((harness.settings.artifacts_dir / "gallery-adapted" / "artifact.json").read_text())
    adaptation = manifest["config"]["adaptation"]
    assert adaptation["parent"] == parent.name and adaptation["n_speakers"] == len(speakers)
    assert manifest["source_weights_sha256"] == parent.source_weights_sha256

    for speaker in speakers:
        response = harness.upload(sorted(speaker.glob("*.flac"))[-1], "/v1/identify", "identify")
        body = response.get_json()
        assert body["models"]["alignment"] == "gallery-adapted"
        assert body["speaker"] and body["speaker"]["id"] == ids[speaker.name]

    # without a gallery there is nothing to adapt on: a clear error, non-zero exit
    again = subprocess.run([sys.executable, "-m", "app.cli", "align", "adapt", "--pairs", "/nonexistent.npz"],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "no such pairs file" in again.stderr
