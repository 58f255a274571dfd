"""The HTTP server: waitress, configured from Settings (`nessa serve`).

waitress reads every request, body included, in its one asynchronous I/O thread and hands
it to a request thread only once it is complete (``HTTPChannel.received`` queues a task
when ``request.completed``; waitress/channel.py). A client that sends headers and then
stalls therefore holds a connection, never a request thread. What bounds such clients:
``connection_limit`` (open connections before waitress stops accepting) and
``channel_timeout`` (a connection silent this long, with no request running, is closed;
``server.maintenance`` checks every ``cleanup_interval``).

Several processes (``NESSA_WEB_WORKERS``): one Python process serves requests on about one
core (the GIL), so the parent binds the listening socket and forks that many children, each
a complete waitress server with its own models, profile index and database pool on the
shared socket (the kernel hands each connection to one of them). The parent only supervises:
a child that dies is replaced, and SIGTERM or SIGINT stops them all. It forks before any
model, thread pool or database connection exists in it, so the children start clean.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import time
from typing import Callable

from app.settings import Settings

#: room for multipart framing around the audio (also in Flask's MAX_CONTENT_LENGTH, app/web/factory.py)
MULTIPART_ALLOWANCE_BYTES = 64 * 1024
#: read uploads in 64 KiB pieces: fewer trips through the I/O loop than waitress's 8 KiB
RECV_BYTES = 64 * 1024


def waitress_options(settings: Settings, threads: int | None = None) -> dict:
    """Keyword arguments for ``waitress.serve`` (``host`` and ``port``: one process)."""
    timeout = max(1, math.ceil(settings.http_channel_timeout_seconds))
    return {
        "host": settings.host,
        "port": settings.port,
        "threads": threads or settings.web_threads,
        "connection_limit": settings.http_connection_limit,
        "channel_timeout": timeout,
        # waitress looks for silent connections every 30 s by default, late for a short
        # timeout: look twice per timeout, so one goes within 1.5 timeouts (plus a second)
        "cleanup_interval": max(1, min(30, timeout // 2)),
        # select() cannot watch descriptors above 1023; the connection limit may pass that
        "asyncore_use_poll": True,
        # a body Flask would refuse is refused (413) from its declared length, unbuffered;
        # waitress refuses lengths >= this, Flask those > MAX_CONTENT_LENGTH
        "max_request_body_size": settings.max_upload_bytes + MULTIPART_ALLOWANCE_BYTES + 1,
        "recv_bytes": RECV_BYTES,
        "ident": "nessa",
    }


def serve(app, settings: Settings, threads: int | None = None) -> None:
    """Serve ``app`` in this process until it is stopped."""
    from waitress import serve as waitress_serve

    waitress_serve(app, **waitress_options(settings, threads))


#: a child that dies sooner than this after its start is restarted only after a pause, and
#: after this many such deaths in a row the server gives up (a child that cannot start)
RESTART_PAUSE_S, MAX_QUICK_DEATHS = 2.0, 5


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this child when the parent dies (kill -9 included), so
    no orphaned server keeps the port (Linux prctl PR_SET_PDEATHSIG; elsewhere not needed)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def serve_processes(make_app: Callable[[int], object], settings: Settings, workers: int,
                    threads: int | None = None) -> int:
    """Serve with ``workers`` forked processes on one listening socket until SIGTERM or
    SIGINT; ``make_app(index)`` builds each child's application (index 0 first). Returns
    the exit status."""
    from waitress import serve as waitress_serve

    listener = socket.create_server((settings.host, settings.port), backlog=2048)
    options = {k: v for k, v in waitress_options(settings, threads).items() if k not in ("host", "port")}
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
    stopping, quick_deaths, status = False, 0, 0

    def spawn(index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: a whole server, default signal handling
            status = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                _die_with_parent(parent)
                waitress_serve(make_app(index), sockets=[listener], **options)
                status = 0
            finally:
                os._exit(status)
        children[pid] = (index, time.monotonic())

    def stop(*_) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    for index in range(workers):
        spawn(index)
    while children:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index, started = children.pop(pid, (None, 0.0))
        if stopping or index is None:
            continue
        quick_deaths = quick_deaths + 1 if time.monotonic() - started < RESTART_PAUSE_S else 0
        if quick_deaths >= MAX_QUICK_DEATHS:
            print(f"nessa serve: server processes keep failing at start ({quick_deaths} in a row); stopping",
                  flush=True)
            stop()
            status = 1
            continue
        if quick_deaths:
            time.sleep(RESTART_PAUSE_S)
        print(f"nessa serve: server process {index} (pid {pid}) exited; starting another", flush=True)
        spawn(index)
    listener.close()
    return status
