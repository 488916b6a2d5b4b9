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
