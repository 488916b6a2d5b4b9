"""Unit tests for snap2caption_service.core.cloudevents: Kafka binary and structured mode,
HTTP binary mode, and the reasons decode errors carry."""

from __future__ import annotations

import json

import pytest

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_UPLOADED


def test_cloudevent_kafka_binary_mode_round_trip():
    ev = cloudevents.new_event(
        EVENT_TYPE_UPLOADED, "urn:test", {"a": 1}, subject="m1", extensions={"traceparent": "00-abc-def-01"}
    )
    value, headers = cloudevents.to_kafka(ev)
    names = [k for k, _ in headers]
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"} <= set(names)
    assert json.loads(value) == {"a": 1}
    back = cloudevents.from_kafka(value, headers)
    assert (back.id, back.type, back.subject, back.json(), back.extensions) == (
        ev.id,
        EVENT_TYPE_UPLOADED,
        "m1",
        {"a": 1},
        {"traceparent": "00-abc-def-01"},
    )


def test_cloudevent_structured_mode_and_http_are_read_too():
    body = json.dumps({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {"x": 2}}).encode()
    ev = cloudevents.from_kafka(body, [("content-type", b"application/cloudevents+json")])
    assert (ev.id, ev.json()) == ("1", {"x": 2})
    ev2 = cloudevents.from_http(
        b'{"y": 3}',
        {
            "ce-specversion": "1.0",
            "ce-id": "p:0/o:1",
            "ce-source": "s",
            "ce-type": "t",
            "Content-Type": "application/json",
        },
    )
    assert (ev2.id, ev2.json()) == ("p:0/o:1", {"y": 3})
    body, headers = cloudevents.to_http(ev2)
    assert headers["ce-id"] == "p:0/o:1" and headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "value,headers,reason",
    [
        (None, [], "empty_value"),
        (b"{}", [("content-type", b"application/json")], "not_a_cloudevent"),
        (
            b"{}",
            [("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")],
            "unsupported_specversion",
        ),
        (
            b"{}",
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_source", b"s"),
                ("ce_type", b"t"),
                ("ce_time", b"yesterday"),
            ],
            "not_a_cloudevent",
        ),
        (b"{oops", [("content-type", b"application/cloudevents+json")], "invalid_json"),
    ],
)
def test_cloudevent_decode_errors_have_reasons(value, headers, reason):
    with pytest.raises(cloudevents.CloudEventError) as exc:
        cloudevents.from_kafka(value, headers)
    assert exc.value.reason == reason


def _structured(**attrs) -> bytes:
    event = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {"x": 1}, **attrs}
    return json.dumps(event).encode()  # ensure_ascii: a lone surrogate is written as a \ud800 escape


_BINARY = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")]


@pytest.mark.parametrize(
    "value,headers",
    [
        (_structured(id="a\ud800"), [("content-type", b"application/cloudevents+json")]),
        (_structured(source="urn:\udc00x"), [("content-type", b"application/cloudevents+json")]),
        (_structured(subject="\ud800"), [("content-type", b"application/cloudevents+json")]),
        (_structured(comexample="\udfff"), [("content-type", b"application/cloudevents+json")]),
        (_structured(id={"nested": 1}), [("content-type", b"application/cloudevents+json")]),
        (b"{}", [*_BINARY[:1], ("ce_id", b"line\nbreak"), *_BINARY[2:]]),
        (b"{}", [*_BINARY, ("ce_subject", b"tab\there")]),
        (b"{}", [*_BINARY, ("ce_comexample", b"del\x7f")]),
    ],
)
def test_attributes_a_cloudevents_string_cannot_hold_are_refused_at_decode(value, headers):
    """Before: a structured event's lone surrogate ("\\ud800" in JSON) passed decoding and only
    failed when the output event was encoded, outside the consumer's handler."""
    with pytest.raises(cloudevents.CloudEventError) as exc:
        cloudevents.from_kafka(value, headers)
    assert exc.value.reason == "invalid_attribute"
    exc.value.detail.encode()  # the reason's text can itself be written anywhere


def test_structured_attributes_keep_their_valid_forms():
    pair = json.dumps({"specversion": "1.0", "id": "\U0001f600", "source": "s", "type": "t", "data": None})
    assert "\\ud83d\\ude00" in pair  # a surrogate *pair* escape is one valid character
    assert cloudevents.from_kafka(pair.encode(), [("content-type", b"application/cloudevents+json")]).id == "\U0001f600"
    ev = cloudevents.from_kafka(
        _structured(id=7, comexampleflag=True, subject=None), [("content-type", b"application/cloudevents+json")]
    )
    assert (ev.id, ev.extensions, ev.subject) == ("7", {"comexampleflag": "true"}, None)
    # HTTP header values arrive latin-1-decoded: UTF-8 "\u2026" shows as "\xe2\x80\xa6", a C1 character
    # in the middle. The spec rules C1 out; refusing it would refuse every such /events header.
    http = cloudevents.from_http(
        b"{}",
        {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "urn:\u2026".encode().decode("latin-1")},
    )
    assert http.source == "urn:\xe2\x80\xa6"
