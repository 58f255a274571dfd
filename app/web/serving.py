"""The HTTP server: waitress, configured from Settings (`nessa serve`).

waitress reads every request, body included, in its one asynchronous I/O thread and hands
it to a request thread only once it is complete (``HTTPChannel.received`` queues a task
when ``request.completed``; waitress/channel.py). A client that sends headers and then
stalls therefore holds a connection, never a request thread. What bounds such clients:
``connection_limit`` (open connections before waitress stops accepting) and
``channel_timeout`` (a connection silent this long, with no request running, is closed;
``server.maintenance`` checks every ``cleanup_interval``).
"""
from __future__ import annotations

import math

from app.settings import Settings

#: room for multipart framing around the audio (also in Flask's MAX_CONTENT_LENGTH, app/web/factory.py)
MULTIPART_ALLOWANCE_BYTES = 64 * 1024
#: read uploads in 64 KiB pieces: fewer trips through the I/O loop than waitress's 8 KiB
RECV_BYTES = 64 * 1024


def waitress_options(settings: Settings, threads: int | None = None) -> dict:
    """Keyword arguments for ``waitress.serve``."""
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
    """Serve ``app`` until the process is stopped."""
    from waitress import serve as waitress_serve

    waitress_serve(app, **waitress_options(settings, threads))
