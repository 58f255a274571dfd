"""Service endpoints that need no key: health, Prometheus metrics, the OpenAPI document
and the interactive API page (Swagger UI from the swagger-ui-bundle package, no CDN)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from swagger_ui_bundle import swagger_ui_path

from app.errors import ApiError
from app.services.health import health as health_report
from app.web.openapi import openapi_document
from app.web.operations import PUBLIC, Reply, operation
from app.web.schemas import Health, OpenApiDocument

bp = Blueprint("system", __name__)

#: what the page loads from the package; nothing else there is served
DOCS_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png")
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>NESSA API</title>
  <link rel="stylesheet" href="/v1/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/v1/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/v1/docs/swagger-ui-bundle.js"></script>
  <script src="/v1/docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/v1/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                                 presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
                                 layout: "StandaloneLayout"});
  </script>
</body>
</html>
"""


@operation(bp, "GET", "/v1/health", access=PUBLIC, replies=Reply(200, Health),
           summary="Liveness and index sizes (no key needed)")
def health():
    return jsonify(health_report(current_app.extensions["nessa"]))


@operation(bp, "GET", "/metrics", access=PUBLIC,
           replies=Reply(200, description="Prometheus text exposition", media=("text/plain",)),
           summary="Prometheus metrics (no key needed)")
def metrics():
    current_app.extensions["nessa"].gallery.sync()
    registry = current_app.extensions["nessa_metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@operation(bp, "GET", "/v1/openapi.json", access=PUBLIC, replies=Reply(200, OpenApiDocument, "OpenAPI 3.1"),
           summary="This document (no key needed)")
def openapi():
    return jsonify(openapi_document(current_app.iter_blueprints()))


@operation(bp, "GET", "/v1/docs", access=PUBLIC,
           replies=Reply(200, description="The interactive API page (Swagger UI)", media=("text/html",)),
           summary="Try the API in a browser (no key needed to open it)")
def docs():
    return Response(DOCS_PAGE, mimetype="text/html")


@operation(bp, "GET", "/v1/docs/<asset>", access=PUBLIC, errors=("404",),
           path_schemas={"asset": {"type": "string", "enum": list(DOCS_ASSETS)}},
           replies=Reply(200, description="A script, style sheet or icon of the page",
                         media=("text/css", "text/javascript", "image/png")),
           summary="The interactive page's scripts and styles")
def docs_asset(asset: str):
    if asset not in DOCS_ASSETS:
        raise ApiError(404, "not_found", "No such file of the API page.", {"asset": asset})
    return send_from_directory(swagger_ui_path, asset, max_age=86400)
