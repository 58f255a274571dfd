"""The application factory: ``create_app(settings)``."""
from __future__ import annotations

import logging
import threading
import time
import uuid

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.errors import ApiError
from app.web.metrics import Metrics, method_label
from app.web.serving import MULTIPART_ALLOWANCE_BYTES
from app.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, services=None, start_worker: bool | None = None) -> Flask:
    from app.services.container import Services

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Leave room for multipart framing; the exact audio limit is checked by the service.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + MULTIPART_ALLOWANCE_BYTES
    app.json.sort_keys = False
    services = services or Services(settings)
    app.extensions["nessa"] = services
    app.extensions["nessa_metrics"] = metrics = Metrics(services.gallery.sizes)

    from app.web.inputs import URL_CONVERTERS
    from app.web.v1 import bp as v1

    app.url_map.converters.update(URL_CONVERTERS)  # before the routes that use them
    app.register_blueprint(v1)
    _register_error_handlers(app)
    _register_metrics_hooks(app, metrics)

    if start_worker if start_worker is not None else settings.in_process_worker:
        _start_in_process_worker(app, services)
    return app


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        detail = {}
        if exc.code == 413:
            code = "upload_too_large"
            detail = {"max_bytes": app.extensions["nessa"].settings.max_upload_bytes}
        return jsonify({"code": code, "message": exc.description, "detail": detail}), exc.code

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError):
        # input nested deeper than a parser could follow: the client's to fix (logged, in
        # case it is a bug of ours instead)
        detail = {"request_id": _log_failure("recursion limit", logging.WARNING)}
        return api_error(ApiError(400, "too_deeply_nested", "The request is nested too deeply to process.", detail))

    @app.errorhandler(MemoryError)
    def out_of_memory(exc: MemoryError):
        # the process recovers once this request's memory is released: a retry can succeed
        detail = {"request_id": _log_failure("out of memory")}
        return api_error(ApiError(503, "insufficient_memory", "The server could not allocate memory for this "
                                  "request; retry later or send less.", detail))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # nothing about the failure reaches the client (not even its type); the request id
        # finds it in the log
        detail = {"request_id": _log_failure("unhandled error")}
        return api_error(ApiError(500, "internal_error", "Internal server error.", detail))


def _log_failure(what: str, level: int = logging.ERROR) -> str:
    """Log the exception being handled, with its traceback and a new request id; return the id."""
    request_id = uuid.uuid4().hex
    log.log(level, "%s (request id %s) on %s %s", what, request_id, request.method, request.path, exc_info=True)
    return request_id


def _register_metrics_hooks(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def record(response):
        # labels come from closed sets (route templates, known verbs), never from the
        # request itself: made-up verbs and paths would otherwise grow /metrics forever
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        method = method_label(request.method)
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        metrics.requests.labels(method, endpoint, str(response.status_code)).inc()
        metrics.latency.labels(method, endpoint).observe(elapsed)
        return response


def _start_in_process_worker(app: Flask, services) -> None:
    from app.worker import build_worker

    worker = build_worker(services)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), name="nessa-worker", daemon=True)
    thread.start()
    app.extensions["nessa_worker"] = (worker, stop, thread)
