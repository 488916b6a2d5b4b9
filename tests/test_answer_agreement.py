"""Issue 15 §3: caption, hashtags and alt text of one answer name the same objects. A model that
calls one thing by two colours is made to agree with itself, and the answer says what changed."""

from __future__ import annotations

import pytest
from PIL import Image

from snap2caption_service.core.answer_agreement import named_colors, objects_agree, reconcile
from snap2caption_service.core.contracts import Candidate, CaptionOptions
from snap2caption_service.core.scene_heads import SceneReading
from snap2caption_service.serving.pipeline import LOW_CONFIDENCE_NOTICE, ModelOutput, build_result

# What the demo model answered for held-out vector scene 24, a blue circle (docs/notes/demo-model.md).
SCENE_24 = (
    "Told everyone I am into geometry now. Exhibit A: one very black circle.",
    ["#black", "#circle", "#blackcircle", "#geometry"],
    "A large blue circle in the center, on a plain gray background.",
)


def test_named_colors_reads_colour_noun_pairs_and_nothing_else():
    assert named_colors("A large blue circle and two red squares.") == {"circle": ["blue"], "square": ["red"]}
    assert named_colors("A red and white bus on a gray road.") == {"bus": ["red", "white"], "road": ["gray"]}
    assert named_colors("Feeling blue today.") == {"today": ["blue"]}
    assert named_colors("Three black circles.") == {"circle": ["black"]}
    # In the order named, each colour once: the first naming is what a disagreement keeps.
    assert named_colors("A green shape, a blue shape and a green shape.") == {"shape": ["green", "blue"]}
    assert named_colors("Odd, bold and totally purple: the star drop is here.") == {}
    assert named_colors("No colour here.") == {}


def test_without_a_reading_the_alt_text_colour_wins_everywhere():
    caption, tags, alt, settled = reconcile(*SCENE_24)
    assert caption == "Told everyone I am into geometry now. Exhibit A: one very blue circle."
    assert tags == ["#blue", "#circle", "#bluecircle", "#geometry"]
    assert alt == SCENE_24[2]
    [d] = settled
    assert (d.caption_said, d.alt_text_said, d.kept) == ("black circle", "blue circle", "blue circle")
    assert d.sentence() == 'The caption said "black circle" and the alt text "blue circle"; both now say "blue circle".'


def test_the_tower_reading_settles_which_colour_is_kept():
    caption, tags, alt, settled = reconcile(*SCENE_24, reading=("black", "circle"))
    assert caption == SCENE_24[0] and tags == SCENE_24[1]
    assert alt == "A large black circle in the center, on a plain gray background."
    assert settled[0].kept == "black circle"
    # A reading of another shape, or of neither colour, does not decide: the default holds.
    assert reconcile(*SCENE_24, reading=("black", "square"))[2] == SCENE_24[2]
    assert reconcile(*SCENE_24, reading=("red", "circle"))[2] == SCENE_24[2]


def test_articles_and_capitals_follow_the_new_colour():
    caption, _, _, _ = reconcile("Just a black circle living its best little life.", [], "An orange circle, centred.")
    assert caption == "Just an orange circle living its best little life."
    _, _, alt, _ = reconcile("My orange star.", [], "A black star on the left.", reading=("orange", "star"))
    assert alt == "An orange star on the left."
    caption, _, _, _ = reconcile("Black circles everywhere.", [], "Three white circles.")
    assert caption == "White circles everywhere."


def test_agreeing_answers_are_left_exactly_as_they_were():
    for answer in [
        ("A red circle.", ["#red", "#redcircle"], "A large red circle."),
        ("A red square, nothing more.", ["#red"], "A small blue circle next to a red square."),  # two objects
        ("A red and white bus.", ["#bus"], "A white bus in the street."),  # one object, two colours
        ("Feeling blue today.", ["#mood"], "A red circle."),  # a mood is no object
    ]:
        assert reconcile(*answer) == (*answer, [])


def test_a_lone_colour_tag_stays_while_another_object_is_still_that_colour():
    caption, tags, alt, _ = reconcile(
        "A black circle and a black square.",
        ["#black", "#blackcircle", "#blacksquare"],
        "A blue circle and a black square.",
    )
    assert caption == "A blue circle and a black square."
    assert tags == ["#black", "#bluecircle", "#blacksquare"]
    # Rewriting must not leave the same tag twice.
    assert reconcile("A black star.", ["#black", "#blue", "#blackstar"], "A blue star.")[1] == ["#blue", "#bluestar"]


