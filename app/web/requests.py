"""Reading a request's inputs into their declared shapes (app.web.schemas): the body's
content type and framing first, then unknown and missing names, then each field's check."""
from __future__ import annotations

from flask import request

from app.errors import bad_request
from app.web.inputs import parse_json
from app.web.schemas import Body, Form, Query


def parse_body(shape: type[Body]) -> Body:
    raw = request.get_data(cache=True)
    if shape.optional and not raw:
        data = {}
    else:
        if not request.is_json:
            raise bad_request("invalid_content_type", "Send a JSON body with Content-Type: application/json.",
                              content_type=request.content_type)
        data = parse_json(raw or b"")
        if not isinstance(data, dict):
            raise bad_request("invalid_json", "The JSON body must be an object.", type=type(data).__name__)
    fields = shape.model_fields
    _refuse_unknown_or_missing("Unknown or missing fields.", allowed=set(fields), given=set(data),
                               required=_required(shape))
    return shape.model_validate(data)


def parse_form(shape: type[Form]) -> Form:
    if not request.mimetype or not request.mimetype.startswith("multipart/form-data"):
        raise bad_request("invalid_content_type", "Send multipart/form-data with the audio in the 'audio' field.",
                          content_type=request.content_type)
    if None in request.form or None in request.files:
        raise bad_request("invalid_multipart", "Every part of a multipart body needs a name "
                          "(Content-Disposition: form-data; name=...).")
    files, fields = shape.files, set(shape.model_fields) - shape.files
    # a file where a field belongs (or the reverse) is as unknown as a made-up name
    unknown = sorted((set(request.form) - fields) | (set(request.files) - files))
    present = (set(request.form) & fields) | (set(request.files) & files)
    missing = sorted(_required(shape) - present)
    if unknown or missing:
        raise bad_request("invalid_fields", "Unknown or missing form fields.", unknown=unknown, missing=missing,
                          allowed=sorted(shape.model_fields))
    data = {name: request.files.getlist(name) if name in shape.repeated else request.files[name]
            for name in files if name in request.files}
    data.update({name: request.form.getlist(name) if name in shape.repeated else request.form[name]
                 for name in fields if name in request.form})
    return shape.model_validate(data)


def parse_query(shape: type[Query]) -> Query:
    return shape.model_validate({name: request.args[name] for name in shape.model_fields if name in request.args})


def _required(shape) -> set[str]:
    return {name for name, field in shape.model_fields.items() if field.is_required()}


def _refuse_unknown_or_missing(message: str, *, allowed: set, given: set, required: set) -> None:
    unknown, missing = sorted(given - allowed), sorted(required - given)
    if unknown or missing:
        raise bad_request("invalid_fields", message, unknown=unknown, missing=missing, allowed=sorted(allowed))
