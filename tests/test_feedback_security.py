"""Hostile /feedback (and caption) bodies against the real service (issue 13, data exposure):
request ids that are paths, feedback on someone else's caption, oversized fields, and error
answers that must never carry the request's content back. The units: test_caption_archive.py,
test_contracts.py, test_responses.py, test_feedback_store.py."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from conftest import png_bytes

pytestmark = pytest.mark.service

SECRET = "s3cr3t-" + uuid.uuid4().hex


def caption(c, **options) -> dict:
    r = c.post("/generate-caption", json={"image": base64.b64encode(png_bytes()).decode(), **options})
    assert r.status_code == 200, r.text
    return r.json()


def assert_error_body(r, status: int, error: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and isinstance(body["detail"], str), body
    assert SECRET not in r.text, r.text
    return body


def test_a_request_id_cannot_reach_files_outside_the_archive(service, tmp_path):
    """``../`` in a request_id once made the service read any .json file: a planted file came
    back as '400: 8 validation errors for ServedCaption' and a missing one as 404 (an existence
    oracle), with the content wherever pydantic's errors carried it. Now every such id is a 400
    naming the field, whether or not the file exists, and nothing of the file comes back."""
    planted = Path("/tmp") / f"planted-{uuid.uuid4().hex}.json"
    planted.write_text(json.dumps({"caption": SECRET, "request_id": SECRET}))
    try:
        answers = []
        with service.client() as c:
            caption(c)  # the archive's requests/ folder exists (a path through it must resolve)
            for target in (planted.with_suffix(""), planted.with_name("absent-" + planted.stem)):
                request_id = "../" * 12 + str(target).lstrip("/")
                r = c.post("/feedback", json={"request_id": request_id, "rating": "up"})
                body = assert_error_body(r, 400, "invalid_request")
                assert [f["loc"] for f in body["fields"]] == [["request_id"]]
                assert "ServedCaption" not in r.text and planted.stem not in r.text
                answers.append((r.status_code, body["fields"]))
            unknown = c.post("/feedback", json={"request_id": uuid.uuid4().hex, "rating": "up"})
        assert answers[0] == answers[1]  # planted or absent: the same answer
        assert_error_body(unknown, 404, "unknown_request")
    finally:
        planted.unlink()


def test_invalid_fields_are_named_never_echoed(service):
    """BentoML's own 400 for a body that fails the contract becomes an ErrorBody: field path and
    rule, not the value, for every field and route."""
    with service.client() as c:
        cap = caption(c)
        cases = [
            ("/generate-caption", {"image": "aGk=", "tone": SECRET * 3}, ["tone"]),
            ("/generate-caption", {"image": "aGk=", SECRET: 1}, [SECRET]),
            ("/feedback", {"request_id": cap["request_id"], "rating": SECRET}, ["rating"]),
            (
                "/feedback",
                {"request_id": cap["request_id"], "rating": "up", "edited_hashtags": ["#" + SECRET * 4]},
                ["edited_hashtags", 0],
            ),
            ("/feedback", {"request_id": cap["request_id"], "rating": "up", "reason": SECRET * 20}, ["reason"]),
            ("/feedback", {"request_id": cap["request_id"], "rating": "up", "creator_id": SECRET * 5}, ["creator_id"]),
        ]
        for route, body, loc in cases:
            r = c.post(route, json=body)
            if loc == [SECRET]:  # an unknown key: named, cut short, never its value
                assert r.status_code == 400 and r.json()["fields"][0]["loc"][0] == SECRET[:64]
                continue
            problem = assert_error_body(r, 400, "invalid_request")
            assert [f["loc"] for f in problem["fields"]] == [loc], (route, problem)
            assert set(problem["fields"][0]) == {"loc", "msg"}
        broken = c.post(
            "/feedback",
            content=b'{"request_id": "' + SECRET.encode() + b'", ',
            headers={"content-type": "application/json"},
        )
        assert_error_body(broken, 400, "invalid_request")


def test_a_1mb_hashtag_is_refused_up_front(service):
    """It once got a 202, then could never be sent to Kafka (and blocked the records behind it)."""
    with service.client() as c:
        cap = caption(c)
        r = c.post(
            "/feedback",
            json={"request_id": cap["request_id"], "rating": "down", "edited_hashtags": ["#" + "a" * 1_100_000]},
        )
    assert r.status_code in (400, 413), r.text
    assert "aaaaaaaaaa" not in r.text


def test_feedback_is_bound_to_the_creator_the_caption_was_made_for(service):
    """request_ids are broadcast on media.captioned: holding one must not let anyone overwrite
    that caption's feedback when the caption was made for a known creator."""
    with service.client() as c:
        mine = caption(c, creator_id="aisha")
        other = c.post("/feedback", json={"request_id": mine["request_id"], "rating": "down", "creator_id": "mallory"})
        anonymous = c.post("/feedback", json={"request_id": mine["request_id"], "rating": "down"})
        own = c.post("/feedback", json={"request_id": mine["request_id"], "rating": "up", "creator_id": "aisha"})
        unbound = caption(c)  # no creator named: anyone holding the id may rate it (as before)
        open_ = c.post("/feedback", json={"request_id": unbound["request_id"], "rating": "up", "creator_id": "bo"})
    assert_error_body(other, 403, "creator_mismatch")
    assert "aisha" not in other.text
    assert_error_body(anonymous, 403, "creator_required")
    assert own.status_code == 202, own.text
    assert open_.status_code == 202, open_.text
    log = Path(service.env["SNAP2CAPTION_DATA_DIR"]) / "feedback.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["creator_id"] for r in records if r["request_id"] == mine["request_id"]] == ["aisha"]
    assert next(r for r in records if r["request_id"] == mine["request_id"])["served"]["creator_id"] == "aisha"


def test_an_upload_binds_its_caption_to_the_creator_too(service):
    """The web page uploads files as multipart: the creator it names there binds the feedback as on
    the JSON route (the upload route once took no creator_id, so such captions were unbound)."""
    with service.client() as c:
        r = c.post(
            "/generate-caption/upload",
            files={"image": ("p.png", png_bytes(), "image/png")},
            data={"tone": "casual", "creator_id": "aisha"},
        )
        assert r.status_code == 200, r.text
        request_id = r.json()["request_id"]
        other = c.post("/feedback", json={"request_id": request_id, "rating": "down", "creator_id": "mallory"})
        own = c.post("/feedback", json={"request_id": request_id, "rating": "up", "creator_id": "aisha"})
    assert_error_body(other, 403, "creator_mismatch")
    assert own.status_code == 202, own.text
