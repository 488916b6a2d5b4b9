"""Held-out scenes (training/heldout_scenes.py) and their report (training/evaluate_heldout.py),
checked without a trained model: the truth must agree with the pixels, and the report must fail
an answer that gets the picture wrong."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from scene_checks import digest, object_family
from snap2caption_service.core.contracts import Candidate
from training.evaluate_heldout import background_ok, evaluate_set
from training.heldout_scenes import HELDOUT_SETS, heldout_set, real_photos


@pytest.fixture(scope="module")
def sets():
    return {name: heldout_set(name, n=300) for name in HELDOUT_SETS}


# The background judge, written apart from the generator's palette as the object judge is (scene_checks.py).
def _background_family(rgb) -> str:
    h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255 for c in rgb))
    h *= 360
    if v < 0.2:
        return "black"
    if s < 0.1:
        return "white" if v > 0.85 else "gray"
    if 160 <= h < 200:
        return "teal"
    if (h >= 320 or h < 10) and v > 0.8:
        return "pink"
    if 15 <= h < 50 and v > 0.75 and s < 0.4:
        return "beige"
    if 10 <= h < 45 and v < 0.65:
        return "brown"
    return "other"


def _border(img) -> np.ndarray:
    a = np.asarray(img)
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def test_sets_are_deterministic_and_sized(sets):
    for name, scenes in sets.items():
        assert len(scenes) == 300
        again = heldout_set(name, n=20)
        assert digest(again) == digest(scenes[:20]), name  # same seed, same scenes; a prefix is a prefix
        assert digest(heldout_set(name, n=20, seed=1)) != digest(again), name


def test_scenes_are_not_the_training_canvas(sets):
    """Independent of synthetic.py's 128 px square canvas: sizes from 160 to 320 px, some not square,
    every main object clearly visible."""
    for name, scenes in sets.items():
        sizes = [s.image.size for s in scenes]
        assert all(160 <= min(wh) and max(wh) <= 320 for wh in sizes), name
        assert 0.2 < sum(w != h for w, h in sizes) / len(sizes) < 0.6, name
        assert len(set(sizes)) > 100, name
        assert all(s.image.mode == "RGB" for s in scenes)
        assert min(s.main_mask.sum() / s.main_mask.size for s in scenes) > 0.005, name


@pytest.mark.parametrize("name", HELDOUT_SETS)
def test_truth_matches_pixels(sets, name):
    scenes = sets[name]
    wrong = [
        (i, s.color, object_family(np.median(np.asarray(s.image)[s.main_mask], axis=0)))
        for i, s in enumerate(scenes)
        if object_family(np.median(np.asarray(s.image)[s.main_mask], axis=0)) != s.color
    ]
    assert len(wrong) / len(scenes) < 0.01, wrong[:10]
    # Every colour and shape is a main object often enough for a per-colour row to mean something.
    assert min(sum(s.color == c for s in scenes) for c in {s.color for s in scenes}) >= 15
    assert {s.color for s in scenes} == {"red", "green", "blue", "yellow", "orange", "purple", "black", "white"}
    assert {s.shape for s in scenes} == {"circle", "square", "triangle", "star"}


def test_vector_backgrounds_are_named_correctly(sets):
    scenes = sets["vector"]
    wrong = [
        (i, s.background, _background_family(np.median(_border(s.image), axis=0)))
        for i, s in enumerate(scenes)
        if _background_family(np.median(_border(s.image), axis=0)) != s.background
    ]
    assert not wrong, wrong[:10]
    assert len({s.background for s in scenes}) >= 6


def test_truth_uses_the_models_words():
    """Every background the vector set draws is one the demo model learned to name, and the photo
    set's photographs are not the ones it trained on."""
    from training import heldout_scenes, synthetic

    assert set(heldout_scenes.BACKGROUND_PALETTE) <= set(synthetic.BACKGROUND_NAMES)
    assert set(heldout_scenes.OBJECT_PALETTE) == set(synthetic.COLORS)
    held_out = {*heldout_scenes._SKIMAGE_PHOTOS, *heldout_scenes._SKLEARN_PHOTOS}
    trained = {name.rsplit(".", 1)[0] for name in synthetic.TRAIN_PHOTOS}
    assert not {name.rsplit(".", 1)[0] for name in held_out} & trained


