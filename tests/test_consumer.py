"""Unit tests for stream/consumer.py that need no broker: the per-record handler, the
in-flight window, and a transaction whose outcome is unknown. tests/test_stream_consumer.py
runs the consumer end to end on a real broker."""

from __future__ import annotations

import json
import threading
from collections import namedtuple
from concurrent.futures import Future

import pytest
from kafka import TopicPartition

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import CaptionResult
from snap2caption_service.core.errors import Transient
from snap2caption_service.core.fetch import ImageFetcher
from stream.consumer import Captioned, Consumer, DeadLetter, Handler, RetryLater
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

    # The run grew after the unanswered transaction: it carried offsets 0-2, and 3-4 finished
    # since. Before: the check compared the committed offset (3) with the grown run's end (5),
    # decided nothing had landed and produced 0-2 a second time.
    grown = loop_with_finished(5, committed=3)
    assert grown.producer_ready(grown.window.finished_prefixes()) is False
    assert [p.record.offset for p in grown.window.items()] == [3, 4] and grown.totals["captioned"] == 3
    assert grown.producer_ready(grown.window.finished_prefixes()) is True  # 3-4 go out next, once

    lost = loop_with_finished(3, committed=0)  # nothing landed: produce them again
    assert lost.producer_ready(lost.window.finished_prefixes()) is True
    assert len(lost.window) == 3 and not lost.outcome_unknown

    with pytest.raises(TransactionStuck):
        lost.bounded(_time.sleep, 5)
    with pytest.raises(ZeroDivisionError):
        lost.bounded(lambda: 1 / 0)


# --- issue 13: the consumer never halts on one event -------------------------------------


def _structured(**attrs) -> tuple[bytes, bytes, list]:
    """A structured-mode upload CloudEvent (the whole event as one JSON object)."""
    event = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "urn:test",
        "type": "com.snap2caption.media.uploaded",
        "data": {"media_id": "m-s", "creator_id": "c", "image": inline()},
        **attrs,
    }
    return b"m-s", json.dumps(event).encode(), [("content-type", b"application/cloudevents+json")]


@pytest.mark.parametrize("attr", ["id", "source", "subject"])
def test_a_lone_surrogate_in_a_structured_event_attribute_is_dead_lettered_not_raised(attr):
    """Before: it passed decoding, was captioned, and UnicodeEncodeError escaped the handler when
    the output event was built (uuid5 of source#id, the ce_* headers): the consumer exited."""
    svc = FakeService()
    out = _handler(svc)(_record(*_structured(**{attr: "x\ud800y"})), 0.0)
    assert isinstance(out, DeadLetter) and (out.reason, out.stage) == ("invalid_attribute", "decode"), out
    assert "\\ud800" in out.detail and svc.calls == 0  # refused before any work
    out.detail.encode()  # the detail itself is writable


def test_every_failure_building_the_output_is_a_dead_letter(monkeypatch):
    """Building the captioned event is inside the handler's try: whatever fails there is a
    dead letter (stage produce), never an exception on the consumer's thread."""

    def broken(event):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    record = _record(*upload_event("m-4", inline()))
    monkeypatch.setattr(cloudevents, "to_kafka", broken)
    out = _handler(FakeService())(record, 0.0)
    assert isinstance(out, DeadLetter) and (out.reason, out.stage) == ("internal_error", "produce"), out


# --- a consumer with fakes around it ------------------------------------------------------


class FakeFetcher:
    def __init__(self, failure: Exception | None = None):
        self.failure, self.calls = failure, 0

    def fetch(self, ref):
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return b"image"


def _consumer(fetcher=None, service=None, **kw):
    from stream.consumer import Consumer

    kw = {"retries": 0, "retry_backoff_ms": 1, "retry_later_s": 0.01, "metrics_port": 0, **kw}
    return Consumer(settings(**kw), fetcher=fetcher or FakeFetcher(), service=service or FakeService())


def _poll(c, tp, records, polled_at=None):
    """Put records in the window as the loop does after a poll, and submit them."""
    import time as _time

    from stream.consumer import Pending

    pendings = []
    for record in records:
        p = Pending(record, _time.perf_counter() if polled_at is None else polled_at)
        c.window.add(tp, p)
        c.submit(p)
        pendings.append(p)
    return pendings


def _settle(c, p, rounds=50):
    """Run the loop's collect (with retries) until ``p`` is finished or ``rounds`` rounds passed."""
    import time as _time

    for n in range(rounds):
        while p.future is not None:
            p.future.result()
            c.collect()
        if p.finished:
            return n + 1
        _time.sleep(0.02)
        c.collect()
    return None


