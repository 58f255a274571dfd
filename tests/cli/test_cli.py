"""The `nessa` command: exit codes, messages, and the key printed as the last line."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, run_nessa


def test_console_script_is_installed():
    script = pathlib.Path(sys.executable).parent / "nessa"
    assert script.exists(), "the `nessa` console script should be installed into the virtualenv"


def test_db_upgrade_then_keys(tmp_path, database_url):
    out = run_nessa(["db", "upgrade"], database_url, tmp_path)
    assert "database at" in out.stdout
    created = run_nessa(["keys", "create", "--scope", "enroll", "--scope", "identify", "--name", "ci"],
                        database_url, tmp_path)
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("nsk_") and len(key) > 30
    listed = run_nessa(["keys", "list"], database_url, tmp_path).stdout
    assert key[:12] in listed and "enroll,identify" in listed

    from app.store import db, models
    from app.services.keys import hash_key

    engine = db.make_engine(database_url)
    with db.make_session_factory(engine)() as session:
        row = session.query(models.ApiKey).filter_by(prefix=key[:12]).one()
        assert row.key_hash == hash_key(key) and key not in (row.key_hash, row.name)
    engine.dispose()


def test_bad_scope_is_a_clear_error(tmp_path, database_url):
    run_nessa(["db", "upgrade"], database_url, tmp_path)
    result = run_nessa(["keys", "create", "--scope", "root"], database_url, tmp_path, check_ok=False)
    assert result.returncode != 0
    assert "Scopes must be among" in result.stderr


def test_serve_refuses_an_uninitialised_database(tmp_path, database_url):
    result = run_nessa(["worker"], database_url, tmp_path, check_ok=False)
    assert result.returncode != 0 and "nessa db upgrade" in result.stderr


def test_align_train_rejects_missing_data(tmp_path, database_url):
    result = run_nessa(["align", "train", "--train-dir", str(tmp_path / "nowhere"), "--name", "x"],
                       database_url, tmp_path, check_ok=False)
    assert result.returncode != 0 and "training data not found" in result.stderr


def test_bad_setting_is_a_clear_error(tmp_path):
    env = {**os.environ, "NESSA_PORT": "eighty"}
    result = subprocess.run([sys.executable, "-m", "app.cli", "db", "current"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "NESSA_PORT" in result.stderr


@pytest.mark.data
def test_simulate_then_diarize_eval(tmp_path, database_url):
    from tests.conftest import requires_shared_data

    source = requires_shared_data("librispeech", "test-other")
    run_nessa(["db", "upgrade"], database_url, tmp_path)
    out = tmp_path / "sim"
    simulated = run_nessa(["simulate", str(source), "--out", str(out), "--conversations", "1", "--speakers", "2",
                           "--turns", "6"], database_url, tmp_path)
    assert "2 speakers" in simulated.stdout
    rttm = (out / "sim000.rttm").read_text().splitlines()
    assert rttm and all(line.split()[0] == "SPEAKER" and len(line.split()) == 10 for line in rttm)
    assert len({line.split()[7] for line in rttm}) == 2
    report = tmp_path / "report.json"
    scored = run_nessa(["diarize-eval", str(out), "--json", str(report)], database_url, tmp_path)
    assert "| sim000 | 2/" in scored.stdout and "real-time factor" in scored.stdout
    import json

    totals = json.loads(report.read_text())["totals"]
    assert 0 <= totals["der@0.25"] < 0.5  # two clean speakers: far from chance
    missing = run_nessa(["diarize-eval", str(tmp_path / "nowhere")], database_url, tmp_path, check_ok=False)
    assert missing.returncode != 0 and "no such folder" in missing.stderr
