"""Every error the API answers, rendered in one place as ``{code, message, detail}``:
ApiError from any layer, HTTP errors from routing and framing, and failures of ours (a
request id that finds them in the log, nothing about them for the client)."""
from __future__ import annotations

import logging
import uuid

import pydantic
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from app.errors import ApiError, bad_request

log = logging.getLogger(__name__)


def register_error_handlers(app: Flask, max_upload_bytes: int) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        detail = {}
        if exc.code == 413:
            code = "upload_too_large"
            detail = {"max_bytes": max_upload_bytes}
        return jsonify({"code": code, "message": exc.description, "detail": detail}), exc.code

    @app.errorhandler(pydantic.ValidationError)
    def invalid_input(exc: pydantic.ValidationError):
        # the declared field checks raise ApiError themselves; this is pydantic's own
        # refusal of a value no check saw
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        return api_error(bad_request("invalid_field", f"'{field}': {first['msg']}", field=field))

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
