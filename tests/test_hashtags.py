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
    tags = finalize_hashtags(["#red"], 6, caption="A large red circle on a plain teal background. Sunset walk")
    assert tags[0] == "#red"
    assert "#circle" in tags and "#teal" in tags and "#sunset" in tags
    assert len(tags) == 5  # red, circle, teal, sunset, walk — no filler beyond real keywords
    assert "#walk" in tags


def test_never_pads_with_filler():
    assert finalize_hashtags([], 8, caption="a the of") == []


def test_keywords_skip_stopwords_and_short_words():
    assert keywords("The red circle is in the top left of the image") == ["red", "circle"]
    # The demo names other objects "a green shape" (generator 9): #shape would be filler.
    assert keywords("A red circle, a green shape, two things and objects") == ["red", "circle", "green", "two"]
    # The demo's captions size their object ("a big red circle"): a size word is no hashtag.
    assert keywords("Weekend vibes with a big red circle, a little star") == [
        "weekend",
        "vibes",
        "red",
        "circle",
        "star",
    ]


# --- Ranking (issue 16 part 2) -----------------------------------------------------------------
import base64  # noqa: E402

import pytest  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from conftest import png_bytes  # noqa: E402
from snap2caption_service.core.contracts import CaptionOptions, ModelAnswer  # noqa: E402
from snap2caption_service.core.hashtags import (  # noqa: E402
    GENERIC_HASHTAGS,
    LEARNED_VERDICT,
    context_words,
    hashtag_edit,
    is_generic,
    rank_answer,
    rank_hashtags,
    tag_words,
)

CAPTION = "Weekend vibes with a red circle."
ALT = "A large red circle in the center, on a plain gray background."
POOL = ["#red", "#circle", "#redcircle", "#vibes", "#aesthetic", "#dailypic", "#mood", "#shapes"]


def test_the_generic_list_ships_with_the_issues_examples():
    for tag in ("#reels", "#explore", "#viral", "#fyp", "#instagood", "#photooftheday", "#aesthetic", "#mood"):
        assert tag in GENERIC_HASHTAGS
    assert all(t == t.lower() and t.startswith("#") and t[1:].isalnum() for t in GENERIC_HASHTAGS)
    assert "#" not in GENERIC_HASHTAGS and "#red" not in GENERIC_HASHTAGS


def test_generic_tags_are_never_produced_unless_included():
    ranked = rank_hashtags(["#reels", "#red", "#explore", "#viral", "#circle", "#fyp"], 5, CAPTION, ALT)
    assert not set(ranked) & GENERIC_HASHTAGS
    assert ranked[:2] == ["#red", "#circle"]
    # Asked for by name (in any spelling), it comes first and counts toward n.
    ranked = rank_hashtags(["#reels", "#red", "#circle", "#redcircle"], 3, CAPTION, ALT, include=["#Reels!"])
    assert ranked == ["#reels", "#redcircle", "#red"]


def test_multi_word_tags_are_split_into_real_words():
    assert tag_words("#redcircle") == ("red", "circle")
    assert tag_words("#smallbusiness") == ("small", "business")
    assert tag_words("#circle") == ("circle",)
    assert tag_words("#xqzt") == ("xqzt",)  # not dictionary words: one opaque word
    assert tag_words("#abc123") == ("abc123",)


def test_tags_joining_only_generic_words_are_generic():
    for tag in ("#viralreels", "#explorepage", "#photooftheday", "#fypviral", "#instagoodmood"):
        assert is_generic(tag), tag
    for tag in ("#redcircle", "#smallbusiness", "#lovebirds", "#sunsetphoto"):
        assert not is_generic(tag), tag


def test_relevant_first_and_specific_above_its_words():
    ranked = rank_hashtags(["#geometry", "#art", "#circle", "#red", "#redcircle", "#redart"], 6, CAPTION, ALT)
    # #redcircle (both words named) > #circle, #red (model order) > #redart (half named) > the rest.
    assert ranked == ["#redcircle", "#circle", "#red", "#redart", "#geometry", "#art"]
    # Plurals match: the alt text's "circles" makes #circle relevant.
    assert rank_hashtags(["#art", "#circle"], 1, "", "Two circles.") == ["#circle"]