def test_an_unreachable_image_host_is_dead_lettered_after_bounded_rounds():
    """Before: every UrlUnavailable came back as RetryLater forever, so one dead host held its
    partition (and, as the window filled, every partition) for good."""
    from kafka import TopicPartition

    from snap2caption_service.core.errors import UrlUnavailable

    fetcher = FakeFetcher(UrlUnavailable("url_timeout", "fetch", "https://dead.example/a.png: ReadTimeout"))
    c = _consumer(fetcher, url_retries=2, url_retry_max_age_s=600)
    (p,) = _poll(c, TopicPartition("t", 0), [_record(*upload_event("m-dead", {"url": "https://dead.example/a.png"}))])
    assert _settle(c, p) is not None, "never dead-lettered"
    assert isinstance(p.outcome, DeadLetter) and (p.outcome.reason, p.outcome.stage) == ("url_unavailable", "fetch")
    assert "url_timeout" in p.outcome.detail and fetcher.calls == 3  # the first round + url_retries


def test_an_unreachable_image_host_is_dead_lettered_once_the_event_is_old_enough():
    import time as _time

    from kafka import TopicPartition

    from snap2caption_service.core.errors import UrlUnavailable

    fetcher = FakeFetcher(UrlUnavailable("url_unavailable", "fetch", "connection refused"))
    c = _consumer(fetcher, url_retries=1000, url_retry_max_age_s=60)
    record = _record(*upload_event("m-old", {"url": "https://dead.example/b.png"}))
    (p,) = _poll(c, TopicPartition("t", 0), [record], polled_at=_time.perf_counter() - 61)
    assert _settle(c, p, rounds=3) == 1 and p.outcome.reason == "url_unavailable" and fetcher.calls == 1


@pytest.mark.parametrize(
    "failure",
    [
        Transient("overloaded", "caption", "503"),  # our service
        Transient("s3_unavailable", "fetch", "SlowDown"),  # S3
    ],
)
def test_our_own_outages_are_retried_without_end_never_dead_lettered(failure):
    from kafka import TopicPartition

    fetcher = FakeFetcher(failure if failure.stage == "fetch" else None)
    service = FakeService([failure] * 1000 if failure.stage == "caption" else None)
    c = _consumer(fetcher, service, url_retries=0, url_retry_max_age_s=0.001)
    (p,) = _poll(c, TopicPartition("t", 0), [_record(*upload_event("m-503", inline()))])
    assert _settle(c, p, rounds=8) is None and not p.finished
    assert p.retry_at is not None or p.future is not None  # still being retried
    assert max(fetcher.calls, service.calls) >= 5


class _StallProbe:
    """The loop's view of the broker for check_stalled: end offsets answer, nothing is paused."""

    def __init__(self, assigned=()):
        self.assigned = set(assigned)

    def assignment(self):
        return set(self.assigned)

    def paused(self):
        return set()

    def end_offsets(self, tps, timeout_ms=None):
        return {tp: 10 for tp in tps}

    def committed(self, tp, timeout_ms=None):
        return 10


def _stall_check(c, monkeypatch) -> list[int]:
    import stream.consumer as consumer_module

    exits = []
    monkeypatch.setattr(consumer_module.os, "_exit", exits.append)
    monkeypatch.setattr(consumer_module.faulthandler, "dump_traceback", lambda **kw: None)
    c.last_stall_check = 0.0
    c.check_stalled()
    return exits


@pytest.mark.parametrize(
    "state,stalls",
    [
        ("in flight", True),  # a call that never returns
        ("finished", True),  # a transaction that never commits
        ("url_unavailable", True),  # an image host retried beyond its bounds counts too
        ("our outage", False),  # our service / S3 / broker: waited out by design
        ("young", False),
    ],
)
def test_the_stall_check_looks_at_the_oldest_uncommitted_record(monkeypatch, caplog, state, stalls):
    """Before: check_stalled returned at once while the window held anything, so a record that
    never finished (or never committed) kept the consumer stuck without a restart."""
    import time as _time

    from kafka import TopicPartition

    from snap2caption_service.core.errors import UrlUnavailable
    from stream.consumer import Pending

    tp = TopicPartition("t", 0)
    c = _consumer(stall_timeout_s=300)
    c.consumer = _StallProbe([tp])
    old = _time.perf_counter() - (10 if state == "young" else 301)
    head = Pending(Record("t", 0, 5, b"k", b"v", []), old)
    if state == "finished":
        head.outcome = DeadLetter("r", "s", "d")
    elif state == "url_unavailable":
        head.waiting_on, head.retry_at = UrlUnavailable("url_timeout", "fetch", "slow"), 1.0
    elif state == "our outage":
        head.waiting_on, head.retry_at = Transient("overloaded", "caption", "503"), 1.0
    c.window.add(tp, head)
    c.window.add(tp, Pending(Record("t", 0, 6, b"k", b"v", []), _time.perf_counter()))
    c.last_progress = _time.monotonic()  # other partitions poll and commit: the consumer is not idle
    exits = _stall_check(c, monkeypatch)
    assert exits == ([70] if stalls else []), caplog.text
    if stalls:
        assert "t-0: offset 5 uncommitted for 30" in caplog.text


