"""Unit tests of the stream pieces that need no broker: event contracts, CloudEvents
encoding, SSRF rules and fetchers (against a local web server and moto's S3 server), the
service client's error classification, and the consumer's per-record handler."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import threading
from collections import namedtuple

import httpx
import pytest
from pydantic import ValidationError

from conftest import free_port, png_bytes
from snap2caption_service.core.contracts import (EVENT_TYPE_UPLOADED, CaptionedEvent, CaptionOptions, CaptionResult,
                                            ImageRef, UploadEvent)
from snap2caption_service.core import cloudevents
from stream.consumer import Captioned, DeadLetter, Handler, RetryLater
from snap2caption_service.core.errors import Poison, Transient
from snap2caption_service.core.fetch import ImageFetcher, UrlPolicy, blocked_reason
from stream.service_client import ServiceClient
from stream.settings import StreamSettings
from stream_support import image_site, inline, moto_s3, upload_event  # noqa: F401  (fixtures)


def settings(**kw) -> StreamSettings:
    return StreamSettings(_env_file=None, **kw)


# --- contracts ---------------------------------------------------------------------------

def test_upload_event_reuses_caption_options_limits():
    ev = UploadEvent.model_validate({"media_id": "m1", "creator_id": "c", "image": {"s3_uri": "s3://bkt/a/b.jpg"},
                                     "tone": "funny", "new_field_from_a_newer_producer": 1})
    assert ev.options() == CaptionOptions(tone="funny")
    assert ev.image.kind == "s3"
    with pytest.raises(ValidationError, match="tone"):
        UploadEvent.model_validate({"media_id": "m", "creator_id": "c", "image": inline(), "tone": "x" * 33})
    with pytest.raises(ValidationError, match="num_hashtags"):
        UploadEvent.model_validate({"media_id": "m", "creator_id": "c", "image": inline(), "num_hashtags": 99})
    with pytest.raises(ValidationError, match="media_id"):
        UploadEvent.model_validate({"creator_id": "c", "image": inline()})


@pytest.mark.parametrize("image", [
    {}, {"s3_uri": "s3://bkt/k", "url": "https://x/y"}, {"s3_uri": "s3://B/k"}, {"s3_uri": "s3://bkt"},
    {"url": "ftp://host/x.png"}, {"url": "file:///etc/passwd"}, {"inline_base64": ""}, {"gcs_uri": "gs://b/k"},
])
def test_image_ref_needs_exactly_one_valid_source(image):
    with pytest.raises(ValidationError):
        ImageRef.model_validate(image)


def test_captioned_event_is_caption_result_plus_provenance():
    result = CaptionResult(caption="c", hashtags=["#a"], alt_text="a", candidates=[], model_version="v",
                           request_id="r", latency_ms=1.0, image_sha256="h")
    up = UploadEvent(media_id="m", creator_id="cr", image=ImageRef(url="https://x.test/a.png"))
    ev = CaptionedEvent.from_result(result, up, "src-1", {"fetch_ms": 1.234, "caption_ms": 2.0})
    assert isinstance(ev, CaptionResult)
    assert (ev.media_id, ev.creator_id, ev.source_event_id, ev.timings["fetch_ms"]) == ("m", "cr", "src-1", 1.2)


# --- CloudEvents -------------------------------------------------------------------------

def test_cloudevent_kafka_binary_mode_round_trip():
    ev = cloudevents.new_event(EVENT_TYPE_UPLOADED, "urn:test", {"a": 1}, subject="m1",
                               extensions={"traceparent": "00-abc-def-01"})
    value, headers = cloudevents.to_kafka(ev)
    names = [k for k, _ in headers]
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"} <= set(names)
    assert json.loads(value) == {"a": 1}
    back = cloudevents.from_kafka(value, headers)
    assert (back.id, back.type, back.subject, back.json(), back.extensions) == (
        ev.id, EVENT_TYPE_UPLOADED, "m1", {"a": 1}, {"traceparent": "00-abc-def-01"})


def test_cloudevent_structured_mode_and_http_are_read_too():
    body = json.dumps({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {"x": 2}}).encode()
    ev = cloudevents.from_kafka(body, [("content-type", b"application/cloudevents+json")])
    assert (ev.id, ev.json()) == ("1", {"x": 2})
    ev2 = cloudevents.from_http(b'{"y": 3}', {"ce-specversion": "1.0", "ce-id": "p:0/o:1", "ce-source": "s",
                                              "ce-type": "t", "Content-Type": "application/json"})
    assert (ev2.id, ev2.json()) == ("p:0/o:1", {"y": 3})
    body, headers = cloudevents.to_http(ev2)
    assert headers["ce-id"] == "p:0/o:1" and headers["content-type"] == "application/json"


@pytest.mark.parametrize("value,headers,reason", [
    (None, [], "empty_value"),
    (b"{}", [("content-type", b"application/json")], "not_a_cloudevent"),
    (b"{}", [("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")],
     "unsupported_specversion"),
    (b"{}", [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t"),
             ("ce_time", b"yesterday")], "not_a_cloudevent"),
    (b"{oops", [("content-type", b"application/cloudevents+json")], "invalid_json"),
])
def test_cloudevent_decode_errors_have_reasons(value, headers, reason):
    with pytest.raises(cloudevents.CloudEventError) as exc:
        cloudevents.from_kafka(value, headers)
    assert exc.value.reason == reason


# --- SSRF rules --------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                     "169.254.169.254", "169.254.1.1", "fd00:ec2::254", "fe80::1", "0.0.0.0",
                                     "100.64.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "224.0.0.1"])
def test_non_public_addresses_are_blocked(address):
    assert blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_allowlist_opens_hosts_and_cidrs_but_not_metadata_by_accident():
    policy = UrlPolicy.from_settings(settings(url_allowlist="127.0.0.1, 10.0.0.0/8, 169.254.0.0/16, img.local"))
    ip = ipaddress.ip_address
    assert policy.address_allowed("127.0.0.1", ip("127.0.0.1"))
    assert policy.address_allowed("x", ip("10.9.9.9"))
    assert policy.address_allowed("img.local", ip("192.168.7.7"))  # an allowlisted name may resolve anywhere
    assert not policy.address_allowed("x", ip("192.168.7.7"))
    assert policy.address_allowed("x", ip("169.254.1.1"))
    assert not policy.address_allowed("x", ip("169.254.169.254"))  # a broad CIDR does not open metadata
    assert UrlPolicy.from_settings(settings(url_allowlist="169.254.169.254")).address_allowed(
        "x", ip("169.254.169.254"))


def _fetcher(**kw) -> ImageFetcher:
    return ImageFetcher(settings(**kw))


@pytest.mark.parametrize("url,reason", [
    ("https://127.0.0.1/x.png", "ssrf_blocked"),
    ("https://localhost/x.png", "ssrf_blocked"),
    ("https://169.254.169.254/latest/meta-data/", "ssrf_blocked"),
    ("https://[fd00:ec2::254]/latest/", "ssrf_blocked"),
    ("https://10.0.0.1/x.png", "ssrf_blocked"),
    ("https://2130706433/x.png", "ssrf_blocked"),  # 127.0.0.1 as a decimal integer
    ("http://example.com/x.png", "url_scheme_not_allowed"),
    ("https://user:pw@example.com/x.png", "invalid_url"),
    ("https://name.invalid/x.png", "url_unresolvable"),
])
def test_url_fetch_refusals(url, reason):
    with pytest.raises(Poison) as exc:
        _fetcher().fetch_url(url)
    assert (exc.value.reason, exc.value.stage) == (reason, "fetch")


def test_url_fetch_from_allowlisted_server_and_every_redirect_hop_rechecked(image_site):
    img = png_bytes()
    image_site.routes.update({
        "/a.png": img, "/hop": ("redirect", "/a.png"), "/to-private": ("redirect", "https://10.1.1.1/x.png"),
        "/to-meta": ("redirect", "https://169.254.169.254/latest/meta-data/"),
        "/to-file": ("redirect", "file:///etc/passwd"), "/loop": ("redirect", "/loop"),
        "/big": b"x" * 5000, "/gone": 404, "/busy": 503,
    })
    f = _fetcher(url_allowlist="127.0.0.1", fetch_max_bytes=4096, fetch_max_redirects=3)
    assert f.fetch_url(image_site.url + "/a.png") == img
    assert f.fetch_url(image_site.url + "/hop") == img
    for path, reason in [("/to-private", "ssrf_blocked"), ("/to-meta", "ssrf_blocked"),
                         ("/to-file", "url_scheme_not_allowed"), ("/loop", "too_many_redirects"),
                         ("/big", "image_too_large"), ("/gone", "url_not_found")]:
        with pytest.raises(Poison) as exc:
            f.fetch_url(image_site.url + path)
        assert exc.value.reason == reason, path
    assert image_site.hits["/loop"] == 4  # the first request plus 3 redirects, then refused
    with pytest.raises(Transient):
        f.fetch_url(image_site.url + "/busy")
    # Without the allowlist the very same server is refused before any request is made.
    hits = dict(image_site.hits)
    with pytest.raises(Poison, match="url_scheme_not_allowed"):
        _fetcher().fetch_url(image_site.url + "/a.png")
    with pytest.raises(Poison, match="ssrf_blocked"):
        _fetcher(url_allowlist="10.0.0.0/8").fetch_url(image_site.url.replace("http://127.0.0.1", "https://localhost")
                                                       + "/a.png")
    assert image_site.hits == hits


def test_connection_goes_to_the_checked_address(image_site, monkeypatch):
    """DNS rebinding: the name is resolved once, checked, and that address is what is dialled;
    the Host header keeps the name."""
    image_site.routes["/a.png"] = png_bytes()
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"] + ["10.66.66.66"] * 10)  # a rebinding DNS: safe first, then private

    def fake(host, *args, **kw):
        if host == "img.test":
            return real(next(answers), *args, **kw)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    port = image_site.url.rsplit(":", 1)[1]
    f = _fetcher(url_allowlist="127.0.0.1")
    with pytest.raises(Poison, match="url_scheme_not_allowed"):  # http to a name not on the list
        f.fetch_url(f"http://img.test:{port}/a.png")
    f = _fetcher(url_allowlist="127.0.0.1,img.test")
    assert f.fetch_url(f"http://img.test:{port}/a.png") == png_bytes()
    assert image_site.hosts[-1] == f"img.test:{port}"
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real("10.66.66.66", *a, **k)
                        if host == "evil.test" else real(host, *a, **k))
    with pytest.raises(Poison, match="ssrf_blocked"):
        _fetcher(url_allowlist="127.0.0.1").fetch_url("https://evil.test/a.png")


def test_slow_download_is_transient_not_poison(image_site):
    image_site.routes["/slow"] = ("slow", 3.0, b"x" * 30)
    with pytest.raises(Transient) as exc:
        _fetcher(url_allowlist="127.0.0.1", fetch_timeout_s=0.5).fetch_url(image_site.url + "/slow")
    assert exc.value.reason == "fetch_timeout"


def test_inline_fetch_limits():
    f = _fetcher(fetch_max_bytes=2048)
    small = png_bytes(size=(8, 8))
    assert f.fetch(ImageRef(inline_base64=base64.b64encode(small).decode())) == small
    with pytest.raises(Poison, match="invalid_base64"):
        f.fetch(ImageRef(inline_base64="not*base64!"))
    with pytest.raises(Poison, match="image_too_large"):
        f.fetch(ImageRef(inline_base64=base64.b64encode(b"x" * 4096).decode()))


def test_s3_fetch(moto_s3):
    img = png_bytes()
    uri = moto_s3.put("unit/a.png", img)
    big = moto_s3.put("unit/big.bin", b"x" * 5000)
    other = moto_s3.put("unit/x.png", img, bucket="someone-elses-bucket")
    kw = dict(aws_endpoint_url_s3=moto_s3.endpoint, s3_buckets=moto_s3.bucket, fetch_max_bytes=4096)
    f = _fetcher(**kw)
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    assert f.fetch(ImageRef(s3_uri=uri)) == img
    for ref, reason in [(f"s3://{moto_s3.bucket}/unit/missing.png", "object_not_found"),
                        (big, "image_too_large"), (other, "s3_bucket_not_allowed")]:
        with pytest.raises(Poison) as exc:
            f.fetch(ImageRef(s3_uri=ref))
        assert exc.value.reason == reason
    down = _fetcher(**{**kw, "aws_endpoint_url_s3": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(Transient, match="s3_unavailable"):
        down.fetch(ImageRef(s3_uri=uri))


# --- service client ----------------------------------------------------------------------

@pytest.mark.parametrize("status,body,kind,reason", [
    (415, {"error": "not_an_image", "detail": "x"}, Poison, "not_an_image"),
    (413, {"error": "image_too_large", "detail": "x"}, Poison, "image_too_large"),
    (400, {"error": "1 validation error for CaptionRequest ..."}, Poison, "service_rejected_400"),
    (503, {"error": "overloaded"}, Transient, "overloaded"),
    (429, "slow down", Transient, "service_http_429"),
    (500, {"error": "injected_fault", "detail": "x"}, Transient, "injected_fault"),
    (401, {"error": "unauthorized", "detail": "x"}, Transient, "unauthorized"),  # our config, not the event
])
def test_service_answers_are_classified(status, body, kind, reason):
    client = ServiceClient(settings(service_url="http://svc.test"))
    payload = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
    client.client = httpx.Client(base_url="http://svc.test", transport=httpx.MockTransport(
        lambda req: httpx.Response(status, content=payload)))
    with pytest.raises(kind) as exc:
        client.caption(png_bytes(), CaptionOptions())
    assert (exc.value.reason, exc.value.stage) == (reason, "caption")


def test_service_connection_errors_are_transient():
    client = ServiceClient(settings(service_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(Transient, match="service_unavailable"):
        client.caption(png_bytes(), CaptionOptions())


# --- the per-record handler --------------------------------------------------------------

Record = namedtuple("Record", "topic partition offset key value headers")


class FakeService:
    def __init__(self, failures: list[Exception] | None = None):
        self.failures, self.calls = list(failures or []), 0

    def caption(self, image, options):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return CaptionResult(caption="hi", hashtags=["#a"], alt_text="alt", candidates=[], model_version="v1",
                             request_id="r1", latency_ms=1.0, image_sha256="abc")


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


@pytest.mark.parametrize("mutate,reason,stage", [
    (lambda k, v, h: (k, b"{not json", h), "invalid_json", "decode"),
    (lambda k, v, h: (k, v, []), "not_a_cloudevent", "decode"),
    (lambda k, v, h: (k, v, [(n, b"com.example.other" if n == "ce_type" else x) for n, x in h]),
     "unexpected_event_type", "decode"),
    (lambda k, v, h: (k, v, [(n, b"text/plain" if n == "content-type" else x) for n, x in h]),
     "unsupported_content_type", "decode"),
    (lambda k, v, h: (k, json.dumps({"creator_id": "c", "image": inline()}).encode(), h),
     "schema_violation", "validate"),
    (lambda k, v, h: (k, None, h), "empty_value", "decode"),
])
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


# --- /events authentication (snap2caption_service/serving/auth.py) -------------------------------

@pytest.mark.parametrize("host,local", [
    ("snap2caption.prod.svc.cluster.local", True), ("snap2caption.prod.svc.cluster.local:80", True),
    ("snap2caption.prod.svc", True), ("SNAP2CAPTION.Prod.SVC.Cluster.Local.", True),
    ("snap2caption.prod", False), ("snap2caption.prod.example.com", False), ("svc.cluster.local", False),
    ("prod.svc.cluster.local.evil.example", False), ("..svc", False), ("127.0.0.1:3000", False),
    ("[::1]:3000", False), ("", False)])
def test_cluster_local_host_names(host, local):
    from snap2caption_service.serving.auth import is_cluster_local_host

    assert is_cluster_local_host(host) is local
    assert is_cluster_local_host("a.b.svc.corp.internal", "corp.internal")
    assert not is_cluster_local_host("a.b.svc.cluster.local", "corp.internal")


def _asgi_status(mode: str, path: str, host: str, auth: str | None = None) -> int:
    import asyncio

    from snap2caption_service.serving.auth import ApiKeyMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"host", host.encode())] + ([(b"authorization", auth.encode())] if auth else [])
    mw = ApiKeyMiddleware(app, ["k1"], events_auth=mode, cluster_domain="cluster.local")
    asyncio.run(mw({"type": "http", "path": path, "headers": headers}, None, send))
    return sent[0]["status"]


@pytest.mark.parametrize("mode,path,host,auth,status", [
    ("bearer", "/events", "a.b.svc.cluster.local", None, 401),
    ("bearer", "/events", "a.b.svc.cluster.local", "Bearer k1", 200),
    ("cluster-local", "/events", "a.b.svc.cluster.local", None, 200),
    ("cluster-local", "/events", "a.b.example.com", None, 401),
    ("cluster-local", "/events", "a.b.example.com", "Bearer k1", 200),
    ("cluster-local", "/generate-caption", "a.b.svc.cluster.local", None, 401),
    ("none", "/events", "a.b.example.com", None, 200),
    ("none", "/feedback", "a.b.example.com", None, 401),
    ("none", "/readyz", "a.b.example.com", None, 200),
])
def test_events_auth_modes(mode, path, host, auth, status):
    assert _asgi_status(mode, path, host, auth) == status


def test_events_auth_setting_is_validated():
    from snap2caption_service.serving.auth import ApiKeyMiddleware

    from snap2caption_service.core.settings import Settings

    with pytest.raises(ValidationError, match="events_auth"):
        Settings(_env_file=None, events_auth="open")
    with pytest.raises(ValueError, match="SNAP2CAPTION_EVENTS_AUTH"):
        ApiKeyMiddleware(None, ["k"], events_auth="open", cluster_domain="cluster.local")
    assert Settings(_env_file=None).events_auth == "bearer"  # nothing is opened unless asked for


# --- which broker the tests use (tests/stream_support.py) --------------------------------

@pytest.mark.parametrize("environ,source", [
    ({}, "script"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"}, "external"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "  "}, "script"),
    ({"SNAP2CAPTION_KAFKA": "auto", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}, "external"),
    ({"SNAP2CAPTION_KAFKA": "script", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}, "script"),
    ({"SNAP2CAPTION_KAFKA": "testcontainers"}, "testcontainers"),
    ({"SNAP2CAPTION_KAFKA": " TestContainers ", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}, "testcontainers"),
])
def test_broker_selection(environ, source):
    from stream_support import broker_source

    assert broker_source(environ) == source


def test_an_unknown_broker_choice_is_an_error():
    from stream_support import BrokerError, broker_source

    with pytest.raises(BrokerError, match="SNAP2CAPTION_KAFKA='docker'.*auto, script, testcontainers"):
        broker_source({"SNAP2CAPTION_KAFKA": "docker"})


def test_testcontainers_without_a_docker_engine_fails_the_kafka_tests_with_a_clear_message(tmp_path):
    """Selected but unusable, the testcontainers broker fails the tests that need a broker
    (never skips them), and says why and what to do instead."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "test_needs_broker.py").write_text(
        "from stream_support import bootstrap  # noqa: F401\n\n"
        "def test_needs_a_broker(bootstrap):\n    assert bootstrap\n")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "SNAP2CAPTION_KAFKA": "testcontainers",
           # No Docker engine here; pointing at a socket that cannot exist keeps the test
           # meaningful on a machine that has one.
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_needs_broker.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 error" in out and "skipped" not in out, out
    assert "no Kafka broker: SNAP2CAPTION_KAFKA=testcontainers needs a Docker engine" in out, out
    assert "unset SNAP2CAPTION_KAFKA to use infra/kafka.sh" in out, out


def test_k8s_lets_knative_deliver_to_events_on_the_cluster_local_address():
    """The KafkaSource -> Sequence -> Service path cannot send a key: the base config must
    say so, with a value the service accepts."""
    from conftest import REPO

    env = dict(line.split("=", 1) for line in (REPO / "k8s/base/config/common.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["SNAP2CAPTION_EVENTS_AUTH"] == "cluster-local"
    from snap2caption_service.core.settings import Settings

    assert Settings(_env_file=None, events_auth=env["SNAP2CAPTION_EVENTS_AUTH"]).events_auth == "cluster-local"
