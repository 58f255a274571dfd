"""Bounds on client input, declared once (the handlers and the OpenAPI document read
them), and the checks that apply them before anything reaches a database or a parser
that could fail with a 500."""
from __future__ import annotations

import json
import math
import re
import unicodedata

from werkzeug.exceptions import NotFound
from werkzeug.routing import BaseConverter

from app.errors import ApiError, bad_request

#: Row ids are INTEGER columns: 32-bit on PostgreSQL, 64-bit on SQLite. Ids beyond the
#: smaller range cannot exist on either, so they are refused before any query is made.
MAX_ID = 2**31 - 1
#: names, external ids, model and alignment names, paths
MAX_TEXT = 200
#: every JSON body of this API is a handful of short fields
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16
#: ids in `candidates` (one query parameter each in an IN clause)
MAX_CANDIDATES = 1000
#: what text_field accepts, for the OpenAPI document: printable, at least one non-blank
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
#: a path segment naming a model or an alignment: no slash, no control character
NAME_PATTERN = r"[^/\x00-\x1f\x7f-\x9f]{1,%d}" % MAX_TEXT


class IdConverter(BaseConverter):
    """`<id:name>`: a row id. Above MAX_ID it is a 404 before any query (the database
    driver would overflow). Raised here rather than failing the match, which would let a
    route at the same path with another method answer 405."""

    regex = r"\d+"
    weight = 50

    def to_python(self, value: str) -> int:
        if len(value) > len(str(MAX_ID)) or int(value) > MAX_ID:
            raise NotFound(f"No such id: ids are at most {MAX_ID}.")
        return int(value)

    def to_url(self, value) -> str:
        return str(int(value))


class NameConverter(BaseConverter):
    """`<name:name>`: a model or alignment name as a path segment (NUL cannot reach
    PostgreSQL)."""

    regex = NAME_PATTERN


URL_CONVERTERS = {"id": IdConverter, "name": NameConverter}


# -- scalars -------------------------------------------------------------------------
_INT_TEXT = re.compile(r"\s*[+-]?\d{1,18}\s*")


def as_int(value) -> int | None:
    """An integer from a JSON number or a form/query string, or None. Floats count only
    when integral and finite (1e400 is infinity, not an id); booleans never."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    return None


def has_unsafe_characters(text: str) -> bool:
    """Control characters (NUL included: PostgreSQL text cannot hold it) and lone
    surrogates (not encodable as UTF-8, so no database can store them)."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def text_field(value, field: str, *, strip: bool = False) -> str:
    """A string of 1..MAX_TEXT characters, not all blank, without control characters
    (TEXT_PATTERN); returned stripped with `strip`."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or has_unsafe_characters(value):
        raise bad_request("invalid_field", f"'{field}' must be a string of 1-{MAX_TEXT} characters, not blank, "
                          "without control characters.", field=field)
    return value.strip() if strip else value


# -- JSON ----------------------------------------------------------------------------
def parse_json(raw: bytes | str, field: str | None = None):
    """Parse a client's JSON (the request body, or the form field `field`) with bounded
    size and nesting. NaN, Infinity and numbers that overflow to infinity are refused (JSON
    has none of them), and so are strings that no database can store (lone surrogates, NUL)."""
    where = {"field": field} if field else {}
    if len(raw) > MAX_JSON_BYTES:
        status = 400 if field else 413  # an oversized field is a bad field, not a bad upload
        raise ApiError(status, "json_too_large", f"JSON is limited to {MAX_JSON_BYTES} bytes.",
                       {"max_bytes": MAX_JSON_BYTES, **where})
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep(where)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request("invalid_json", f"{_name(field)} is not valid JSON.", error=str(exc), **where)
    _check_tree(value, 0, where)
    return value


def _name(field: str | None) -> str:
    return f"'{field}'" if field else "The request body"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number out of range: {text[:20]}")
    return number


def _too_deep(where: dict) -> ApiError:
    return bad_request("json_too_deep", f"JSON may nest at most {MAX_JSON_DEPTH} levels.",
                       max_depth=MAX_JSON_DEPTH, **where)


def _check_tree(value, depth: int, where: dict) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _too_deep(where)
    if isinstance(value, dict):
        for key, item in value.items():
            _check_string(key, where)
            _check_tree(item, depth + 1, where)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1, where)
    elif isinstance(value, str):
        _check_string(value, where)


def _check_string(text: str, where: dict) -> None:
    if "\x00" in text or any(unicodedata.category(c) == "Cs" for c in text):
        raise bad_request("invalid_json", "JSON strings may not contain NUL or unpaired surrogate escapes.",
                          **where)