def test_an_other_object_takes_the_alt_texts_first_naming():
    """A caption's one other object that the alt text names in other colours takes the alt
    text's first naming, not whichever colour sorts first."""
    caption, tags, alt, [d] = reconcile(
        "Nothing fancy, just a big red star hanging out at the top with a yellow shape.",
        ["#redstar", "#red", "#star"],
        "A large red star at the top, a green shape and a blue shape, on a plain white background.",
        things=SHAPES,
    )
    assert caption == "Nothing fancy, just a big red star hanging out at the top with a green shape."
    assert (d.caption_said, d.alt_text_said, d.kept) == ("yellow shape", "green shape", "green shape")
    assert tags == ["#redstar", "#red", "#star"]
    assert objects_agree(caption, tags, alt)
    # A hashtag of an object neither field names is a disagreement too (reported, not settled).
    assert not objects_agree(caption, ["#whitestar", *tags], alt, things=SHAPES)


def test_objects_agree_when_caption_and_hashtags_name_only_what_the_alt_text_names():
    alt = "A large red star at the top and a green shape, on a plain white background."
    assert objects_agree("Weekend vibes with a big red star at the top.", ["#redstar", "#geometricart"], alt)
    assert objects_agree("A red star with a green shape.", ["#red", "#star", "#green"], alt)
    assert not objects_agree("A red star with a blue shape.", [], alt)  # another second object
    assert not objects_agree("A red star with a green square.", [], alt)  # a shape the alt text does not give
    assert not objects_agree("A red star.", ["#bluestars"], alt)
    # A tag of an object nobody names: with the closed list of things it is one.
    assert objects_agree("A red star.", ["#redstar", "#greensquare"], alt)
    assert not objects_agree("A red star.", ["#redstar", "#greensquare"], alt, things=SHAPES)
    assert objects_agree("A red star.", ["#redhead"], alt, things=SHAPES)
    assert objects_agree("A red star.", ["#starart", "#stars"], alt, things=SHAPES)
    assert not objects_agree("A red star.", ["#squareart"], alt, things=SHAPES)


SHAPES = frozenset({"circle", "square", "triangle", "star"})


def test_with_a_closed_list_of_things_the_main_objects_must_be_the_same():
    """The demo model names its main object first, from a closed list: a caption about a black
    circle above an alt text about a blue square names two different pictures."""
    answer = (
        "Exhibit A: one very black circle.",
        ["#black", "#circle", "#blackcircle"],
        "A blue square and a red star.",
    )
    caption, tags, alt, [d] = reconcile(*answer, things=SHAPES)
    assert caption == "Exhibit A: one very blue square." and alt == answer[2]
    assert tags == ["#blue", "#square", "#bluesquare"]
    assert (d.caption_said, d.kept) == ("black circle", "blue square")
    caption, tags, alt, _ = reconcile(*answer, reading=("black", "circle"), things=SHAPES)
    assert caption == answer[0] and tags == answer[1]
    assert alt == "A black circle and a red star."
    # The first object only: others may differ, and without the list two shapes are two objects.
    assert reconcile("A red star, and a black circle.", [], "A red star next to a blue square.", things=SHAPES)[3] == []
    assert reconcile(*answer)[3] == []
    # A thing named without any colour is no main-object claim to compare.
    assert reconcile("Weekend vibes with a square.", [], "A blue circle.", things=SHAPES)[3] == []


def test_a_caption_may_name_its_main_object_in_two_places():
    """One caption template says "totally {colour}: the {shape} drop"; its colour and shape are
    still the main object's, and are renamed where they stand."""
    apart = "Odd, bold and totally Purple: the stars drop is here."
    caption, tags, _, [d] = reconcile(apart, ["#purplestar"], "A green circle.", things=SHAPES)
    assert caption == "Odd, bold and totally Green: the circles drop is here."
    assert tags == ["#greencircle"] and d.caption_said == "purple star"
    assert reconcile(apart, [], "A purple star.", things=SHAPES)[3] == []
    _, _, alt, _ = reconcile(apart, [], "A green circle.", reading=("purple", "star"), things=SHAPES)
    assert alt == "A purple star."


