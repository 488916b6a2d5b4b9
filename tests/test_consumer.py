"""Unit tests for stream/consumer.py that need no broker: the per-record handler, the
in-flight window, and a transaction whose outcome is unknown. tests/test_stream_consumer.py
runs the consumer end to end on a real broker."""

from __future__ import annotations

import json
import threading
from collections import namedtuple

import pytest

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import CaptionResult
from snap2caption_service.core.errors import Transient
from snap2caption_service.core.fetch import ImageFetcher
from stream.consumer import Captioned, DeadLetter, Handler, RetryLater
from stream_support import inline, settings, upload_event

# --- the per-record handler --------------------------------------------------------------

Record = namedtuple("Record", "topic partition offset key value headers")


class FakeService:
    def __init__(self, failures: list[Exception] | None = None):
        self.failures, self.calls = list(failures or []), 0

    def caption(self, image, options):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return CaptionResult(
            caption="hi",
            hashtags=["#a"],
            alt_text="alt",
            candidates=[],
            model_version="v1",
            request_id="r1",
            latency_ms=1.0,
            image_sha256="abc",
        )


def _handler(service, **kw) -> Handler:
    s = settings(retries=2, retry_backoff_ms=1, **kw)
    return Handler(s, ImageFetcher(s), service, threading.Event())


def _record(key, value, headers):
    return Record("t", 0, 7, key, value, headers)


def test_handler_captions_and_retries_transient_failures():
    svc = FakeService([Transient("overloaded", "caption"), Transient("overloaded", "caption")])
    key, value, headers = upload_event("m-1", inline(), tone="funny")
    out = _handler(svc)(_record(key, value, headers + [("traceparent", b"00-t-s-01")]), 0.0)
    assert isinstance(out, Captioned) and svc.calls == 3
    ev = cloudevents.from_kafka(out.value, out.headers)
    data = ev.json()
    assert out.key == b"m-1" and ev.type == "com.snap2caption.media.captioned" and ev.subject == "m-1"
    assert data["source_event_id"] == cloudevents.from_kafka(value, headers).id
    assert set(data["timings"]) >= {"fetch_ms", "caption_ms", "total_ms"}
    assert cloudevents.header(out.headers, "traceparent") == "00-t-s-01"
    # Same input event, same output id: a reprocessed event is recognisably the same result.
    again = _handler(FakeService())(_record(key, value, headers), 0.0)
    assert cloudevents.from_kafka(again.value, again.headers).id == ev.id


def test_handler_gives_up_transient_as_retry_later_never_dead_letter():
    svc = FakeService([Transient("overloaded", "caption")] * 3)
    out = _handler(svc)(_record(*upload_event("m-2", inline())), 0.0)
    assert isinstance(out, RetryLater) and out.reason == "overloaded" and svc.calls == 3


@pytest.mark.parametrize(
    "mutate,reason,stage",
    [
        (lambda k, v, h: (k, b"{not json", h), "invalid_json", "decode"),
        (lambda k, v, h: (k, v, []), "not_a_cloudevent", "decode"),
        (
            lambda k, v, h: (k, v, [(n, b"com.example.other" if n == "ce_type" else x) for n, x in h]),
            "unexpected_event_type",
            "decode",
        ),
        (
            lambda k, v, h: (k, v, [(n, b"text/plain" if n == "content-type" else x) for n, x in h]),
            "unsupported_content_type",
            "decode",
        ),
        (
            lambda k, v, h: (k, json.dumps({"creator_id": "c", "image": inline()}).encode(), h),
            "schema_violation",
            "validate",
        ),
        (lambda k, v, h: (k, None, h), "empty_value", "decode"),
    ],
)
def test_handler_poison_reasons(mutate, reason, stage):
    out = _handler(FakeService())(_record(*mutate(*upload_event("m-3", inline()))), 0.0)
    assert isinstance(out, DeadLetter) and (out.reason, out.stage) == (reason, stage)


# --- the in-flight window: only finished prefixes are committable -------------------------


def test_window_commits_only_each_partitions_finished_prefix():
    from kafka import TopicPartition

    from stream.consumer import Pending, Window

    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    w = Window()
    items = {}
    for tp in (a, b):
        for off in range(3):
            items[tp, off] = Pending(Record("t", tp.partition, off, None, b"", []), 0.0)
            w.add(tp, items[tp, off])
    items[a, 0].outcome = items[a, 2].outcome = DeadLetter("r", "s", "d")  # a: offset 1 still running
    items[b, 1].outcome = DeadLetter("r", "s", "d")  # b: offset 0 still running
    ready = w.finished_prefixes()
    assert {tp: [p.record.offset for p in run] for tp, run in ready.items()} == {a: [0]}
    w.remove(ready)
    assert len(w) == 5 and w.first_offset(a) == 1
    items[a, 1].retry_at = 123.0
    assert w.waiting_retry() == {a}
    assert w.drop([a]) == 2 and len(w) == 3


def test_a_transaction_with_unknown_outcome_is_checked_against_committed_offsets():
    """When commit_transaction gets no answer, the results may already be out: the group's
    committed offsets decide, so a landed transaction is never produced a second time."""
    import time as _time

    from kafka import TopicPartition

    from stream.consumer import Consumer, Pending, TransactionStuck

    tp = TopicPartition("t", 0)

    class FakeKafkaConsumer:
        def __init__(self, committed):
            self.value = committed

        def committed(self, partition, timeout_ms=None):
            return self.value

    def loop_with_finished(n, committed):
        c = Consumer(settings(transaction_call_timeout_s=0.2, metrics_port=0))
        c.consumer, c.producer, c.outcome_unknown = FakeKafkaConsumer(committed), object(), True
        for off in range(n):
            p = Pending(Record("t", 0, off, b"k", b"v", []), 0.0)
            p.outcome = Captioned(b"k", b"v", [])
            c.window.add(tp, p)
        return c

    landed = loop_with_finished(3, committed=3)  # offsets up to 2 were committed with their results
    assert landed.producer_ready(landed.window.finished_prefixes()) is False
    assert len(landed.window) == 0 and landed.totals["captioned"] == 3 and not landed.outcome_unknown

    lost = loop_with_finished(3, committed=0)  # nothing landed: produce them again
    assert lost.producer_ready(lost.window.finished_prefixes()) is True
    assert len(lost.window) == 3 and not lost.outcome_unknown

    with pytest.raises(TransactionStuck):
        lost.bounded(_time.sleep, 5)
    with pytest.raises(ZeroDivisionError):
        lost.bounded(lambda: 1 / 0)