# --- what one record produces always fits ------------------------------------------------


class FakeProducer:
    """A transactional producer as far as Consumer.commit uses it, with kafka-python's checks
    before sending (size against max_request_size, (str, bytes) headers) and, optionally, a
    broker that refuses records above ``broker_limit`` when the transaction is flushed."""

    def __init__(self, max_request_size=1024 * 1024, broker_limit=None):
        self.max_request_size, self.broker_limit = max_request_size, broker_limit
        self.out, self.pending, self.attempts = [], [], 0

    def begin_transaction(self):
        self.pending, self.failed = [], None
        self.attempts += 1

    def send(self, topic, key=None, value=None, headers=None):
        from kafka.errors import MessageSizeTooLargeError
        from kafka.future import Future

        headers = headers or []
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers):
            raise TypeError("All headers items must be (str, bytes) tuples")
        size = 100 + len(key or b"") + len(value or b"") + sum(len(k) + len(v) + 10 for k, v in headers)
        if size > self.max_request_size:
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        future = Future()
        if self.broker_limit is not None and size > self.broker_limit:
            self.failed = MessageSizeTooLargeError("MESSAGE_TOO_LARGE")
            future.failure(self.failed)
        else:
            future.success(None)
        self.pending.append((topic, key, value, headers))
        return future

    def send_offsets_to_transaction(self, offsets, group_metadata):
        self.offsets = offsets

    def commit_transaction(self):
        from kafka.errors import KafkaError

        if self.failed is not None:
            raise KafkaError(f"transaction failed: {self.failed}")
        self.out += self.pending

    def abort_transaction(self):
        self.pending = []

    def close(self, timeout=None):
        pass


class _GroupConsumer:
    def group_metadata(self):
        return "group"


def _finished(c, tp, records_and_outcomes):
    from stream.consumer import Pending

    for record, outcome in records_and_outcomes:
        p = Pending(record, 0.0)
        p.outcome = outcome
        c.window.add(tp, p)


def _captioned(media_id):
    return Captioned(media_id.encode(), b'{"caption": "hi"}', [("ce_id", b"1")])


@pytest.mark.parametrize("where", ["producer", "broker"])
def test_a_poison_record_too_large_to_dead_letter_goes_out_as_a_stub_and_blocks_nothing(monkeypatch, where):
    """Before: the 2 MB poison record's dead letter was refused (MessageSizeTooLargeError from
    send(), or from the broker at commit), the transaction aborted, and since one transaction
    carries every partition, nothing ever committed again."""
    import hashlib

    from kafka import TopicPartition

    import stream.consumer as consumer_module

    monkeypatch.setattr(consumer_module.time, "sleep", lambda s: None)
    c = _consumer()
    c.consumer = _GroupConsumer()
    # "broker": a DLQ topic whose max.message.bytes (200 kB) is below produce_max_bytes (1 MB)
    c.producer = producer = FakeProducer(broker_limit=200_000 if where == "broker" else None)
    replaced = []  # after a record failed in a transaction the producer is replaced, not aborted
    c.new_producer = lambda: replaced.append(True) or producer
    poison_value = b"{" + b"x" * (2_000_000 if where == "producer" else 500_000)
    a, b = TopicPartition("up", 0), TopicPartition("up", 1)
    poison = Record("up", 0, 3, b"k-poison", poison_value, [("ce_id", b"p")])
    _finished(
        c,
        a,
        [
            (poison, DeadLetter("invalid_json", "decode", "not JSON")),
            (Record("up", 0, 4, b"g1", b"", []), _captioned("g1")),
        ],
    )
    _finished(c, b, [(Record("up", 1, 0, b"g2", b"", []), _captioned("g2"))])
    for _ in range(3):
        c.commit()
        if not len(c.window):
            break
    assert len(c.window) == 0 and c.totals == {"captioned": 2, "dead_lettered": 1}
    assert c.producer.attempts == (2 if where == "broker" else 1) and len(replaced) == c.producer.attempts - 1
    assert c.producer.offsets == {
        a: consumer_module.OffsetAndMetadata(5, "", -1),
        b: consumer_module.OffsetAndMetadata(1, "", -1),
    }
    (stub,) = [r for r in c.producer.out if r[0] == c.s.topic_dlq]
    topic, key, value, headers = stub
    h = dict(headers)
    info = json.loads(value)
    assert key == b"k-poison" and len(value) < 10_000
    assert (h["dlq_stub"], h["dlq_reason"], h["dlq_source_offset"]) == (b"true", b"invalid_json", b"3")
    assert info["value_sha256"] == hashlib.sha256(poison_value).hexdigest() == h["dlq_value_sha256"].decode()
    assert (info["source_topic"], info["source_partition"], info["source_offset"]) == ("up", 0, 3)
    assert info["reason"] == "invalid_json" and info["value_bytes"] == len(poison_value)
    assert headers[0] == ("ce_id", b"p")  # small original headers are kept
    assert sorted(r[1] for r in c.producer.out if r[0] == c.s.topic_captioned) == [b"g1", b"g2"]


