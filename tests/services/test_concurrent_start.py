"""A fresh deployment starts cleanly however many processes start at once: `nessa serve`
and workers started together on a newly migrated database all stay up, and the registry
holds exactly one bootstrap deployment and no duplicate rows."""
from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import sqlalchemy as sa

from tests.conftest import REPO_ROOT, make_settings

#: seconds every process must stay up once the server answers
STAY_UP_SECONDS = 4


def _registry_counts(database_url: str) -> dict:
    from app.store import db, models

    engine = db.make_engine(database_url)
    try:
        with db.make_session_factory(engine)() as session:
            def names(column):
                return collections.Counter(session.scalars(sa.select(column)))

            return {"deployments": session.scalar(sa.select(sa.func.count()).select_from(models.Deployment)),
                    "models": names(models.ModelVersion.name),
                    "alignments": names(models.AlignmentArtifact.name),
                    "register_events": collections.Counter(session.execute(
                        sa.select(models.RegistryEvent.subject_kind, models.RegistryEvent.subject)
                        .filter_by(action="register")).all())}
    finally:
        engine.dispose()


def _assert_one_of_each(counts: dict) -> None:
    assert counts["deployments"] == 1
    assert counts["models"] and max(counts["models"].values()) == 1
    assert counts["alignments"] and max(counts["alignments"].values()) == 1
    assert max(counts["register_events"].values()) == 1  # each registration audited once


def test_building_services_writes_nothing(tmp_path, database_url):
    """The registry's start-up writes are prepare()'s: a command that never prepares (keys,
    db) leaves the database as it found it."""
    from app.store import db
    from app.services.container import Services

    db.upgrade(database_url)
    Services(make_settings(tmp_path, database_url)).close()
    counts = _registry_counts(database_url)
    assert counts["deployments"] == 0 and not counts["models"] and not counts["alignments"]


def test_services_prepared_in_many_threads_at_once_bootstrap_once(tmp_path, database_url):
    from app.store import db
    from app.services.container import Services

    db.upgrade(database_url)
    settings = make_settings(tmp_path, database_url)
    barrier = threading.Barrier(4)
    built, errors = [], []

    def start():
        try:
            services = Services(settings)  # writes nothing: the start-up writes are prepare()'s
            built.append(services)
            barrier.wait(60)
            services.prepare()
        except Exception as exc:  # collected: an assert in a thread would go unnoticed
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(barrier.parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert not errors, errors
        assert len(built) == barrier.parties
        assert {services.path().deployment_id for services in built} == {1}
    finally:
        for services in built:
            services.close()
    _assert_one_of_each(_registry_counts(database_url))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _nessa(args, env, log_path) -> subprocess.Popen:
    # own process group: killing it also ends anything the command started
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as response:
            return response.status
    except OSError:
        return None


def _stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        process.wait(10)


def _logs(tmp_path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("*.log")))


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_serve_and_two_workers_start_together_on_a_fresh_database(tmp_path, database_url, attempt):
    env = {**os.environ, "NESSA_DATABASE_URL": database_url, "NESSA_DATA_DIR": str(tmp_path / "data"),
           "PYTHONUNBUFFERED": "1"}
    upgrade = subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    port = _free_port()
    processes = [_nessa(["serve", "--port", str(port)], env, tmp_path / "serve.log"),
                 _nessa(["worker"], env, tmp_path / "worker1.log"),
                 _nessa(["worker"], env, tmp_path / "worker2.log")]
    try:
        deadline = time.monotonic() + 120
        while _health(port) != 200:
            assert all(p.poll() is None for p in processes), _logs(tmp_path)
            assert time.monotonic() < deadline, "the server never answered\n" + _logs(tmp_path)
            time.sleep(0.2)
        # the workers may still be starting: each must get through its start-up too
        until = time.monotonic() + STAY_UP_SECONDS
        while time.monotonic() < until or not _workers_started(tmp_path):
            assert all(p.poll() is None for p in processes), _logs(tmp_path)
            assert time.monotonic() < deadline, "the workers never started\n" + _logs(tmp_path)
            time.sleep(0.2)
        assert _health(port) == 200
    finally:
        _stop(processes)
    _assert_one_of_each(_registry_counts(database_url))


def _workers_started(tmp_path) -> bool:
    return all(b"started (kinds" in (tmp_path / f"worker{i}.log").read_bytes() for i in (1, 2))
