"""The field types of requests: each declares its check and its JSON Schema together, so
validation and /v1/openapi.json cannot disagree. Checks raise the API's own errors
(``invalid_field`` and friends, naming the field), which pydantic lets through unchanged."""
from __future__ import annotations

from typing import Annotated, Any, Callable

from pydantic import PlainValidator, ValidationInfo, WithJsonSchema

from app.errors import bad_request
from nessa.calibration import FAR_TARGETS, threshold_name
from app.web.inputs import MAX_CANDIDATES, MAX_ID, MAX_TEXT, TEXT_PATTERN, as_int, parse_json, text_field


def _declared(python_type, check: Callable[[Any, str], Any], schema: dict, *, nullable: bool = False):
    """A field type: `check(value, field_name)` validates and converts, `schema` documents.
    A nullable field takes JSON null as "not given"."""
    def validate(value, info: ValidationInfo):
        if nullable and value is None:
            return None
        return check(value, info.field_name)

    if nullable:
        schema = {**schema, "type": [schema["type"], "null"]}
        python_type = python_type | None
    return Annotated[python_type, PlainValidator(validate), WithJsonSchema(schema)]


# -- numbers -------------------------------------------------------------------------
def integer_in(value, field: str, minimum: int, maximum: int) -> int:
    number = as_int(value)
    if number is None:
        raise bad_request("invalid_field", f"'{field}' must be an integer.", field=field, value=value)
    if not minimum <= number <= maximum:
        raise bad_request("invalid_field", f"'{field}' must be between {minimum} and {maximum}.",
                          field=field, value=number)
    return number


def integer_schema(minimum: int, maximum: int) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def Integer(minimum: int, maximum: int, *, nullable: bool = False):  # noqa: N802 (a type)
    """An integer in [minimum, maximum], from a JSON number or a form/query string."""
    return _declared(int, lambda v, f: integer_in(v, f, minimum, maximum), integer_schema(minimum, maximum),
                     nullable=nullable)


RowId = Integer(1, MAX_ID)


def _non_negative(value, field: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise bad_request("invalid_field", f"'{field}' must be a non-negative number.", field=field)
    return float(value)


NonNegative = _declared(float, _non_negative, {"type": "number", "minimum": 0}, nullable=True)


def _flag(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request("invalid_field", f"'{field}' must be true or false.", field=field)
    return value


Flag = _declared(bool, _flag, {"type": "boolean"})


def _far_target(value, field: str) -> float:
    try:
        threshold_name(float(value))
        return float(value)
    except (TypeError, ValueError):
        raise bad_request("invalid_field", f"'{field}' must be one of {_FAR_CHOICES}.", field=field, value=value)


_FAR_CHOICES = sorted(FAR_TARGETS.values(), reverse=True)
#: a false-accept rate the calibrations carry a threshold for
FarTarget = _declared(float, _far_target, {"type": "number", "enum": _FAR_CHOICES,
                                           "description": "the false-accept rate to decide at "
                                                          "(default: the service's NESSA_FAR_TARGET)"})


# -- text ----------------------------------------------------------------------------
#: a name or external id: printable (no control characters), not blank
TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN}

#: kept as sent (external ids are opaque to us)
Text = _declared(str, text_field, TEXT_SCHEMA)
OptionalText = _declared(str, text_field, TEXT_SCHEMA, nullable=True)
#: names and paths: surrounding blanks dropped
Name = _declared(str, lambda v, f: text_field(v, f, strip=True), TEXT_SCHEMA)
OptionalName = _declared(str, lambda v, f: text_field(v, f, strip=True), TEXT_SCHEMA, nullable=True)


def NameOr(default: str):  # noqa: N802 (a type)
    """A name, or `default` when left empty."""
    return _declared(str, lambda v, f: text_field(v, f, strip=True) if v else default, TEXT_SCHEMA)


def described(field_type, description: str):
    """`field_type` with a description in the document."""
    return Annotated[field_type, WithJsonSchema({**_schema_of(field_type), "description": description})]


def _schema_of(field_type) -> dict:
    return next(m.json_schema for m in reversed(field_type.__metadata__) if isinstance(m, WithJsonSchema))


# -- lists ---------------------------------------------------------------------------
def _strings(value, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad_request("invalid_field", f"'{field}' must be a list of strings.", field=field)
    return value


def StringList(schema: dict):  # noqa: N802 (a type)
    """A list of strings; which strings are allowed is the service's to say (`schema` tells)."""
    return _declared(list, _strings, schema)


def _candidate_ids(values: list[str], field: str) -> list[int]:
    """Ids as repeated form fields, comma-separated lists or JSON arrays."""
    items: list = []
    for value in values:
        value = value.strip()
        if value.startswith("["):
            parsed = parse_json(value, field)
            items.extend(parsed if isinstance(parsed, list) else [parsed])
        else:
            items.extend(v for v in value.split(",") if v.strip())
        if len(items) > MAX_CANDIDATES:
            raise bad_request("invalid_field", f"'{field}' holds at most {MAX_CANDIDATES} ids.", field=field)
    ids = [integer_in(item, field, 1, MAX_ID) for item in items]
    if not ids:
        raise bad_request("invalid_field", f"'{field}' is empty.", field=field)
    return ids


def SpeakerIds(description: str):  # noqa: N802 (a type)
    """Speaker ids in a multipart form (the form parser hands over every value of the field)."""
    return _declared(list, _candidate_ids, {"type": "array", "items": integer_schema(1, MAX_ID), "minItems": 1,
                                             "maxItems": MAX_CANDIDATES, "description": description})


def _durations(value, field: str) -> list[float]:
    if (not isinstance(value, list) or len(value) > 5
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0.5 <= c <= 30 for c in value)):
        raise bad_request("invalid_field", f"'{field}' must be a list of at most 5 durations in seconds (0.5-30).",
                          field=field)
    return [float(c) for c in value]


Durations = _declared(list, _durations, {"type": "array", "maxItems": 5,
                                         "items": {"type": "number", "minimum": 0.5, "maximum": 30}}, nullable=True)


# -- uploads -------------------------------------------------------------------------
_AUDIO_SCHEMA = {"type": "string", "format": "binary",
                 "description": "WAV, FLAC, OGG (MP3 where libsndfile reads it); any rate and channels."}
AudioFile = _declared(object, lambda upload, field: upload, _AUDIO_SCHEMA)
#: clips in one POST /v1/identify/batch (their audio together is bounded too, by duration)
MAX_BATCH_CLIPS = 64


def _audio_files(uploads, field: str) -> list:
    if not isinstance(uploads, list) or not 1 <= len(uploads) <= MAX_BATCH_CLIPS:
        raise bad_request("invalid_field", f"Send 1 to {MAX_BATCH_CLIPS} '{field}' parts.", field=field,
                          count=len(uploads) if isinstance(uploads, list) else None)
    return uploads


AudioFiles = _declared(list, _audio_files, {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_CLIPS,
                                            "items": _AUDIO_SCHEMA,
                                            "description": "the clips, each in its own 'audio' part"})
