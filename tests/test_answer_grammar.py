"""core/answer_grammar.py: the grammar every answer is generated under, and its mask."""

from __future__ import annotations

import pytest
from PIL import Image

from checkpoint_support import checkpoint_dir
from snap2caption_service.core.answer_grammar import (
    AnswerConstraint,
    _open_tag,
    _tag_tokens,
    answer_grammar,
    answer_token_bound,
)
from snap2caption_service.core.contracts import (
    ANSWER_ALT_TEXT_MAX_TOKENS,
    ANSWER_CAPTION_MAX_TOKENS,
    ANSWER_HASHTAG_MAX_TOKENS,
)
from snap2caption_service.core.prompting import format_target

GOOD = format_target("Sunny day at the beach", ["#beach", "#sun", "#sea", "#sand", "#summer"], "A sandy beach.")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint_dir("llava")).tokenizer


@pytest.fixture(scope="module")
def constraint(tokenizer):
    return AnswerConstraint(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


def accepts(constraint, tokenizer, text: str, num_hashtags: int = 5) -> bool:
    """Whether the grammar takes ``text`` as a whole answer (then end-of-sequence)."""
    from llguidance import LLMatcher

    from snap2caption_service.core.answer_grammar import _compiled

    matcher = LLMatcher(constraint.tokenizer, _compiled(num_hashtags))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return matcher.validate_tokens(ids) == len(ids)


def test_the_layout_training_writes_is_accepted(constraint, tokenizer):
    assert accepts(constraint, tokenizer, GOOD)
    assert accepts(constraint, tokenizer, " " + GOOD)  # after "ASSISTANT:" (LLaVA-1.5)


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace("#summer", "").rstrip(),  # 4 hashtags where 5 were asked
        GOOD.replace("#summer", "#summer #extra"),  # 6
        GOOD.replace("#sun", "#Sun"),  # uppercase
        GOOD.replace("#sun", "#2024"),  # digits only: not a hashtag
        GOOD.replace("Sunny day", "Sunny #day"),  # a hashtag inside the caption
        GOOD.replace("Sunny day at the beach", " "),  # a blank caption
        GOOD.replace("A sandy beach.", ""),  # no alt text
        GOOD.replace("\nHashtags:", " Hashtags:"),  # two fields on one line
        GOOD + "\nMore text",  # anything after the alt text
        GOOD.replace("Caption:", "Title:"),
    ],
)
def test_anything_else_is_refused(constraint, tokenizer, text):
    assert not accepts(constraint, tokenizer, text)


def test_hashtag_count_is_one_up_to_the_count_asked_for(constraint, tokenizer):
    from snap2caption_service.core.contracts import MAX_HASHTAGS, MIN_HASHTAGS

    def answer(n: int) -> str:
        return format_target("A day out", [f"#tag{chr(97 + i)}" for i in range(n)], "Two people outside.")

    for k in range(MIN_HASHTAGS, MAX_HASHTAGS + 1):
        assert accepts(constraint, tokenizer, answer(k), k)
        # Fewer is allowed (a model with fewer relevant tags stops instead of padding), none is not.
        assert accepts(constraint, tokenizer, answer(1), k)
        assert not accepts(constraint, tokenizer, answer(0), k)
        assert not accepts(constraint, tokenizer, answer(k + 1), k)
    with pytest.raises(ValueError):
        answer_grammar(0)


def test_token_bound_covers_every_field_at_its_cap():
    k = 10
    caps = ANSWER_CAPTION_MAX_TOKENS + k * ANSWER_HASHTAG_MAX_TOKENS + ANSWER_ALT_TEXT_MAX_TOKENS
    assert caps < answer_token_bound(k) <= caps + 64


def test_open_tag_follows_the_hashtags_line():
    assert _open_tag(b" Caption: hi") is None
    assert _open_tag(b" Caption: hi\nHashtags: #sun #se") == (b"#se", [b"#sun"])
    assert _open_tag(b" Caption: hi\nHashtags: #sun ") is None  # between tags
    assert _open_tag(b"Caption: hi\nHashtags: #a #b\nAlt text: x") is None
    assert _tag_tokens([b"Hashtags:", b" #", b"su", b"n"]) == 3


def test_random_weights_still_answer_in_the_layout_within_the_bound():
    """A random-weight model writes whatever it likes unconstrained; under the grammar every
    answer parses, its hashtags distinct, and no generation runs past the bound."""
    from snap2caption_service.core.captioner import BatchStats, Captioner, CaptionJob
    from snap2caption_service.core.settings import GenerationSettings

    folder = str(checkpoint_dir("llava"))
    jobs = [CaptionJob(Image.new("RGB", (48 + 8 * i, 40), (30 * i, 90, 160)), num_hashtags=5 + i) for i in range(6)]
    constrained = Captioner.load(folder, device="cpu")
    stats = BatchStats()
    for job, (cand,) in zip(jobs, constrained.caption_batch(jobs, stats)):
        assert cand.caption and cand.alt_text
        # One to num_hashtags (the grammar's "at most": a model may stop early), never a repeat.
        # Exactly num_hashtags held for these weights until the demo tokenizer (which the tiny
        # checkpoint borrows) learnt generator 7's captions: random weights stop where they like.
        assert 1 <= len(cand.hashtags) == len(set(cand.hashtags)) <= job.num_hashtags
    assert stats.generated_tokens <= sum(answer_token_bound(j.num_hashtags) for j in jobs)

    free = Captioner.load(folder, device="cpu", generation=GenerationSettings(max_new_tokens=48, constrained=False))
    unparsed = [
        cand
        for job, (cand,) in zip(jobs, free.caption_batch(jobs))
        if not (cand.caption and cand.alt_text and len(cand.hashtags) == job.num_hashtags)
    ]
    assert unparsed, "the same weights unconstrained should not manage the layout: the grammar does the work"
