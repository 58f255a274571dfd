"""The application factory: ``create_app(settings)``."""
from __future__ import annotations

import threading
import time

from flask import Flask, g, request

from app.settings import Settings
from app.web import diarization, jobs, keys, recognition, registry, speakers, system
from app.web.errors import register_error_handlers
from app.web.inputs import URL_CONVERTERS
from app.web.metrics import Metrics, method_label
from app.web.serving import MULTIPART_ALLOWANCE_BYTES

#: one blueprint per resource; /v1/openapi.json documents what they declare
BLUEPRINTS = (system.bp, speakers.bp, jobs.bp, recognition.bp, diarization.bp, keys.bp, registry.bp)


def create_app(settings: Settings | None = None, *, services=None, start_worker: bool | None = None) -> Flask:
    from app.services.container import Services

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Leave room for multipart framing; the exact audio limit is checked by the service.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + MULTIPART_ALLOWANCE_BYTES
    app.json.sort_keys = False
    services = services or Services(settings)
    services.prepare()  # the registry's start-up writes, once per Services
    app.extensions["nessa"] = services
    app.extensions["nessa_metrics"] = metrics = Metrics(services.gallery.sizes)

    app.url_map.converters.update(URL_CONVERTERS)  # before the routes that use them
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_error_handlers(app, settings.max_upload_bytes)
    _register_metrics_hooks(app, metrics)

    if start_worker if start_worker is not None else settings.in_process_worker:
        _start_in_process_worker(app, services)
    return app


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
