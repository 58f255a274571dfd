"""Bad input gets a 4xx with the error shape, never a 500 (issue #10, defects 5 and 6):
ids beyond what the databases hold, non-finite numbers, deep JSON, strings no database
can store, nameless multipart parts; error bodies that echo bounded input only and never
name an exception; /metrics labels that do not grow with made-up verbs and paths.
Every test runs on the database chosen by NESSA_TEST_DATABASE (SQLite or PostgreSQL)."""
from __future__ import annotations

import io
import json
import logging

import pytest
from werkzeug.routing import IntegerConverter

from app.web.inputs import MAX_ID, MAX_JSON_BYTES, IdConverter

TOO_BIG_IDS = [MAX_ID + 1, 2**63, 10**30]


def _assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert set(body) == {"code", "message", "detail"}, body
    if code is not None:
        assert body["code"] == code, body
    return body


def _form(client, headers, url: str, **fields):
    data = {"audio": (io.BytesIO(b"not audio"), "a.wav"), **fields}
    return client.post(url, data=data, headers=headers, content_type="multipart/form-data")


def _multipart(client, headers, url: str, parts: list[bytes]):
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts) + b"--B--\r\n"
    return client.post(url, data=body, headers=headers, content_type="multipart/form-data; boundary=B")


# -- ids -----------------------------------------------------------------------------
def test_ids_beyond_int32_are_404_on_every_id_route(harness):
    client, headers = harness.client, harness.headers("admin")
    for ident in TOO_BIG_IDS:
        for method, url in [("get", f"/v1/speakers/{ident}"), ("delete", f"/v1/speakers/{ident}"),
                            ("post", f"/v1/speakers/{ident}/enrollments"), ("get", f"/v1/jobs/{ident}"),
                            ("delete", f"/v1/keys/{ident}")]:
            # 404 whatever the method: never 405 from a sibling route, never a driver overflow
            _assert_error(getattr(client, method)(url, headers=headers), 404)


def test_the_largest_id_is_an_ordinary_miss(harness):
    client, headers = harness.client, harness.headers("admin")
    _assert_error(client.get(f"/v1/speakers/{MAX_ID}", headers=headers), 404, "speaker_not_found")
    _assert_error(client.get("/v1/jobs/0", headers=headers), 404, "job_not_found")


def test_every_integer_in_a_path_is_a_bounded_id(harness):
    for rule in harness.app.url_map.iter_rules():
        for name, converter in rule._converters.items():
            assert not isinstance(converter, IntegerConverter), f"{rule.rule}: use <id:{name}>"
            if name.endswith("_id"):
                assert isinstance(converter, IdConverter), rule.rule


@pytest.mark.parametrize("url, field", [("/v1/identify", "candidates"), ("/v1/diarize", "candidates"),
                                        ("/v1/verify", "speaker_id")])
def test_form_ids_out_of_range_or_not_integers_are_400(harness, url, field):
    for value in ["[1e400]", "1e400", "[NaN]", "[Infinity]", str(MAX_ID + 1), "[9223372036854775808]", "[1.5]",
                  "[true]", "0", "9" * 5000]:
        response = _form(harness.client, harness.headers("identify"), url, **{field: value})
        body = _assert_error(response, 400)
        assert body["code"] in ("invalid_field", "invalid_json"), (value, body)
        assert len(json.dumps(body)) < 1000


def test_too_many_candidates_is_400(harness):
    candidates = json.dumps(list(range(1, 2000)))
    _assert_error(_form(harness.client, harness.headers("identify"), "/v1/identify", candidates=candidates), 400,
                  "invalid_field")


def test_list_offset_is_bounded(harness):
    response = harness.client.get(f"/v1/speakers?offset={2**70}", headers=harness.headers("enroll"))
    _assert_error(response, 400, "invalid_field")


# -- JSON ----------------------------------------------------------------------------
def _post_json(harness, raw: bytes, url: str = "/v1/speakers"):
    return harness.client.post(url, data=raw, headers=harness.headers("admin"), content_type="application/json")


def test_deeply_nested_json_is_refused_without_recursing(harness):
    _assert_error(_post_json(harness, b"[" * 100_000), 413, "json_too_large")
    _assert_error(_post_json(harness, b"[" * (MAX_JSON_BYTES - 1)), 400, "json_too_deep")
    nested = {"name": "Ada", "external_id": None}
    for _ in range(40):
        nested = {"name": nested}
    _assert_error(_post_json(harness, json.dumps(nested).encode()), 400, "json_too_deep")
    response = _form(harness.client, harness.headers("identify"), "/v1/identify", candidates="[" * 50_000)
    _assert_error(response, 400, "json_too_deep")


def test_non_finite_json_numbers_are_400(harness):
    for raw in [b'{"name": NaN}', b'{"name": "Ada", "external_id": Infinity}', b'{"name": 1e400}',
                b'{"name": -Infinity}']:
        _assert_error(_post_json(harness, raw), 400, "invalid_json")


def test_strings_no_database_can_store_are_400(harness):
    for raw in [b'{"name": "\\ud800"}', b'{"name": "Ada\\udfff"}', b'{"name": "A\\u0000da"}',
                b'{"name": "Ada", "external_id": "x\\u0000"}', b'{"\\ud800": 1}']:
        _assert_error(_post_json(harness, raw), 400, "invalid_json")
    listing = harness.client.get("/v1/speakers", headers=harness.headers("enroll")).get_json()
    assert listing["total"] == 0


