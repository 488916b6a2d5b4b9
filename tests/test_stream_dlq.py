"""The dead-letter table: 20 kinds of malformed or failing upload events, each dead-lettered
once with its reason, stage, original bytes and headers and its source coordinates, while
the good events between them are captioned. Real broker, real service, real S3 API server."""

from __future__ import annotations

import base64
import json

import pytest

from conftest import png_bytes
from stream_support import (  # noqa: F401
    ConsumerProcess,
    bootstrap,
    consumer_env,
    create_topics,
    headers_dict,
    image_site,
    inline,
    moto_s3,
    produce,
    read_topic,
    topic_env,
    upload_event,
)

pytestmark = [pytest.mark.kafka, pytest.mark.service]

MAX_BYTES = 100_000


def _with(headers, **changes):
    """Headers with ce_* attributes replaced (value None drops the header)."""
    out = [(k, v) for k, v in headers if k not in changes]
    return out + [(k, v.encode()) for k, v in changes.items() if v is not None]


def _bad_cases(moto_s3, site) -> list[tuple[str, str, str, tuple]]:
    """(name, reason, stage, (key, value, headers))."""
    big = moto_s3.put("dlq/big.png", png_bytes(size=(2, 2)) + b"\0" * (MAX_BYTES + 10))
    other_bucket = moto_s3.put("dlq/x.png", png_bytes(), bucket="someone-elses-bucket")
    site.routes.update({"/to-private": ("redirect", "https://10.20.30.40/x.png"), "/loop": ("redirect", "/loop")})
    png = png_bytes()
    k, v, h = upload_event("template", inline())

    def ev(media_id, image, **extra):
        return upload_event(media_id, image, **extra)

    return [
        ("invalid JSON", "invalid_json", "decode", (b"bad-json", b'{"media_id": "x", oops', h)),
        (
            "no CloudEvents headers",
            "not_a_cloudevent",
            "decode",
            (b"bad-plain", v, [("content-type", b"application/json")]),
        ),
        ("CloudEvents 0.3", "unsupported_specversion", "decode", (b"bad-spec", v, _with(h, ce_specversion="0.3"))),
        (
            "another event type",
            "unexpected_event_type",
            "decode",
            (b"bad-type", v, _with(h, ce_type="com.example.deleted")),
        ),
        (
            "XML data",
            "unsupported_content_type",
            "decode",
            (b"bad-ct", b"<upload/>", _with(h, **{"content-type": "application/xml"})),
        ),
        ("tombstone", "empty_value", "decode", (b"bad-tombstone", None, h)),
        (
            "no media_id",
            "schema_violation",
            "validate",
            (b"bad-nomedia", json.dumps({"creator_id": "c", "image": inline()}).encode(), h),
        ),
        (
            "two image sources",
            "schema_violation",
            "validate",
            ev("bad-two", {"s3_uri": "s3://snap2caption-uploads/a.png", "url": "https://example.com/a.png"}),
        ),
        ("tone too long", "schema_violation", "validate", ev("bad-tone", inline(), tone="t" * 40)),
        (
            "missing S3 object",
            "object_not_found",
            "fetch",
            ev("bad-nokey", {"s3_uri": f"s3://{moto_s3.bucket}/dlq/nope.png"}),
        ),
        ("bucket not allowlisted", "s3_bucket_not_allowed", "fetch", ev("bad-bucket", {"s3_uri": other_bucket})),
        ("oversized S3 object", "image_too_large", "fetch", ev("bad-big", {"s3_uri": big})),
        (
            "cloud metadata URL",
            "ssrf_blocked",
            "fetch",
            ev("bad-meta", {"url": "https://169.254.169.254/latest/meta-data/"}),
        ),
        (
            "redirect to a private address",
            "ssrf_blocked",
            "fetch",
            ev("bad-redirect", {"url": site.url + "/to-private"}),
        ),
        ("plain http", "url_scheme_not_allowed", "fetch", ev("bad-http", {"url": "http://example.com/a.png"})),
        ("404 URL", "url_not_found", "fetch", ev("bad-404", {"url": site.url + "/missing.png"})),
        ("redirect loop", "too_many_redirects", "fetch", ev("bad-loop", {"url": site.url + "/loop"})),
        ("invalid base64", "invalid_base64", "fetch", ev("bad-b64", {"inline_base64": "this is *not* base64!"})),
        (
            "a PDF, not an image",
            "not_an_image",
            "caption",
            ev("bad-pdf", {"inline_base64": base64.b64encode(b"%PDF-1.4\n" + b"x" * 200).decode()}),
        ),
        (
            "truncated PNG",
            "truncated_image",
            "caption",
            ev("bad-trunc", {"inline_base64": base64.b64encode(png[: len(png) // 2]).decode()}),
        ),
    ]


def test_dead_letter_table(bootstrap, service, moto_s3, image_site, tmp_path):
    topics = topic_env("dlq")
    create_topics(bootstrap, topics)
    image_site.routes["/good.png"] = png_bytes((1, 2, 3))
    cases = _bad_cases(moto_s3, image_site)
    records, good = [], []
    for i, (_name, _reason, _stage, record) in enumerate(cases):
        records.append(record)
        source = (
            {"url": image_site.url + "/good.png"}
            if i % 5 == 1
            else {"s3_uri": moto_s3.put(f"dlq/good-{i}.png", png_bytes((i, 9, 9)))}
            if i % 5 == 2
            else inline((i * 10, 50, 50))
        )
        good.append(upload_event(f"good-{i}", source))
        records.append(good[-1])

    env = consumer_env(
        bootstrap,
        service.url,
        topics,
        SNAP2CAPTION_URL_ALLOWLIST="127.0.0.1",
        SNAP2CAPTION_FETCH_MAX_BYTES=MAX_BYTES,
        **moto_s3.env,
    )
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        sent = produce(bootstrap, topics["SNAP2CAPTION_TOPIC_UPLOADED"], records)
        dlq = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_DLQ"], len(cases), timeout=240, settle=1)
        captioned = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], len(good), timeout=240, settle=1)
        metrics = consumer.metrics()
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]

    assert sorted(r.key.decode() for r in captioned) == sorted(k.decode() for k, _, _ in good)
    by_source = {(headers_dict(r)["dlq_source_partition"], headers_dict(r)["dlq_source_offset"]): r for r in dlq}
    assert len(dlq) == len(by_source) == len(cases), [headers_dict(r).get("dlq_reason") for r in dlq]
    for (name, reason, stage, (key, value, headers)), meta in zip(cases, sent[::2]):
        record = by_source[(str(meta.partition), str(meta.offset))]
        h = headers_dict(record)
        assert (h["dlq_reason"], h["dlq_stage"]) == (reason, stage), f"{name}: {h.get('dlq_detail')}"
        assert h["dlq_source_topic"] == topics["SNAP2CAPTION_TOPIC_UPLOADED"], name
        assert h["dlq_detail"] and h["dlq_consumer_group"] == topics["SNAP2CAPTION_CONSUMER_GROUP"], name
        assert record.key == key and record.value == value, name  # the original bytes, untouched
        assert record.headers[: len(headers)] == list(headers), name  # original headers first
        count = f'snap2caption_consumer_dlq_total{{reason="{reason}",stage="{stage}"}}'
        assert count in metrics, name
    print(f"\n{len(cases)} poison events dead-lettered, {len(good)} good events captioned")


def _create_topic(bootstrap: str, name: str, partitions: int = 1, **config) -> None:
    """A topic with its own config (max.message.bytes ...), before the consumer creates the rest."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs={k.replace("_", "."): str(v) for k, v in config.items()})]
        )
    finally:
        admin.close()


def test_a_poison_record_too_large_to_dead_letter_goes_out_as_a_stub_and_blocks_nothing(bootstrap, service, tmp_path):
    """Issue 13. Before: a 2 MB invalid record on an uploads topic that allows 4 MiB records could
    not be dead-lettered (MessageSizeTooLargeError), the transaction aborted and was retried twice
    a second, forever, and none of the good events after it was captioned. Now its dead letter is
    a stub; so is that of a 700 kB one that the producer takes but the DLQ topic
    (max.message.bytes 512 KiB) refuses. Every good event is captioned exactly once."""
    import hashlib
    from collections import Counter

    topics = topic_env("dlq-big")
    uploaded, dlq_topic = topics["SNAP2CAPTION_TOPIC_UPLOADED"], topics["SNAP2CAPTION_TOPIC_DLQ"]
    _create_topic(bootstrap, uploaded, max_message_bytes=4 * 1024 * 1024)
    _create_topic(bootstrap, dlq_topic, max_message_bytes=512 * 1024)
    create_topics(bootstrap, topics, partitions=1)  # the others
    _, _, h = upload_event("template", inline())
    huge, big = b"{" + b"x" * 2_000_000, b"{" + b"y" * 700_000  # invalid JSON, both
    good = [upload_event(f"after-{i}", inline((i * 30, 90, 90))) for i in range(6)]
    records = [(b"poison-huge", huge, h), *good[:3], (b"poison-big", big, h), *good[3:]]
    env = consumer_env(bootstrap, service.url, topics)
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        sent = produce(bootstrap, uploaded, records)
        captioned = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], len(good), timeout=180, settle=2)
        dlq = read_topic(bootstrap, dlq_topic, 2, timeout=30, settle=1)
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert Counter(r.key.decode() for r in captioned) == Counter(k.decode() for k, _, _ in good), consumer.log()[-3000:]
    assert len(dlq) == 2, consumer.log()[-3000:]
    for record, (key, value, _), meta in zip(
        sorted(dlq, key=lambda r: int(headers_dict(r)["dlq_source_offset"])),
        [records[0], records[4]],
        [sent[0], sent[4]],
    ):
        hd, info = headers_dict(record), json.loads(record.value)
        assert (hd["dlq_stub"], hd["dlq_reason"], hd["dlq_stage"]) == ("true", "invalid_json", "decode")
        assert (hd["dlq_source_topic"], hd["dlq_source_offset"]) == (uploaded, str(meta.offset))
        assert info["value_sha256"] == hd["dlq_value_sha256"] == hashlib.sha256(value).hexdigest()
        assert (info["source_offset"], info["value_bytes"], info["reason"]) == (meta.offset, len(value), "invalid_json")
        assert record.key == key and len(record.value) < 10_000
        assert record.headers[: len(h)] == list(h)  # the original (small) headers are kept
    print(
        f"\n{consumer.log().count('its result was refused')} refusal(s) logged; stubs: {[json.loads(r.value)['why_stub'] for r in dlq]}"
    )
