"""The demo model's training targets follow the rules its answers are held to (issue 16):
no generic hashtag, as many tags as asked for at most, alt text that passes the lint."""

from __future__ import annotations

import random

from snap2caption_service.core import alt_text
from snap2caption_service.core.hashtags import is_generic
from snap2caption_service.core.prompting import split_target
from training import synthetic
from training.evaluate_demo import first_color_and_shape


def test_targets_follow_the_hashtag_and_alt_text_rules():
    for ex in synthetic.make_examples(600, seed=11):
        caption, tags, alt = split_target(ex.target)
        assert 1 <= len(tags) <= ex.num_hashtags
        assert not [t for t in tags if is_generic(t)], ex.target
        main = ex.scene.main
        assert f"#{main.color}{main.shape}" == tags[0]
        assert alt_text.passes(alt) and len(alt) <= alt_text.ALT_TEXT_TARGET_CHARS, alt
        assert alt.lower().startswith(f"{synthetic.article(main.size)} {main.size} {main.color} {main.shape}")
        assert first_color_and_shape(caption) == (main.color, main.shape), caption
        assert " a orange" not in f" {caption} {alt}".lower()  # articles agree with the colour


def test_backgrounds_are_named_by_what_they_are():
    rng = random.Random(5)
    kinds = set()
    for _ in range(400):
        scene = synthetic.sample_scene(rng)
        kinds.add(scene.background_kind)
        phrase = scene.background_phrase()
        if scene.background_kind in (synthetic.PHOTO, synthetic.TEXTURED):
            assert phrase == f"a {scene.background_kind} background"
        else:
            assert scene.background_kind in phrase
        # An object the colour of its background would be invisible.
        assert not {o.color for o in scene.objects} & set(scene.background)
    # Photo and textured backgrounds appear in captioned scenes only as the mix allows (SceneMix).
    allowed = dict(zip(("plain", "gradient", synthetic.PHOTO, synthetic.TEXTURED), synthetic.MIX.background_weights))
    expected = set(synthetic.BACKGROUND_NAMES) | {k for k in (synthetic.PHOTO, synthetic.TEXTURED) if allowed[k]}
    assert kinds == expected


def test_empty_scenes_render_and_have_no_objects():
    rng = random.Random(2)
    kinds = set()
    for _ in range(40):
        scene = synthetic.sample_empty_scene(rng)
        kinds.add(scene.background_kind)
        assert scene.objects == ()
        image = synthetic.render_scene(scene)  # sometimes stretched, as a tall or wide photo is
        assert image.mode == "RGB" and min(image.size) >= synthetic.CANVAS * 0.7
    assert {synthetic.PHOTO, synthetic.TEXTURED} <= kinds  # what the scene heads learn to call empty
