"""Unit tests for snap2caption_service.core.events: the rules the Kafka consumer and the /events
push endpoint share for reading an upload event and for what a refusal by the service means.
Through their callers: tests/test_consumer.py, tests/test_service_client.py, tests/test_stream_push.py."""

from __future__ import annotations

import json

import pytest

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_UPLOADED, UploadEvent
from snap2caption_service.core.errors import Poison, Transient
from snap2caption_service.core.events import POISON_STATUSES, check_type, classify_answer, decode_upload
from stream_support import inline


def _event(data: bytes | dict, content_type: str | None = cloudevents.JSON) -> cloudevents.CloudEvent:
    body = json.dumps(data).encode() if isinstance(data, dict) else data
    return cloudevents.CloudEvent(
        id="e-1", source="urn:test", type=EVENT_TYPE_UPLOADED, data=body, datacontenttype=content_type
    )


def test_check_type_accepts_only_upload_events():
    check_type(EVENT_TYPE_UPLOADED, "this topic")
    for other in ("com.example.other", None, ""):
        with pytest.raises(Poison) as exc:
            check_type(other, "/events")
        assert (exc.value.reason, exc.value.stage) == ("unexpected_event_type", "decode")
        assert "/events" in exc.value.detail and EVENT_TYPE_UPLOADED in exc.value.detail


def test_decode_upload_gives_the_upload_event():
    upload = decode_upload(_event({"media_id": "m-1", "creator_id": "c", "image": inline(), "tone": "funny"}))
    assert isinstance(upload, UploadEvent)
    assert (upload.media_id, upload.creator_id, upload.tone, upload.image.kind) == ("m-1", "c", "funny", "inline")


@pytest.mark.parametrize(
    "data,content_type,reason,stage",
    [
        (b"{not json", cloudevents.JSON, "invalid_json", "decode"),
        (b'{"media_id": "m"}', "text/plain", "unsupported_content_type", "decode"),
        (
            {"creator_id": "c", "image": {"url": "https://img.test/a.png"}},
            cloudevents.JSON,
            "schema_violation",
            "validate",
        ),
        ({"media_id": "m", "creator_id": "c", "image": {}}, cloudevents.JSON, "schema_violation", "validate"),
        (b"[1, 2]", cloudevents.JSON, "schema_violation", "validate"),
    ],
)
def test_decode_upload_refusals_are_poison_with_a_reason(data, content_type, reason, stage):
    with pytest.raises(Poison) as exc:
        decode_upload(_event(data, content_type))
    assert (exc.value.reason, exc.value.stage) == (reason, stage)
    assert exc.value.detail


def test_schema_violations_name_the_field():
    with pytest.raises(Poison) as exc:
        decode_upload(_event({"creator_id": "c", "image": inline()}))
    assert "media_id" in exc.value.detail


@pytest.mark.parametrize("status", sorted(POISON_STATUSES))
def test_the_image_is_wrong_answers_are_poison_with_the_status(status):
    err = classify_answer(status, "not_an_image", "no image here")
    assert isinstance(err, Poison)
    assert (err.reason, err.stage, err.detail, err.status) == ("not_an_image", "caption", "no image here", status)
    assert classify_answer(status, "", "x").reason == f"service_rejected_{status}"


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500, 502, 503, 504])
def test_every_other_answer_is_transient(status):
    err = classify_answer(status, "overloaded", "busy", stage="push")
    assert isinstance(err, Transient) and not isinstance(err, Poison)
    assert (err.reason, err.stage) == ("overloaded", "push")
    assert err.detail.startswith(f"{status}: ")
    assert classify_answer(status, "", "x").reason == f"service_http_{status}"