def test_what_the_tower_is_sure_of_overrules_an_answer_that_agrees_with_itself():
    """The decoder follows its tower's reading in only 94% of the held-out vector scenes
    (docs/notes/demo-model.md, session 17): where caption and alt text agree on a main object the
    heads surely read otherwise, the heads' reading is what the answer says, and it says so."""
    answer = (
        "My big black star on the left and I are not speaking today.",
        ["#blackstar", "#black", "#star", "#speaking"],
        "A large black star on the left, and a small red circle.",
    )
    caption, tags, alt, [d] = reconcile(*answer, things=SHAPES, sure=("blue", "star"))
    assert caption == "My big blue star on the left and I are not speaking today."
    assert alt == "A large blue star on the left, and a small red circle."
    assert tags == ["#bluestar", "#blue", "#star", "#speaking"]
    assert d.sentence() == (
        'Caption and alt text said "black star", but the vision tower reads "blue star"; both now say "blue star".'
    )
    # The shape's own tags follow it: #starart and #stars named the star the answer no longer has.
    shaped = (answer[0], ["#blackstar", "#starart", "#stars", "#flatdesign"], answer[2])
    _, tags, _, _ = reconcile(*shaped, things=SHAPES, sure=(None, "triangle"))
    assert tags == ["#blacktriangle", "#triangleart", "#triangles", "#flatdesign"], tags
    # Only the part the tower is sure of changes; an answer that says what it reads is left alone.
    caption, _, alt, _ = reconcile(*answer, things=SHAPES, sure=(None, "triangle"))
    assert "black triangle" in caption and alt.startswith("A large black triangle") and "red circle" in alt
    assert reconcile(*answer, things=SHAPES, sure=("black", "star"))[3] == []
    assert reconcile(*answer, things=SHAPES) == (*answer, [])
    # Without the closed list there is no main object to overrule; a caption apart is renamed apart.
    assert reconcile(*answer, sure=("blue", "star"))[3] == []
    apart = reconcile("Totally purple: the stars drop.", [], "A purple star.", things=SHAPES, sure=("green", None))
    assert apart[:3] == ("Totally green: the stars drop.", [], "A green star.")


def test_the_heads_overrule_only_what_they_are_sure_of():
    reading = SceneReading("blue", "star", p_color=0.95, p_shape=0.6, p_object=0.99)
    assert reading.sure_parts(0.9) == ("blue", None)
    assert SceneReading("blue", "star", 0.95, 0.95, p_object=0.5).sure_parts(0.9) == (None, None)


def _output(cand: Candidate) -> ModelOutput:
    return ModelOutput(candidates=[cand], model_version="m")


def test_a_corrected_answer_is_flagged_with_what_changed():
    cand = Candidate(caption="A blue circle.", hashtags=[], alt_text="A blue circle.", score=-0.1, confidence=0.9)
    cand.corrections = ["The caption called the circle black and the alt text called it blue; both now say blue."]
    result = build_result(_output(cand), "a" * 32, 1.0, "", CaptionOptions(), min_confidence=0.35)
    assert result.low_confidence is True and result.notice == cand.corrections[0]
    cand.confidence = 0.2
    result = build_result(_output(cand), "a" * 32, 1.0, "", CaptionOptions(), min_confidence=0.35)
    assert result.notice == LOW_CONFIDENCE_NOTICE + " " + cand.corrections[0]
    cand.corrections, cand.confidence = [], 0.9
    result = build_result(_output(cand), "a" * 32, 1.0, "", CaptionOptions(), min_confidence=0.35)
    assert result.low_confidence is False and result.notice is None


def _fixed_answers(monkeypatch, captioner, texts: list[str], scores: list[float]):
    """The captioner's model answers exactly these texts (the greedy one first, then samples)."""
    calls = iter([(texts[:1], scores[:1]), (texts[1:], scores[1:])])

    def generate(images, prompts, num_hashtags, temperatures=None, seed=0, adapters=None):
        t, s = next(calls)
        return t, s, 10, None

    monkeypatch.setattr(captioner, "_generate", generate)


@pytest.fixture(scope="module")
def captioner(tiny_model_dir):
    from snap2caption_service.core.captioner import Captioner

    return Captioner.load(str(tiny_model_dir))


def test_the_captioner_serves_an_answer_that_agrees_with_itself(captioner, monkeypatch):
    """Through the captioner as the service calls it: the scene-24 answer comes out agreeing, and
    a candidate that agreed on its own is preferred over a likelier one that was corrected."""
    from snap2caption_service.core.captioner import CaptionJob

    contradicting = f"Caption: {SCENE_24[0]}\nHashtags: {' '.join(SCENE_24[1])}\nAlt text: {SCENE_24[2]}"
    agreeing = "Caption: Exhibit A: one very blue circle.\nHashtags: #blue #circle\nAlt text: A blue circle."
    _fixed_answers(monkeypatch, captioner, [contradicting, agreeing], [-0.1, -0.9])
    job = CaptionJob(Image.new("RGB", (32, 32), "blue"), num_hashtags=4, num_candidates=2)
    [cands] = captioner.caption_batch([job])
    assert cands[0].caption == "Exhibit A: one very blue circle." and cands[0].corrections == []
    fixed = cands[1]
    assert "black" not in (fixed.caption + fixed.alt_text + " ".join(fixed.hashtags))
    assert fixed.caption.endswith("one very blue circle.") and fixed.corrections


