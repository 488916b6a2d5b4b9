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
