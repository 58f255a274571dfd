"""`nessa serve` against clients that open uploads and never finish them.

waitress buffers request bodies in its I/O thread, so a stalled upload holds a connection,
not a request thread: with 120 of them open (above waitress's default limit of 100
connections) `/v1/health` still answers at once, and each stalled connection is closed
after NESSA_HTTP_CHANNEL_TIMEOUT_SECONDS.

The server runs on its own SQLite database whatever NESSA_TEST_DATABASE says (what is
tested is the HTTP server, not the database), so the module runs once: ``models_only``
keeps it out of the PostgreSQL pass.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from app.web import serving
from app.cli import build_parser
from app.settings import Settings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.models_only

HALF_OPEN_CONNECTIONS = 120
CHANNEL_TIMEOUT_S = 3
#: above the stalled uploads' declared 10 MB, so that waitress waits for their bodies
MAX_UPLOAD_BYTES = 20_000_000
#: headers of an upload that declares 10 MB, then a few bytes of it; the rest never comes
STALLED_UPLOAD = (b"POST /v1/identify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 10000000\r\n\r\n--x\r\n")


def test_serve_options_come_from_settings():
    settings = Settings(web_threads=3, http_connection_limit=500, http_channel_timeout_seconds=2.5,
                        max_upload_bytes=1000)
    assert build_parser(settings).parse_args(["serve"]).threads == 3
    assert build_parser(settings).parse_args(["serve", "--threads", "5"]).threads == 5
    options = serving.waitress_options(settings, threads=5)
    assert options["threads"] == 5 and serving.waitress_options(settings)["threads"] == 3
    assert options["connection_limit"] == 500
    assert options["channel_timeout"] == 3 and options["cleanup_interval"] == 1
    assert options["max_request_body_size"] == 1000 + serving.MULTIPART_ALLOWANCE_BYTES + 1
    assert options["asyncore_use_poll"] is True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _health(port: int, timeout: float) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=timeout) as response:
            return response.status
    except OSError:
        return None


def _wait_until_serving(process: subprocess.Popen, port: int, log_path) -> None:
    deadline = time.monotonic() + 90
    while _health(port, timeout=2) != 200:
        assert process.poll() is None, log_path.read_text(errors="replace")
        assert time.monotonic() < deadline, "the server never answered\n" + log_path.read_text(errors="replace")
        time.sleep(0.2)


def _environment(tmp) -> dict:
    return {**os.environ, "NESSA_DATA_DIR": str(tmp / "data"), "NESSA_DATABASE_URL": "",
            "NESSA_IN_PROCESS_WORKER": "false", "NESSA_HTTP_CONNECTION_LIMIT": "1000",
            "NESSA_HTTP_CHANNEL_TIMEOUT_SECONDS": str(CHANNEL_TIMEOUT_S),
            "NESSA_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES), "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def _server(tmp, *arguments: str):
    """A real `nessa serve` on a free loopback port and a freshly migrated SQLite database:
    (its process, the port, its log)."""
    env = _environment(tmp)
    upgrade = subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    port, log_path = _free_port(), tmp / "serve.log"
    with open(log_path, "wb") as log:
        # own process group: killing it ends everything the command started
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), *arguments],
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_until_serving(process, port, log_path)
        yield process, port, log_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-processes"])
def server_port(request, tmp_path_factory):
    """The slow-client defences hold in each server process alike."""
    with _server(tmp_path_factory.mktemp("serving"), "--workers", str(request.param)) as (_, port, _):
        yield port


def _open_stalled_uploads(port: int, count: int) -> list[socket.socket]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sockets.append(sock)
            sock.sendall(STALLED_UPLOAD)
    except BaseException:
        _close(sockets)
        raise
    return sockets


def _close(sockets) -> None:
    for sock in sockets:
        sock.close()


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True  # nothing to read and not closed
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_health_answers_while_uploads_stall_and_stalled_uploads_are_dropped(server_port):
    sockets = _open_stalled_uploads(server_port, HALF_OPEN_CONNECTIONS)
    try:
        started = time.monotonic()
        assert _health(server_port, timeout=1.0) == 200
        assert time.monotonic() - started < 1.0
        assert all(_still_open(sock) for sock in sockets), "the stalled uploads must still be held"

        # closed once silent for the channel timeout (waitress checks every timeout / 2)
        deadline = time.monotonic() + 1.5 * CHANNEL_TIMEOUT_S + 3
        assert all(_closed_by_server(sock, deadline) for sock in sockets)
        assert _health(server_port, timeout=1.0) == 200
    finally:
        _close(sockets)


def test_a_body_over_the_upload_limit_is_refused_from_its_headers(server_port):
    declared = MAX_UPLOAD_BYTES + serving.MULTIPART_ALLOWANCE_BYTES + 1
    with socket.create_connection(("127.0.0.1", server_port), timeout=5) as sock:
        sock.sendall(STALLED_UPLOAD.replace(b"Content-Length: 10000000", b"Content-Length: %d" % declared))
        assert sock.recv(64).startswith(b"HTTP/1.1 413 ")


# -- several server processes (NESSA_WEB_WORKERS) ---------------------------------------------
def _children(pid: int) -> set[int]:
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie left for an absent reaper is not)."""
    try:
        return (pathlib.Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_server_processes_are_replaced_when_killed_and_end_with_their_parent(tmp_path):
    """kill -9 of one server process: the parent starts another and the port keeps answering;
    kill -9 of the parent: no orphaned server process keeps the port."""
    with _server(tmp_path, "--workers", "2") as (process, port, log_path):
        assert _wait_for(lambda: len(_children(process.pid)) == 2, 30), log_path.read_text(errors="replace")
        first = _children(process.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        assert _wait_for(lambda: len(_children(process.pid)) == 2 and victim not in _children(process.pid), 30)
        _wait_until_serving(process, port, log_path)
        assert all(_health(port, timeout=5) == 200 for _ in range(8))
        assert "server process" in log_path.read_text(errors="replace")

        survivors = _children(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert _wait_for(lambda: not any(_alive(pid) for pid in survivors), 15)
        assert _health(port, timeout=1) is None


def test_the_parent_stops_its_server_processes_on_sigterm(tmp_path):
    with _server(tmp_path, "--workers", "2") as (process, port, log_path):
        assert _wait_for(lambda: len(_children(process.pid)) == 2, 30)
        children = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert _wait_for(lambda: not any(_alive(pid) for pid in children), 15)
        assert _health(port, timeout=1) is None
