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

import os
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


@pytest.fixture(scope="module")
def server_port(tmp_path_factory):
    """A real `nessa serve` on a free loopback port and a freshly migrated SQLite database."""
    tmp = tmp_path_factory.mktemp("serving")
    env = {**os.environ, "NESSA_DATA_DIR": str(tmp / "data"), "NESSA_DATABASE_URL": "",
           "NESSA_IN_PROCESS_WORKER": "false", "NESSA_HTTP_CONNECTION_LIMIT": "1000",
           "NESSA_HTTP_CHANNEL_TIMEOUT_SECONDS": str(CHANNEL_TIMEOUT_S),
           "NESSA_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES), "PYTHONUNBUFFERED": "1"}
    upgrade = subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    port, log_path = _free_port(), tmp / "serve.log"
    with open(log_path, "wb") as log:
        # own process group: killing it ends everything the command started
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_until_serving(process, port, log_path)
        yield port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


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
