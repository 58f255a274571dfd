"""`operation`: one declaration per API operation — its route, who may call it, the shapes
of its inputs and replies — from which the handler gets validated inputs and
/v1/openapi.json gets its entry."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from flask import Blueprint

from app.web.auth import check_scope, require_any_key
from app.web.requests import parse_body, parse_form, parse_query

#: who may call: nobody needs a key, any valid key (the view decides), or a key with a scope
PUBLIC, ANY_KEY = "public", "any-key"


@dataclasses.dataclass(frozen=True)
class Reply:
    """One successful answer: a JSON shape (None: no JSON) and/or other media types."""
    status: int
    shape: type | None = None
    description: str = "OK"
    media: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    rule: str
    endpoint: str
    summary: str
    access: str
    replies: tuple[Reply, ...]
    #: error statuses beyond those implied by access and inputs (401/403, 400, 413)
    errors: tuple[str, ...] = ()
    body: type | None = None
    form: type | None = None
    query: type | None = None
    #: schemas of path variables the URL converters do not describe
    path_schemas: dict | None = None

    @property
    def secured(self) -> bool:
        return self.access != PUBLIC


def operations(blueprint: Blueprint) -> list[Operation]:
    """The operations declared on `blueprint`, in declaration order."""
    return blueprint.__dict__.setdefault("api_operations", [])


def operation(blueprint: Blueprint, method: str, rule: str, *, summary: str, access: str,
              replies: tuple[Reply, ...] | Reply, errors: tuple[str, ...] = (), body=None, form=None, query=None,
              guard: Callable | None = None, path_schemas: dict | None = None):
    """Route `method rule` to the decorated view. The view receives the path variables and,
    as declared, `body`, `form` and `query` already validated. `guard(**path variables)`
    runs after authorization and before the inputs are read (404 before an upload is parsed)."""
    replies = replies if isinstance(replies, tuple) else (replies,)

    def decorator(view):
        @functools.wraps(view)
        def handler(**path):
            if guard is not None:
                guard(**path)
            inputs = {}
            if query is not None:
                inputs["query"] = parse_query(query)
            if body is not None:
                inputs["body"] = parse_body(body)
            if form is not None:
                inputs["form"] = parse_form(form)
            return view(**path, **inputs)

        routed = _authorized(handler, access)
        blueprint.add_url_rule(rule, view.__name__, routed, methods=[method])
        operations(blueprint).append(Operation(
            method=method.lower(), rule=rule, endpoint=view.__name__, summary=summary, access=access,
            replies=replies, errors=errors, body=body, form=form, query=query, path_schemas=path_schemas))
        return routed

    return decorator


def _authorized(handler, access: str):
    if access == PUBLIC:
        return handler
    if access == ANY_KEY:
        return require_any_key(handler)

    @functools.wraps(handler)
    def scoped(**path):
        check_scope(access)
        return handler(**path)

    return scoped