@pytest.mark.parametrize(
    "headers,detail",
    [
        ([("ce_id", b"1"), ("x-null", None)], "d"),  # before: TypeError out of commit(), the loop died
        ([("ce_id", b"1")], "d\ud800"),  # before: UnicodeEncodeError out of commit()
    ],
)
def test_dead_letters_that_fit_keep_the_original_bytes_whatever_their_headers_and_detail(headers, detail):
    from kafka import TopicPartition

    c = _consumer()
    c.consumer, c.producer = _GroupConsumer(), FakeProducer()
    record = Record("up", 0, 0, b"k", b"{bad", headers)
    _finished(c, TopicPartition("up", 0), [(record, DeadLetter("invalid_json", "decode", detail))])
    c.commit()
    ((topic, key, value, out_headers),) = c.producer.out
    h = dict(out_headers)
    assert (topic, key, value) == (c.s.topic_dlq, b"k", b"{bad") and "dlq_stub" not in h
    assert out_headers[: len(headers)] == [(k, v if v is not None else b"") for k, v in headers]  # null: empty
    assert h["dlq_detail"] == detail.encode(errors="backslashreplace")


def test_a_captioned_event_too_large_to_produce_is_dead_lettered():
    from kafka import TopicPartition

    c = _consumer(produce_max_bytes=64 * 1024)
    c.consumer, c.producer = _GroupConsumer(), FakeProducer()
    huge = Captioned(b"m", b"x" * 100_000, [])
    _finished(c, TopicPartition("up", 0), [(Record("up", 0, 0, b"m", b"{}", []), huge)])
    c.commit()
    ((topic, key, value, headers),) = c.producer.out
    assert topic == c.s.topic_dlq and dict(headers)["dlq_reason"] == b"result_too_large"
    assert c.totals == {"captioned": 0, "dead_lettered": 1}


# --- the loop's poll while a rebalance is pending ------------------------------------------


class BusyKafka:
    """A KafkaConsumer with one assigned partition; records each poll's timeout."""

    def __init__(self, consumer: Consumer, polls: int):
        self.owner, self.polls, self.timeouts, self._paused = consumer, polls, [], set()

    def assignment(self):
        return {TopicPartition("t", 0)}

    def paused(self):
        return set(self._paused)

    def pause(self, *tps):
        self._paused |= set(tps)

    def resume(self, *tps):
        self._paused -= set(tps)

    def highwater(self, tp):
        return None

    def poll(self, timeout_ms=0, max_records=None):
        self.timeouts.append(timeout_ms)
        if len(self.timeouts) >= self.polls:
            self.owner.stopping.set()
        return {}


@pytest.mark.parametrize("rebalancing", [False, True])
def test_every_worker_busy_polls_at_once_unless_a_rebalance_is_pending(monkeypatch, rebalancing):
    """kafka-python completes a rebalance only inside poll(), and with timeout_ms=0 a JoinGroup
    answered between two calls is sent again instead of completed: from a revocation to the next
    assignment the loop polls with a timeout even when nothing may be polled."""
    c = Consumer(settings(max_in_flight=2))
    kafka = BusyKafka(c, polls=3)
    monkeypatch.setattr(c, "start", lambda: setattr(c, "consumer", kafka))
    monkeypatch.setattr(c, "shutdown", lambda: 0)
    c.active = {Future(), Future()}  # both workers busy: room 0, every partition paused
    if rebalancing:
        c.on_partitions_revoked({TopicPartition("t", 0)})
    try:
        assert c.run() == 0
    finally:
        c.pool.shutdown()
    assert kafka.paused() == kafka.assignment()
    assert all(t > 0 for t in kafka.timeouts) if rebalancing else kafka.timeouts == [0, 0, 0]
    c.on_partitions_assigned({TopicPartition("t", 0)})
    assert not c.rebalancing
