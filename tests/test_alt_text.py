"""core/alt_text.py: one lint rule per accessibility guideline, the fixes every answer gets
(prompting.parse_output), the evaluation metric and the setting that caps the length."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from snap2caption_service.core.alt_text import (
    ALT_TEXT_MAX_CHARS,
    ALT_TEXT_TARGET_CHARS,
    RULES,
    background_clause,
    fix,
    lint,
    pass_rate,
    passes,
    without_background,
)
from snap2caption_service.core.prompting import parse_output


def rule_ids(text: str, max_chars: int = ALT_TEXT_MAX_CHARS) -> list[str]:
    return [v.rule for v in lint(text, max_chars)]


# (rule, a text that breaks it, a text that follows it)
RULE_CASES = [
    ("non-empty", "  ", "A dog."),
    ("non-empty", "...", "A dog."),
    ("single-line", "A dog\non the sand.", "A dog on the sand."),
    ("single-line", "A dog  on the sand.", "A dog on the sand."),
    ("no-emoji", "A dog 🐶 on the sand.", "A dog on the sand."),
    ("no-emoji", "A cake with 1️⃣ candle.", "A mug of tea at 30° with a © logo."),
    ("no-urls", "A poster for https://example.com/sale.", "A poster for a summer sale."),
    ("no-urls", "A poster for www.example.com.", "An email address, a@b.com, on a card."),
    ("no-hashtags", "A dog on the sand #beach.", "A dog on the sand, number 1."),
    ("no-hashtags", "A #sunset over the sea.", "A sign reading #1 on a door."),
    ("no-mentions", "@anna on a bike.", "Anna on a bike."),
    ("no-redundant-opener", "Image of a red circle.", "A red circle."),
    ("no-redundant-opener", "A photo of two kids.", "Two kids."),
    ("no-redundant-opener", "In this picture, a dog runs.", "A dog runs past a picture frame."),
    ("no-redundant-opener", "This image shows a cat.", "A cat looking at a photo of itself."),
    ("important-first", "There is a dog on the sand.", "A dog on the sand."),
    ("important-first", "It shows two kids playing.", "Two kids playing."),
    ("important-first", "Here we see a bridge at night.", "A bridge at night, here in Paris."),
    ("no-shouting", "A SIGN READING BIG SALE.", "A USB cable and an HDMI adapter."),
    ("sentence-case", "a dog on the sand.", "iPhone on a wooden desk."),
    ("full-stop", "A dog on the sand", 'A sign reading "Open."'),
    ("full-stop", "A dog on the sand...", "A dog on the sand."),
    ("full-stop", "A dog on the sand!", "Mr. Smith with a U.S. flag."),
    ("one-sentence", "A dog on the sand. The sun sets.", "Mr. Smith and J. Doe with a U.S. flag."),
    ("length-target", "A " + "very " * 30 + "long dog.", "A dog."),
]


@pytest.mark.parametrize(("rule", "bad", "good"), RULE_CASES)
def test_each_rule_catches_what_it_should_and_only_that(rule, bad, good):
    assert rule in rule_ids(bad)
    assert rule not in rule_ids(good)


def test_every_rule_has_a_case_and_every_violation_says_why():
    assert {r.id for r in RULES} == {case[0] for case in RULE_CASES} | {"hard-cap"}
    assert all(v.reason.endswith(".") for v in lint("image of a DOG DOG DOG #cute 🐶\nhttps://x.y @anna"))


def test_hard_cap_is_configurable():
    text = "A dog " + "running " * 10 + "on the sand."
    assert "hard-cap" in rule_ids(text, max_chars=40)
    assert "hard-cap" not in rule_ids(text, max_chars=len(text))
    assert rule_ids(text, max_chars=40).count("length-target") == 0  # the target is its own rule


def test_an_empty_text_reports_only_that_it_is_empty():
    assert rule_ids("") == ["non-empty"]
    assert not passes("") and passes("A red circle, on a blue background.")


@pytest.mark.parametrize(
    ("raw", "fixed"),
    [
        ("Image of a red circle", "A red circle."),
        ("image of a dog #cute", "A dog."),
        ("There is an image of a dog on the beach", "A dog on the beach."),
        ("This image shows a dog 🐶🐾 at the park!!", "A dog at the park."),
        ("A #sunset over the sea", "A sunset over the sea."),
        ("#tbt A dog on the beach. #dog #beach", "A dog on the beach."),
        ("@anna smiling at the camera", "Smiling at the camera."),
        ("Photo: a cat\non a   sofa", "A cat on a sofa."),
        ("It shows two kids playing", "Two kids playing."),
        ("A family 👨\u200d👩\u200d👧 at the park, see https://example.com", "A family at the park, see."),
        ("A large red circle in the center, on a plain gray background.", None),  # already fine
    ],
)
def test_fix_examples(raw, fixed):
    out = fix(raw)
    assert out == (fixed or raw)
    assert passes(out)


def test_fix_never_invents_what_it_cannot_safely_remove():
    # Filler that cannot go without breaking the sentence stays, and the lint still says so.
    assert fix("This is where we met") == "This is where we met."
    assert rule_ids(fix("This is where we met")) == ["important-first"]
    # Nothing left to read after the removals: the text is kept rather than emptied.
    assert fix("#cute #dog") == "#cute #dog"
    assert fix("🐶🐶") == "🐶🐶"
    assert fix("") == ""
    # Shouting and a second sentence cannot be fixed without guessing.
    assert "no-shouting" in rule_ids(fix("A SIGN READING BIG SALE"))
    assert "one-sentence" in rule_ids(fix("A dog on the sand. The sun sets"))


def test_a_joiner_inside_a_word_is_not_an_emoji():
    text = "A sign reading क्\u200dष."  # the zero-width joiner shapes the Devanagari conjunct
    assert fix(text) == text and "no-emoji" not in rule_ids(text)


def test_hard_cap_cuts_at_a_word_and_ends_with_a_full_stop():
    text = "A golden retriever running along a wide sandy beach at sunset with a red ball in its mouth"
    for cap in (16, 30, 40, 60):
        out = fix(text, cap)
        assert len(out) <= cap and out.endswith(".") and not out.endswith("..")
        kept = out[:-1]
        assert text.startswith(kept) and text[len(kept)] == " "  # whole words only
        assert kept.split()[-1] not in {"a", "the", "with", "in", "at"}  # no dangling word
    assert fix(text, 60) == "A golden retriever running along a wide sandy beach."
    assert fix(text, len(text) + 1) == text + "."


def test_fix_is_idempotent_and_never_longer_than_the_cap():
    pieces = [
        "image of", "Photo of", "There is", "this is", "a", "the", "dog", "DOG", "#tag", "@anna", "🐶",
        "\u200d", "\ufe0f", ".", "...", "!", ",", ":", "(", ")", '"', "\n", "https://x.y/z", "Mr.",
        "U.S.", "in this picture,", "It shows", "2 kids", "中文", "—", "iPhone", "#1", "a@b.c",
    ]  # fmt: skip
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(0, 30)))
        cap = rng.choice([2, 16, 40, ALT_TEXT_TARGET_CHARS, ALT_TEXT_MAX_CHARS])
        once = fix(text, cap)
        assert fix(once, cap) == once, text
        assert len(once) <= cap, text


def test_fix_refuses_a_cap_too_small_for_a_full_stop():
    with pytest.raises(ValueError, match="at least 2"):
        fix("A dog.", 1)


def test_pass_rate():
    assert pass_rate(["A dog.", "image of a cat", "A red circle.", ""]) == 0.5
    assert pass_rate(["A dog running on the sand."], max_chars=16) == 0.0
    with pytest.raises(ValueError, match="empty"):
        pass_rate([])
    with pytest.raises(TypeError, match="not one string"):
        pass_rate("A dog.")


# --- used on every answer -------------------------------------------------------------------


def test_parse_output_cleans_the_alt_text():
    out = parse_output(
        "Caption: Beach day with my best friend\nHashtags: #dog\nAlt text: image of a dog #labrador 🐶", 3
    )
    assert out.alt_text == "A dog."
    assert "#labrador" in out.hashtags  # a tag the model put in its alt text still tops up the list
    generic = parse_output("Caption: Beach day\nHashtags: #dog\nAlt text: image of a dog #cute", 3)
    assert "#cute" not in generic.hashtags  # ... unless it is a generic one (core/generic_hashtags.txt)
    assert passes(out.alt_text)


def test_parse_output_enforces_the_cap_it_is_given():
    long_alt = "A dog " + "running and jumping " * 20 + "on the sand."
    answer = f"Caption: Fun\nHashtags: #dog\nAlt text: {long_alt}"
    assert len(parse_output(answer, 1).alt_text) <= ALT_TEXT_MAX_CHARS
    capped = parse_output(answer, 1, alt_text_max_chars=40).alt_text
    assert len(capped) <= 40 and capped.endswith(".") and capped.startswith("A dog running")


def test_the_setting_reaches_parse_output(monkeypatch):
    from snap2caption_service.core.captioner import Captioner
    from snap2caption_service.core.settings import Settings

    monkeypatch.setenv("SNAP2CAPTION_ALT_TEXT_MAX_CHARS", "40")
    generation = Settings().generation  # what model_loading.load_captioner hands the captioner
    assert generation.alt_text_max_chars == 40
    # The captioner's parsing step alone: no weights needed to see the cap applied.
    captioner = object.__new__(Captioner)
    captioner.generation = generation
    long_alt = "A dog " + "running and jumping " * 20 + "on the sand."
    candidate = captioner._candidate(f"Caption: Fun\nHashtags: #dog\nAlt text: {long_alt}", -0.5, 1)
    assert len(candidate.alt_text) <= 40 and candidate.alt_text.endswith(".")
    monkeypatch.setenv("SNAP2CAPTION_ALT_TEXT_MAX_CHARS", "8")
    with pytest.raises(ValidationError, match="alt_text_max_chars"):
        Settings()


# --- the evaluation metric ------------------------------------------------------------------


def test_evaluation_reports_the_lint_pass_rate():
    from training.caption_metrics import PredictionRow, evaluate

    rows = [
        PredictionRow("a", "A dog", "A dog", predicted_alt_text="A dog on the sand."),
        PredictionRow("b", "A cat", "A cat", predicted_alt_text="A cat on a sofa."),
        PredictionRow("c", "A cow", "A cow", predicted_alt_text="There is a cow"),
        PredictionRow("d", "A hen", "A hen", predicted_alt_text=""),
    ]
    assert evaluate(rows)["alt_text_lint_pass"] == 0.5


def test_one_reader_finds_the_background_clause_in_every_wording():
    """The heads' check, the border check and the hashtag top-up all cut the same clause."""
    for alt, what in [
        ("A large red circle in the center, on a plain gray background.", ("plain", "gray")),
        ("A small blue star on the left on a photo background.", ("photo",)),
        ("A medium white star, on a gradient background from black to teal.", ("gradient",)),
    ]:
        clause = background_clause(alt)
        assert clause is not None and clause.what == what
        assert without_background(alt) == alt[: clause.start] + "."
    grad = background_clause("A star, on a gradient background from black to teal.")
    assert {"black", "teal", "gradient"} <= grad.words
    assert background_clause("A red circle in the center.") is None
    assert without_background("A red circle in the center.") == "A red circle in the center."
