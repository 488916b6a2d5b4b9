"""snap2caption_service/serving/responses.py: every error answer is an ErrorBody that never
carries the request's content back. The same over real HTTP: tests/test_feedback_security.py."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from snap2caption_service.serving.responses import ErrorBodyMiddleware, error_response, sanitize_error

SECRET = "s3cr3t-document-content"

# What BentoML 1.4 answers for a body that fails the input contract, and for exceptions.
BENTOML_VALIDATION = {
    "error": "2 validation errors for Input",
    "detail": [
        {"type": "string_too_long", "loc": ["tone"], "msg": "String should have at most 32 characters", "url": "u"},
        {"type": "extra_forbidden", "loc": ["x" * 500], "msg": "Extra inputs are not permitted", "input": SECRET},
    ],
}


def test_a_validation_error_keeps_field_paths_and_messages_only():
    body = json.loads(sanitize_error(400, json.dumps(BENTOML_VALIDATION).encode()))
    assert body["error"] == "invalid_request"
    assert body["fields"][0] == {"loc": ["tone"], "msg": "String should have at most 32 characters"}
    assert len(body["fields"][1]["loc"][0]) == 64  # a key the caller made up, cut short
    assert "tone: String should have at most 32 characters" in body["detail"]
    assert SECRET not in json.dumps(body) and "url" not in body["fields"][0]


def test_other_foreign_error_bodies_become_a_generic_error_body():
    for status, raw in [
        (400, json.dumps([{"error": f"Invalid input: {SECRET}"}])),  # BentoML's BentoMLException answer
        (500, json.dumps({"error": f"8 validation errors for ServedCaption {SECRET}"})),
        (415, json.dumps({"error": SECRET})),
        (400, "not json at all " + SECRET),
    ]:
        body = json.loads(sanitize_error(status, raw.encode()))
        assert set(body) == {"error", "detail"} and SECRET not in json.dumps(body), (status, body)
    assert json.loads(sanitize_error(500, b"{}"))["error"] == "internal_error"


def test_our_own_error_bodies_pass_unchanged():
    ours = error_response(404, "unknown_request", "No caption with this request_id is on record.").body
    assert sanitize_error(404, ours) == ours


def test_the_middleware_rewrites_json_error_answers_only():
    async def invalid(request):
        return JSONResponse(BENTOML_VALIDATION, status_code=400)

    async def ok(request):
        return JSONResponse({"caption": SECRET})

    async def text(request):
        return PlainTextResponse("Not Found", status_code=404)

    app = Starlette(routes=[Route("/invalid", invalid), Route("/ok", ok), Route("/text", text)])
    app.add_middleware(ErrorBodyMiddleware)
    with TestClient(app) as client:
        r = client.get("/invalid")
        assert r.status_code == 400 and r.json()["error"] == "invalid_request" and SECRET not in r.text
        assert int(r.headers["content-length"]) == len(r.content)
        assert client.get("/ok").json() == {"caption": SECRET}
        assert client.get("/text").text == "Not Found"
