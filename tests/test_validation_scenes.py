"""The validation scenes (training/validation_scenes.py): deterministic, every colour, shape and
kind of background represented, and each shade one a person calls by its colour word (judged by
the held-out tests' hue judge, written apart from either palette)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from scene_checks import digest, object_family
from training.synthetic import COLORS, SHAPES
from training.validation_scenes import OBJECT_SHADES, validation_set


@pytest.fixture(scope="module")
def scenes():
    return validation_set(120)


def test_a_shorter_set_is_a_prefix_and_the_same_every_time(scenes):
    assert digest(validation_set(6)) == digest(scenes[:6])


def test_every_colour_shape_and_background_kind_appears(scenes):
    assert set(Counter(s.color for s in scenes)) == set(COLORS)
    assert set(Counter(s.shape for s in scenes)) == set(SHAPES)
    kinds = Counter(s.background for s in scenes)
    assert set(kinds) == {"plain", "photo", "relief"}
    assert min(kinds.values()) >= 10, kinds
    for s in scenes:
        assert 86 <= min(s.image.size) and max(s.image.size) <= 288, s.image.size
        assert s.image.mode == "RGB"


@pytest.mark.parametrize("color", list(OBJECT_SHADES))
def test_each_shade_is_called_by_its_colour_word(color):
    for shade in OBJECT_SHADES[color]:
        rgb = np.array(to_rgb(shade)) * 255
        assert object_family(rgb) == color, (color, shade)


def test_the_main_object_is_drawn_in_its_colour_where_the_truth_says(scenes):
    for s in scenes:
        x, y = (int(v) for v in s.center)
        centre = np.median(np.asarray(s.image)[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3), axis=0)
        assert object_family(centre) == s.color, (s.color, s.shape, s.background, centre)