def test_photo_backgrounds_are_photos(sets):
    scenes = sets["photo"]
    assert {s.background for s in scenes} == {"photo"}
    # A photo crop is not one flat colour along its edge (the vector set's plain backgrounds are).
    assert min(_border(s.image).std(axis=0).mean() for s in scenes) > 5
    assert max(_border(s.image).std(axis=0).mean() for s in sets["vector"]) < 5


def test_real_photos():
    photos = real_photos()
    assert set(photos) == {"china", "flower"}
    for img in photos.values():
        assert img.mode == "RGB" and img.size == (640, 427)
        assert np.asarray(img).std() > 30


# --- the report -------------------------------------------------------------------------------


def _background_phrase(truth: str) -> str:
    return f"a {truth} background" if truth in ("photo", "textured") else f"a plain {truth} background"


class _FakeCaptioner:
    """Answers from the scenes' truth, so the report's mechanics can be tested without a model.
    say(index, scene) -> (caption, alt_text)."""

    version = "fake-1"

    def __init__(self, scenes, say):
        self.by_image = {id(s.image): (i, s) for i, s in enumerate(scenes)}
        self.say = say

    def caption_batch(self, jobs):
        out = []
        for job in jobs:
            caption, alt = self.say(*self.by_image[id(job.image)])
            out.append([Candidate(caption=caption, hashtags=["#x"], alt_text=alt, score=0.0)])
        return out


def _right(i, s):
    return (
        f"Picture {i}: weekend vibes with a {s.color} {s.shape}.",
        f"A large {s.color} {s.shape} in the center, on {_background_phrase(s.background)}.",
    )


@pytest.mark.parametrize("name", HELDOUT_SETS)
def test_report_passes_a_correct_captioner(sets, name):
    scenes = sets[name][:60]
    report = evaluate_set(_FakeCaptioner(scenes, _right), scenes, batch_size=25)
    assert report.passed(), report.table()
    assert (report.both_correct, report.background_ok, report.distinct_captions) == (1.0, 1.0, 20)
    assert report.set_name == name and report.scenes == 60
    assert sum(n for n, _ in report.per_color.values()) == 60
    table = report.table()
    assert "PASS" in table and "background right or not named" in table and "star" in table


def test_report_fails_a_wrong_background(sets):
    scenes = sets["vector"][:60]
    report = evaluate_set(
        _FakeCaptioner(
            scenes, lambda i, s: (_right(i, s)[0], _right(i, s)[1].replace(f"plain {s.background}", "plain beige"))
        ),
        scenes,
    )
    assert report.both_correct == 1.0
    assert report.background_ok < 1.0 and not report.passed(), report.table()
    assert report.per_background["beige"][1] == 1.0 and report.per_background["teal"][1] == 0.0

    photos = sets["photo"][:30]
    report = evaluate_set(
        _FakeCaptioner(
            photos,
            lambda i, s: (_right(i, s)[0], _right(i, s)[1].replace("a photo background", "a plain beige background")),
        ),
        photos,
    )
    assert report.background_ok == 0.0 and not report.passed()


def test_report_fails_one_caption_for_every_picture(sets):
    scenes = sets["photo"][:40]
    report = evaluate_set(_FakeCaptioner(scenes, lambda i, s: ("Weekend vibes.", _right(i, s)[1])), scenes)
    assert report.distinct_captions == 1 and report.alt_text_correct == 1.0
    assert not report.passed()


def test_report_tables_show_which_colour_fails(sets):
    scenes = sets["vector"][:120]

    def red_is_orange(i, s):
        caption, alt = _right(i, s)
        return (caption.replace("red", "orange"), alt.replace("red", "orange")) if s.color == "red" else (caption, alt)

    report = evaluate_set(_FakeCaptioner(scenes, red_is_orange), scenes)
    assert report.per_color["red"][1] == 0.0
    assert all(rate == 1.0 for c, (_, rate) in report.per_color.items() if c != "red")
    assert report.both_correct < 0.95 and not report.passed()
    assert "miss #" in report.table() and "FAIL" in report.table()


