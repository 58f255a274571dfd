"""The application factory: ``create_app(settings)``."""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.errors import ApiError
from app.metrics import Metrics
from app.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, services=None, start_worker: bool | None = None) -> Flask:
    from app.services.container import Services

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Leave room for multipart framing; the exact audio limit is checked by the service.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 64 * 1024
    app.json.sort_keys = False
    services = services or Services(settings)
    app.extensions["nessa"] = services
    app.extensions["nessa_metrics"] = metrics = Metrics(services.gallery.sizes)

    from app.api.v1 import bp as v1

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

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"code": "internal_error", "message": "Internal server error.",
                        "detail": {"type": type(exc).__name__}}), 500


def _register_metrics_hooks(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def record(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        metrics.latency.labels(request.method, endpoint).observe(elapsed)
        return response


def _start_in_process_worker(app: Flask, services) -> None:
    from app.worker import build_worker

    worker = build_worker(services)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), name="nessa-worker", daemon=True)
    thread.start()
    app.extensions["nessa_worker"] = (worker, stop, thread)
