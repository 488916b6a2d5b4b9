"""core/platforms.py and platforms.json: each platform's rules, applied to every entry point's options."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from snap2caption_service.core.contracts import MAX_HASHTAGS, CaptionOptions, UploadEvent
from snap2caption_service.core.platforms import (
    DEFAULT_PLATFORM,
    PLATFORMS,
    PROFILES_FILE,
    PlatformProfile,
    fit_caption,
    post_text,
)


def test_the_data_file_has_every_platform_with_sourced_rules():
    assert set(PLATFORMS) >= {"instagram", "threads", "tiktok", "linkedin", "x", "generic"}
    assert DEFAULT_PLATFORM == "instagram"
    raw = json.loads(PROFILES_FILE.read_text())["profiles"]
    for name, profile in PLATFORMS.items():
        cap = profile.hashtag_cap or MAX_HASHTAGS
        assert 1 <= profile.recommended_hashtags <= cap <= MAX_HASHTAGS, name
        assert profile.caption_limit > 0 and profile.rule
        if name != "generic":  # every real platform's rule says where it comes from, and when
            assert raw[name]["sources"] and all(
                s["url"].startswith("https://") and s["date"] for s in raw[name]["sources"]
            )
    # Today's rules the issue names: Instagram 5 (since December 2025), Threads 1.
    assert PLATFORMS["instagram"].hashtag_cap == 5 and PLATFORMS["threads"].hashtag_cap == 1


@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_num_hashtags_defaults_to_the_platforms_recommended_count(name):
    assert CaptionOptions(platform=name).num_hashtags == PLATFORMS[name].recommended_hashtags


def test_more_hashtags_than_the_platform_takes_is_refused_naming_it():
    with pytest.raises(ValidationError) as refused:
        CaptionOptions(num_hashtags=8)  # what every caller sent before platforms existed
    problem = refused.value.errors()[0]
    assert problem["loc"] == ("num_hashtags",) and "Instagram accepts at most 5 hashtags" in problem["msg"]
    with pytest.raises(ValidationError, match="Threads accepts at most 1 hashtag"):
        CaptionOptions(platform="threads", num_hashtags=2)
    assert CaptionOptions(platform="linkedin", num_hashtags=10).num_hashtags == 10
    with pytest.raises(ValidationError, match="platform"):
        CaptionOptions(platform="myspace")


def test_kafka_upload_events_follow_the_same_rules():
    event = {"media_id": "m", "creator_id": "c", "image": {"url": "https://example.com/a.png"}}
    assert UploadEvent.model_validate(event).num_hashtags == 5
    assert UploadEvent.model_validate({**event, "platform": "x"}).options().num_hashtags == 2
    with pytest.raises(ValidationError, match="at most 5"):
        UploadEvent.model_validate({**event, "num_hashtags": 6})


def profile(limit: int, in_caption: bool = True) -> PlatformProfile:
    return PlatformProfile("p", "P", None, 2, limit, in_caption, True, "", ())


def test_a_caption_that_fits_is_untouched():
    assert fit_caption("A red circle on white.", ["#red", "#circle"], profile(280)) == "A red circle on white."


def test_the_post_text_fits_the_platforms_limit_hashtags_included():
    caption = "A long walk along the quiet beach at sunset with the dog and a red kite in the sky " * 4
    tags = ["#beachwalk", "#redkite"]
    fitted = fit_caption(caption, tags, profile(120))
    assert len(post_text(fitted, tags)) <= 120
    assert fitted.endswith("…") and caption.startswith(fitted[:-1].rstrip())  # cut at a word, marked
    # Where hashtags are not part of the text, only the caption counts.
    assert len(fit_caption(caption, tags, profile(120, in_caption=False))) <= 120


def test_the_captioned_event_records_the_platform_used():
    from snap2caption_service.core.contracts import CaptionedEvent, CaptionResult

    event = {"media_id": "m", "creator_id": "c", "image": {"url": "https://example.com/a.png"}, "platform": "x"}
    upload = UploadEvent.model_validate(event)
    result = CaptionResult(
        caption="A red circle.",
        hashtags=["#red", "#circle"],
        alt_text="A red circle.",
        candidates=[],
        model_version="v",
        request_id="0" * 32,
        latency_ms=1.0,
        platform=upload.platform,
    )
    captioned = CaptionedEvent.from_result(result, upload, "ce-1", {})
    assert captioned.model_dump()["platform"] == "x"