def test_a_rare_background_miss_is_listed_after_many_colour_misses(sets):
    scenes = sets["vector"][:120]
    last = max(i for i, s in enumerate(scenes) if s.color != "red")

    def red_is_orange_and_one_background_wrong(i, s):
        caption, alt = _right(i, s)
        if s.color == "red":
            return caption.replace("red", "orange"), alt.replace("red", "orange")
        if i == last:
            return caption, alt.replace(
                f"plain {s.background}", "plain beige" if s.background != "beige" else "plain teal"
            )
        return caption, alt

    report = evaluate_set(_FakeCaptioner(scenes, red_is_orange_and_one_background_wrong), scenes)
    reds = sum(s.color == "red" for s in scenes)
    assert reds > 5, "the set needs more colour misses than are listed"
    assert [m.failed for m in report.misses].count("main object") == 5
    assert [(m.index, m.failed) for m in report.misses if m.failed != "main object"] == [(last, "background")]
    assert f"miss #{last} (" in report.table() and "; background)" in report.table()


def test_background_check_reads_every_phrase():
    assert background_ok(["On a plain grey background."], "gray")
    assert background_ok(["Weekend vibes.", "A red circle, on a plain background."], "teal")
    assert background_ok(["A red star."], "photo")  # not named is fine
    assert not background_ok(["A red circle, on a plain beige background."], "photo")
    assert not background_ok(["A red circle, on a photo background."], "gray")
    assert not background_ok(["A red circle, on a textured background."], "photo")
    assert not background_ok(["A red circle on a gradient background from gray to pink."], "gray")
    assert background_ok(["A red circle on a gradient background from gray to grey."], "gray")
    assert not background_ok(["Fine.", "A circle, on a plain white background and a black background."], "white")
    assert background_ok(["A red circle, on a textured background."], "textured")


def test_report_counts_flagged_and_confidently_wrong_answers(sets):
    """An answer the model doubts (below min_confidence) is flagged; a wrong one that is not is
    'confidently wrong', the number a user of the demo model is misled by."""
    scenes = sets["vector"][:40]

    class Doubting(_FakeCaptioner):
        def caption_batch(self, jobs):
            out = super().caption_batch(jobs)
            for i, cands in enumerate(out):
                cands[0].confidence = 0.1 if i % 2 else 0.9  # every other answer doubted
            return out

    def wrong(i, s):
        other = "circle" if s.shape != "circle" else "star"
        return (f"Picture {i}: a {s.color} {other}.", f"A large {s.color} {other}, on a plain gray background.")

    report = evaluate_set(Doubting(scenes, wrong), scenes, batch_size=40, min_confidence=0.35)
    assert report.both_correct == 0.0
    assert report.flagged == 0.5 and report.confidently_wrong == 0.5
    assert "wrong and not flagged" in report.table()


def test_report_fails_a_caption_and_alt_text_that_disagree(sets):
    """Issue 15 §3: an answer whose caption and alt text name different objects fails the bar even
    when the alt text is right; an answer the service corrected counts as flagged."""
    scenes = sets["vector"][:40]

    def caption_wrong(i, s):
        caption, alt = _right(i, s)
        other = "circle" if s.shape != "circle" else "star"
        return (caption.replace(s.shape, other), alt) if i % 4 == 0 else (caption, alt)

    report = evaluate_set(_FakeCaptioner(scenes, caption_wrong), scenes, batch_size=40)
    assert report.fields_agree == 0.75 and report.alt_text_correct == 1.0
    assert not report.passed() and "caption and alt text agree" in report.table()

    def second_object_differs(i, s):
        # Main objects right and alike; every fifth caption names another object the alt text does not.
        caption, alt = _right(i, s)
        alt = alt.replace(" in the center,", " in the center and a pink shape,")
        return (caption.replace(".", " and a teal shape.") if i % 5 == 0 else caption, alt)

    report = evaluate_set(_FakeCaptioner(scenes, second_object_differs), scenes, batch_size=40)
    # Reported beside the bar, which holds the main object (the demo model's second objects do not
    # agree yet: docs/notes/demo-model.md, sessions 21-22).
    assert report.both_correct == 1.0 and report.fields_agree == 1.0 and report.objects_agree == 0.8
    assert "every object: caption, tags, alt" in report.table()

    class Correcting(_FakeCaptioner):
        def caption_batch(self, jobs):
            out = super().caption_batch(jobs)
            for i, cands in enumerate(out):
                cands[0].confidence = 0.9
                cands[0].corrections = ["The caption called the star red ..."] if i < 10 else []
            return out

    report = evaluate_set(Correcting(scenes, _right), scenes, batch_size=40)
    assert report.fields_agree == 1.0 and report.passed()
    assert report.corrected == 0.25 and report.flagged == 0.25 and report.confidently_wrong == 0.0
