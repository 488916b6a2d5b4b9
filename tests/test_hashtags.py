from snap2caption_service.core.hashtags import finalize_hashtags, keywords, normalize_hashtag


def test_normalize_lowercases_and_strips_punctuation():
    assert normalize_hashtag("#Red-Circle!") == "#redcircle"
    assert normalize_hashtag("sunset") == "#sunset"
    assert normalize_hashtag("#café") == "#cafe"
    assert normalize_hashtag("#new_arrival") == "#newarrival"


def test_normalize_rejects_empty_and_numeric():
    assert normalize_hashtag("#") is None
    assert normalize_hashtag("#!!!") is None
    assert normalize_hashtag("#2024") is None


def test_finalize_dedupes_keeps_order_and_count():
    tags = finalize_hashtags(
        ["#Red", "#red", "#RED!", "#circle", "#shapes", "#art", "#design", "#mood", "#vibes", "#x1", "#extra"], 8
    )
    assert tags == ["#red", "#circle", "#shapes", "#art", "#design", "#mood", "#vibes", "#x1"]


def test_every_tag_is_hash_plus_lowercase_alnum():
    tags = finalize_hashtags(["#Hello World", "#ÜBER", "#a.b.c", "#ok"], 5, "")
    for t in tags:
        assert t[0] == "#" and t[1:].isalnum() and t[1:] == t[1:].lower() and t.isascii()


def test_fill_from_keywords_when_model_gives_too_few():
    tags = finalize_hashtags(["#red"], 6, fallback_text="A large red circle on a plain teal background. Sunset walk")
    assert tags[0] == "#red"
    assert "#circle" in tags and "#teal" in tags and "#sunset" in tags
    assert len(tags) == 5  # red, circle, teal, sunset, walk — no filler beyond real keywords
    assert "#walk" in tags


def test_never_pads_with_filler():
    assert finalize_hashtags([], 8, fallback_text="a the of") == []


def test_keywords_skip_stopwords_and_short_words():
    assert keywords("The red circle is in the top left of the image") == ["red", "circle"]
