"""Unit tests for snap2caption_service.core.contracts: upload events, image references and
captioned events."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from snap2caption_service.core.contracts import CaptionedEvent, CaptionOptions, CaptionResult, ImageRef, UploadEvent
from stream_support import inline


def test_upload_event_reuses_caption_options_limits():
    ev = UploadEvent.model_validate(
        {
            "media_id": "m1",
            "creator_id": "c",
            "image": {"s3_uri": "s3://bkt/a/b.jpg"},
            "tone": "funny",
            "new_field_from_a_newer_producer": 1,
        }
    )
    assert ev.options() == CaptionOptions(tone="funny")
    assert ev.image.kind == "s3"
    with pytest.raises(ValidationError, match="tone"):
        UploadEvent.model_validate({"media_id": "m", "creator_id": "c", "image": inline(), "tone": "x" * 33})
    with pytest.raises(ValidationError, match="num_hashtags"):
        UploadEvent.model_validate({"media_id": "m", "creator_id": "c", "image": inline(), "num_hashtags": 99})
    with pytest.raises(ValidationError, match="media_id"):
        UploadEvent.model_validate({"creator_id": "c", "image": inline()})


@pytest.mark.parametrize(
    "image",
    [
        {},
        {"s3_uri": "s3://bkt/k", "url": "https://x/y"},
        {"s3_uri": "s3://B/k"},
        {"s3_uri": "s3://bkt"},
        {"url": "ftp://host/x.png"},
        {"url": "file:///etc/passwd"},
        {"inline_base64": ""},
        {"gcs_uri": "gs://b/k"},
    ],
)
def test_image_ref_needs_exactly_one_valid_source(image):
    with pytest.raises(ValidationError):
        ImageRef.model_validate(image)


def test_captioned_event_is_caption_result_plus_provenance():
    result = CaptionResult(
        caption="c",
        hashtags=["#a"],
        alt_text="a",
        candidates=[],
        model_version="v",
        request_id="r",
        latency_ms=1.0,
        image_sha256="h",
    )
    up = UploadEvent(media_id="m", creator_id="cr", image=ImageRef(url="https://x.test/a.png"))
    ev = CaptionedEvent.from_result(result, up, "src-1", {"fetch_ms": 1.234, "caption_ms": 2.0})
    assert isinstance(ev, CaptionResult)
    assert (ev.media_id, ev.creator_id, ev.source_event_id, ev.timings["fetch_ms"]) == ("m", "cr", "src-1", 1.2)