def test_never_more_than_n_and_topped_up_only_from_keywords():
    assert len(rank_hashtags(POOL, 3, CAPTION, ALT)) == 3
    # Fewer than asked rather than the background's colour (#gray, for a red circle) or filler.
    assert rank_hashtags(POOL, 5, CAPTION, ALT) == ["#redcircle", "#red", "#circle", "#shapes"]
    assert rank_hashtags(["#reels", "#fyp"], 5, "", "") == []  # never filler


def test_learned_removals_sink_and_additions_rise():
    base = rank_hashtags(["#red", "#circle", "#design", "#art", "#shapes"], 4, CAPTION, ALT)
    assert base == ["#red", "#circle", "#design", "#art"]
    # A hint (below the verdict) only reorders; a verdict drops the tag or brings one in.
    hint = rank_hashtags(["#red", "#circle", "#design", "#art", "#shapes"], 4, CAPTION, ALT, learned={"#design": -0.1})
    assert hint == ["#red", "#circle", "#art", "#shapes"]
    learned = {"#design": -LEARNED_VERDICT, "#bauhaus": LEARNED_VERDICT + 0.1}
    ranked = rank_hashtags(["#red", "#circle", "#design"], 4, CAPTION, ALT, learned=learned)
    assert ranked[:3] == ["#red", "#circle", "#bauhaus"] and "#design" not in ranked
    # Not enough to bring in a tag the model did not write.
    assert "#bauhaus" not in rank_hashtags(["#red"], 4, CAPTION, ALT, learned={"#bauhaus": LEARNED_VERDICT - 0.01})
    # A generic tag creators add is still never produced.
    assert "#fyp" not in rank_hashtags(["#red"], 4, CAPTION, ALT, learned={"#fyp": 1.0})


def test_context_words_are_what_the_tags_and_text_both_name():
    assert context_words(POOL, CAPTION, ALT) == ["red", "circle"]
    assert context_words(["#art"], CAPTION, ALT) == []


def test_hashtag_edit_is_kept_removed_added():
    assert hashtag_edit(["#red", "#Design", "#circle"], ["#red", "#circle", "#bauhaus"]) == (
        ["#red", "#circle"],
        ["#design"],
        ["#bauhaus"],
    )
    assert hashtag_edit(["#red"], None) == ([], [], [])


def test_include_hashtags_are_bounded_by_the_count():
    assert CaptionOptions(num_hashtags=3, include_hashtags=["#Reels", "#reels", "sunset"]).include_hashtags == [
        "#reels",
        "#sunset",
    ]
    with pytest.raises(ValidationError, match="3 hashtags to include, but num_hashtags is 2") as err:
        CaptionOptions(num_hashtags=2, include_hashtags=["#a", "#b", "#c"])
    assert err.value.errors()[0]["loc"] == ("include_hashtags",)
    with pytest.raises(ValidationError, match="at least one letter"):
        CaptionOptions(include_hashtags=["#2024"])


def test_rank_answer_uses_the_options_and_the_learned_table():
    class Learned:
        def adjustments(self, platform, creator_id, context):
            assert (platform, creator_id, list(context)) == ("x", "c1", ["red", "circle"])
            return {"#shapes": -1.0}

    answer = ModelAnswer(caption=CAPTION, hashtags=POOL, alt_text=ALT)
    options = CaptionOptions(platform="x", num_hashtags=2, creator_id="c1", include_hashtags=["#mood"])
    assert rank_answer(answer, options, Learned()) == ["#mood", "#redcircle"]
    assert "#shapes" not in rank_answer(
        answer, CaptionOptions(platform="x", num_hashtags=2, creator_id="c1"), Learned()
    )


