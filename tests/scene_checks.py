"""Checks shared by the tests of drawn scene sets (held-out, validation, the generator's shades).

``object_family`` judges colour words from pixels, by hue, saturation and value: written apart
from every palette the project draws with (training/synthetic.py, heldout_scenes.py,
validation_scenes.py), so a shade that a person would not call by its name fails."""

from __future__ import annotations

import colorsys
import hashlib


def digest(scenes) -> str:
    """One hash of a scene set's pictures and truths: equal sets, equal digests."""
    h = hashlib.sha256()
    for s in scenes:
        h.update(s.image.tobytes())
        h.update(f"{s.image.size}{s.color}{s.shape}{s.background}".encode())
    return h.hexdigest()


def object_family(rgb) -> str:
    h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255 for c in rgb))
    h *= 360
    if v < 0.22:
        return "black"
    if s < 0.18:
        return "white" if v > 0.75 else "gray"
    for name, upper in (("red", 12), ("orange", 40), ("yellow", 70), ("green", 170), ("cyan", 195), ("blue", 255)):
        if h < upper:
            return name
    return "red" if h >= 335 else "purple"