def test_the_scene_heads_reading_decides_in_the_captioner(captioner, monkeypatch):
    from snap2caption_service.core.captioner import CaptionJob

    class Heads:
        labels = {"color": ["black", "blue"], "shape": ["circle"]}

        def read(self, tower, pixels, selection):
            return [SceneReading("black", "circle", 0.9, 0.9, 0.9, "gray", 0.99)]

    monkeypatch.setattr(captioner, "scene_heads", Heads())
    contradicting = f"Caption: {SCENE_24[0]}\nHashtags: {' '.join(SCENE_24[1])}\nAlt text: {SCENE_24[2]}"

    def generate(images, prompts, num_hashtags, temperatures=None, seed=0, adapters=None):
        return [contradicting], [-0.1], 10, object()

    monkeypatch.setattr(captioner, "_generate", generate)
    [[answer]] = captioner.caption_batch([CaptionJob(Image.new("RGB", (32, 32)), num_hashtags=4)])
    assert answer.caption == SCENE_24[0]
    assert answer.alt_text.startswith("A large black circle") and answer.confidence == 0.9


@pytest.mark.parametrize(
    "sure, p, expected",
    [
        (0.5, 0.95, "A large black circle"),
        (0.5, 0.4, "A large blue circle"),
        (None, 0.4, "A large black circle"),  # the shipped threshold: the heads always name it
    ],
)
def test_the_captioner_overrules_an_agreeing_answer_only_where_the_heads_are_sure(
    captioner, monkeypatch, sure, p, expected
):
    import snap2caption_service.core.captioner as captioner_module
    from snap2caption_service.core.captioner import CaptionJob

    if sure is not None:
        monkeypatch.setattr(captioner_module, "SURE_OF_OBJECT", sure)
    sure = captioner_module.SURE_OF_OBJECT

    class Heads:
        labels = {"color": ["black", "blue"], "shape": ["circle"]}

        def read(self, tower, pixels, selection):
            return [SceneReading("black", "circle", p, 0.99, 0.99, "gray", 0.99)]

    monkeypatch.setattr(captioner, "scene_heads", Heads())
    agreeing = "Caption: One very blue circle.\nHashtags: #bluecircle #blue\nAlt text: A large blue circle."

    def generate(images, prompts, num_hashtags, temperatures=None, seed=0, adapters=None):
        return [agreeing], [-0.1], 10, object()

    monkeypatch.setattr(captioner, "_generate", generate)
    [[answer]] = captioner.caption_batch([CaptionJob(Image.new("RGB", (32, 32)), num_hashtags=4)])
    assert answer.alt_text.startswith(expected) and (expected.split()[2] in answer.caption)
    assert bool(answer.corrections) == (p >= sure)
    if p >= sure:
        assert answer.hashtags[:2] == ["#blackcircle", "#black"]


def test_a_stray_object_tag_becomes_the_main_objects():
    """Generator 9's model names other objects by colour alone, so a #whitetriangle above a caption
    and alt text that say "yellow triangle" can only mean the main object, in a colour nobody
    gave it (2 of 300 photo-set answers, docs/notes/demo-model.md, session 23). It takes the main
    object's colour, and the answer says so. Where the alt text names two things of the list, a
    tag may mean either, and is left alone."""
    alt = "A large yellow triangle in the top right and a white shape, on a photo background."
    caption, tags, _, settled = reconcile(
        "Weekend vibes with a big yellow triangle in the top right.",
        ["#whitetriangle", "#yellow", "#triangle", "#yellowtriangle", "#white"],
        alt,
        things=SHAPES,
    )
    assert tags == ["#yellowtriangle", "#yellow", "#triangle", "#white"], tags
    assert [d.sentence() for d in settled] == [
        "The hashtag #whitetriangle named an object caption and alt text do not; it is now #yellowtriangle."
    ]
    assert objects_agree(caption, tags, alt, things=SHAPES)
    two = "A large yellow triangle and a small white triangle."
    assert reconcile("A yellow triangle.", ["#whitetriangle"], two, things=SHAPES)[1] == ["#whitetriangle"]
    # A tag of another thing too: the heads overrule the decoder's "red triangle" to a red star,
    # and the decoder's stray #whitetriangle goes with it (photo-set scene 161 on
    # demo-d1a9623dd9f4, docs/notes/demo-model.md, session 27).
    said = "A large red triangle at the bottom, on a photo background."
    caption, tags, alt_text, settled = reconcile(
        "Weekend vibes with a big red triangle at the bottom.",
        ["#whitetriangle", "#red", "#triangle", "#triangleart"],
        said,
        things=SHAPES,
        sure=("red", "star"),
    )
    assert alt_text == "A large red star at the bottom, on a photo background."
    assert tags == ["#redstar", "#red", "#star", "#starart"], tags
    assert objects_agree(caption, tags, alt_text, things=SHAPES)
    assert reconcile("A yellow triangle.", ["#whitetriangle"], alt)[1] == ["#whitetriangle"]