def test_the_service_never_answers_a_generic_tag_nor_more_than_asked(service):
    """Through the real service (tiny random model): the model's pool is ranked down to the count."""
    image = base64.b64encode(png_bytes()).decode()
    asks = [
        {"platform": "instagram", "num_hashtags": 5, "num_candidates": 2},
        {"platform": "threads", "num_hashtags": 1},
        {"platform": "generic", "num_hashtags": 10},
        {"platform": "x", "num_hashtags": 2, "include_hashtags": ["#Explore"]},
    ]
    with service.client() as c:
        for ask in asks:
            r = c.post("/generate-caption", json={"image": image, **ask})
            assert r.status_code == 200, r.text
            body = r.json()
            for cand in body["candidates"]:
                tags = cand["hashtags"]
                assert len(tags) <= ask["num_hashtags"], (ask, tags)
                included = [t.lower() for t in ask.get("include_hashtags", [])]
                assert tags[: len(included)] == included, (ask, tags)
                assert not set(tags[len(included) :]) & GENERIC_HASHTAGS, (ask, tags)
        r = c.post("/generate-caption", json={"image": image, "num_hashtags": 1, "include_hashtags": ["#a", "#b"]})
        assert r.status_code == 400 and r.json()["fields"][0]["loc"] == ["include_hashtags"], r.text
        r = c.post(
            "/generate-caption/upload",
            files={"image": ("p.png", png_bytes(), "image/png")},
            data={"num_hashtags": "2", "include_hashtags": "#reels, #sunset"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["hashtags"][:2] == ["#reels", "#sunset"]
        r = c.post(
            "/generate-caption/upload",
            files={"image": ("p.png", png_bytes(), "image/png")},
            data={"num_hashtags": "1", "include_hashtags": "#reels #sunset"},
        )
        assert r.status_code == 400 and r.json()["fields"][0]["loc"] == ["include_hashtags"], r.text


def test_the_ranking_tops_up_from_what_the_alt_text_describes_too():
    """The ranker's own top-up (rule 4: a pool left short after generic and creator-removed tags are
    dropped) filled from every word of the alt text and caption, so the background and the
    creator's voice came back there (#black, #speaking for a blue star on black) after parsing had
    stopped adding them. Both now fill from one place (hashtags.top_up)."""
    caption = "My big blue star on the left and I are not speaking today."
    alt = "A large blue star on the left, on a plain black background."
    assert rank_hashtags(["#bluestar", "#fyp"], 5, caption, alt) == ["#bluestar", "#blue", "#star"]
    assert rank_hashtags(["#bluestar"], 5, caption, alt, learned={"#star": -0.9}) == ["#bluestar", "#blue"]
    # No alt text: the caption is all there is; no tag at all: every word may fill up.
    assert rank_hashtags([], 2, "Sunny beach walk") == ["#sunny", "#beach"]
    assert rank_hashtags([], 2, "", "A photo, on a plain black background.") == ["#black"]


def test_words_of_the_text_never_outrank_the_models_own_tags():
    """The README screenshot's answer (session 17): the demo model wrote five tags for a pool of
    eight. Parsing topped the pool up with words of the caption and of the alt text's background
    ("speaking", "black"), and the ranking, which favours tags the text says, served #black and
    #speaking above #starart. Now only what the alt text describes fills up, and the caption only
    an answer that has no alt text or no tag at all."""
    from snap2caption_service.core.prompting import parse_output

    text = (
        "Caption: My big blue star on the left and I are not speaking today. It knows what it did.\n"
        "Hashtags: #bluestar #blue #star #starart #geometricart\n"
        "Alt text: A large blue star on the left and a small red circle, on a plain black background."
    )
    answer = parse_output(text, 8)
    assert answer.hashtags == ["#bluestar", "#blue", "#star", "#starart", "#geometricart", "#red", "#circle"]
    five = rank_hashtags(answer.hashtags, 5, answer.caption, answer.alt_text)
    assert five == ["#bluestar", "#blue", "#star", "#red", "#circle"], five
    assert "#black" not in rank_hashtags(answer.hashtags[:5], 5, answer.caption, answer.alt_text)
    # No alt text: the caption is all the model said about the picture. No tags and nothing the
    # alt text describes: every word it said may fill up, as before, since a result needs a tag.
    assert parse_output("Sunny day at the beach #Beach\nMore text", 3).hashtags == ["#beach", "#sunny"]
    alt_only_background = "Caption: Sunny beach.\nHashtags:\nAlt text: A photo, on a plain black background."
    assert parse_output(alt_only_background, 3).hashtags == ["#black", "#sunny", "#beach"]
