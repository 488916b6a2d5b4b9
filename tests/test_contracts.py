"""Unit tests for snap2caption_service.core.contracts: upload events, image references and
captioned events."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from snap2caption_service.core.contracts import (
    MAX_CAPTION_CHARS,
    MAX_CREATOR_ID_CHARS,
    MAX_FEEDBACK_RECORD_BYTES,
    MAX_HASHTAG_CHARS,
    MAX_HASHTAGS_LIST,
    MAX_REASON_CHARS,
    CaptionedEvent,
    CaptionOptions,
    CaptionResult,
    FeedbackRecord,
    FeedbackRequest,
    ImageRef,
    ServedCaption,
    UploadEvent,
)
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
    assert ev.options() == CaptionOptions(tone="funny", creator_id="c")  # feedback on it is bound to "c"
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


@pytest.mark.parametrize(
    "request_id",
    ["../../../tmp/planted", "never-served", "A" * 32, "0" * 31, "0" * 33, "0" * 31 + "/", "", "0" * 32 + "\n"],
)
def test_feedback_request_ids_have_exactly_the_shape_the_service_issues(request_id):
    """A request_id becomes a file name in the caption archive: only 32 lowercase hex digits."""
    with pytest.raises(ValidationError, match="request_id"):
        FeedbackRequest(request_id=request_id, rating="up")
    from snap2caption_service.serving.pipeline import new_request_id

    FeedbackRequest(request_id=new_request_id(), rating="up")


@pytest.mark.parametrize(
    "field,value",
    [
        ("edited_caption", "x" * (MAX_CAPTION_CHARS + 1)),
        ("edited_hashtags", ["#" + "a" * MAX_HASHTAG_CHARS]),  # 1.1 MB once got a 202, then never sent
        ("edited_hashtags", ["#a"] * (MAX_HASHTAGS_LIST + 1)),
        ("reason", "x" * (MAX_REASON_CHARS + 1)),
        ("creator_id", "x" * (MAX_CREATOR_ID_CHARS + 1)),
        ("creator_id", ""),
    ],
)
def test_every_free_text_feedback_field_is_bounded(field, value):
    with pytest.raises(ValidationError, match=field):
        FeedbackRequest(request_id="0" * 32, rating="down", **{field: value})


def test_the_largest_valid_feedback_record_fits_the_record_bound():
    """Every field at its limit, every character one that JSON escapes to 6 bytes: the record
    still fits MAX_FEEDBACK_RECORD_BYTES (which the feedback log enforces and Kafka's 1 MB
    message limit is far above)."""
    c = "\x01"
    served = ServedCaption(
        request_id="0" * 32,
        image_sha256="0" * 64,
        tone=c * 32,
        audience=c * 32,
        caption=c * MAX_CAPTION_CHARS,
        hashtags=[c * MAX_HASHTAG_CHARS] * MAX_HASHTAGS_LIST,
        alt_text=c * 2200,
        model_version=c * 256,
        served_at=c * 64,
        creator_id=c * MAX_CREATOR_ID_CHARS,
    )
    record = FeedbackRecord(
        request_id="0" * 32,
        rating="down",
        edited_caption=c * MAX_CAPTION_CHARS,
        edited_hashtags=[c * MAX_HASHTAG_CHARS] * MAX_HASHTAGS_LIST,
        reason=c * MAX_REASON_CHARS,
        creator_id=c * MAX_CREATOR_ID_CHARS,
        feedback_id=c * 64,
        received_at=c * 64,
        served=served,
    )
    size = len(record.model_dump_json().encode()) + 1
    assert 60_000 < size < MAX_FEEDBACK_RECORD_BYTES < 1_000_000


def test_served_captions_read_back_are_checked():
    """A ServedCaption comes back from files and Kafka: ids of the wrong shape are refused."""
    ok = dict(request_id="0" * 32, image_sha256="a" * 64, tone="t", audience="personal", caption="c")
    ok.update(hashtags=[], alt_text="a", model_version="v")
    ServedCaption(**ok)
    for field, bad in [("request_id", "../x"), ("image_sha256", "../../etc/passwd"), ("image_sha256", "A" * 64)]:
        with pytest.raises(ValidationError, match=field):
            ServedCaption(**{**ok, field: bad})