def test_control_characters_in_names_are_400(harness):
    for body in [{"name": "Ada\x07"}, {"name": "line\nbreak"}, {"name": "Ada", "external_id": "\t"},
                 {"name": "Ada", "external_id": "e\x1b[31m"}, {"name": "\u0085"}, {"name": "  "}]:
        response = harness.client.post("/v1/speakers", json=body, headers=harness.headers("enroll"))
        _assert_error(response, 400, "invalid_field")


def test_names_elsewhere_are_checked_too(harness):
    client, headers = harness.client, harness.headers("admin")
    _assert_error(client.post("/v1/keys", json={"name": "k\x00", "scopes": ["enroll"]}, headers=headers), 400)
    _assert_error(client.post("/v1/keys", json={"name": "k\x01", "scopes": ["enroll"]}, headers=headers), 400)
    _assert_error(client.post("/v1/models", json={"name": "m\x00"}, headers=headers), 400)
    _assert_error(client.post("/v1/deployments", json={"alignment": "a\x1f"}, headers=headers), 400)
    # a NUL or control character in a path segment matches no route
    _assert_error(client.post("/v1/models/ge2e%00/retire", headers=headers), 404)
    _assert_error(client.post("/v1/alignments/x%0A/retire", headers=headers), 404)


def test_a_printable_name_still_works(harness):
    speaker = harness.create_speaker("  Zoë Ŝmith-O'Brien 李  ", external_id="emp #7")
    body = harness.client.get(f"/v1/speakers/{speaker}", headers=harness.headers("enroll")).get_json()
    assert body["name"] == "Zoë Ŝmith-O'Brien 李" and body["external_id"] == "emp #7"


# -- multipart -----------------------------------------------------------------------
def test_a_multipart_part_without_a_name_is_400(harness):
    nameless = b'Content-Disposition: form-data\r\n\r\nx'
    named = b'Content-Disposition: form-data; name="top_k"\r\n\r\n3'
    audio = b'Content-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\nRIFF'
    for url in ["/v1/identify", "/v1/verify", "/v1/diarize", "/v1/speakers/1/enrollments"]:
        if url.startswith("/v1/speakers"):
            harness.create_speaker("Ada")
        for parts in ([nameless], [named, nameless, audio], [audio, nameless]):
            response = _multipart(harness.client, harness.headers("admin"), url, parts)
            _assert_error(response, 400, "invalid_multipart")


# -- error bodies --------------------------------------------------------------------
def test_error_details_echo_bounded_input_only(harness):
    client, headers = harness.client, harness.headers("admin")
    long = "x" * 2000
    unknown = {f"{long}{i}": 1 for i in range(30)}
    body = _assert_error(client.post("/v1/speakers", json={"name": "Ada", **unknown}, headers=headers), 400)
    assert len(json.dumps(body)) < 5000
    body = _assert_error(client.post("/v1/keys", json={"scopes": [long] * 30}, headers=headers), 400)
    assert len(json.dumps(body)) < 5000
    body = _assert_error(client.get(f"/v1/speakers?limit={'9' * 3000}", headers=headers), 400)
    assert len(json.dumps(body)) < 1000
    body = _assert_error(client.post("/v1/speakers", data=b"{}", headers={**headers, "Content-Type": "text/" + long}),
                         400, "invalid_content_type")
    assert len(json.dumps(body)) < 1000


def test_a_500_names_no_exception_but_a_request_id_found_in_the_log(harness, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("internal detail /secret/path")

    monkeypatch.setattr("app.services.speakers.get_speaker", broken)
    with caplog.at_level(logging.ERROR, logger="app.web.factory"):
        response = harness.client.get("/v1/speakers/1", headers=harness.headers("enroll"))
    body = _assert_error(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    assert "KeyError" not in text and "secret" not in text
    request_id = body["detail"]["request_id"]
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)


@pytest.mark.parametrize("exc, status, code", [(MemoryError(), 503, "insufficient_memory"),
                                                (RecursionError(), 400, "too_deeply_nested")])
def test_memory_and_recursion_errors_are_not_500(harness, monkeypatch, exc, status, code):
    def failing(*args, **kwargs):
        raise exc

    monkeypatch.setattr("app.services.speakers.get_speaker", failing)
    body = _assert_error(harness.client.get("/v1/speakers/1", headers=harness.headers("enroll")), status, code)
    assert type(exc).__name__ not in json.dumps(body)


# -- /metrics ------------------------------------------------------------------------
def test_metrics_do_not_grow_with_made_up_verbs_and_paths(harness):
    client = harness.client
    # every label value that legitimate traffic of this kind can create, once
    client.open("/v1/health", method="BREW")
    client.get("/nowhere")
    client.get("/metrics")
    before = len(client.get("/metrics").get_data())
    for i in range(300):
        client.open("/v1/health", method=f"VERB{i}")
        client.open(f"/v1/speakers/{i}/nowhere/{i}", method="GET")
    after = client.get("/metrics").get_data(as_text=True)
    assert len(after) - before < 4096, len(after) - before
    assert "VERB" not in after and "nowhere" not in after
    assert 'endpoint="unmatched",method="other",status="405"' in after
