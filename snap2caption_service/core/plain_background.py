"""What a picture's border says about its background, read from the pixels: a plain colour (and
its nearest name) or not plain at all. An alt text that names a background the border
contradicts loses that clause (issue 15: a background is named right or not at all).

The demo model's tower names backgrounds from what it was trained on, and is sometimes sure
and wrong: a light gray read as "white", a photo read as "plain black". The border of a picture
is mostly background, and whether it is one flat colour, and which, is a measurement rather than
a guess, so it can veto a claim the tower cannot check.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from snap2caption_service.core.alt_text import background_clause, without_background

# The plain background colours the demo model names, as it draws them (training/synthetic.py
# renders from this table). Named by nearest neighbour in CIELAB, where a light gray is nearer
# gray than beige, unlike in RGB.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (244, 244, 240),
    "black": (24, 24, 26),
    "gray": (128, 128, 128),
    "beige": (222, 200, 160),
    "teal": (40, 130, 130),
    "pink": (235, 150, 185),
    "brown": (110, 70, 40),
}
# A plain background: at least PLAIN_SHARE of the border within SAME_COLOUR_DELTA_E (CIELAB) of
# the border's median colour; objects touching the border and JPEG blocks take the rest. Set on
# the training generator's scenes (1,500 of the world mix), not on the held-out sets: 95% of
# plain backgrounds read plain (the others go unnamed), 1% of photo and textured ones and no
# gradient do. A flat fill is flat to within ~3; a photo's dark sky or a texture is not.
SAME_COLOUR_DELTA_E = 3.0
PLAIN_SHARE = 0.85
# ... and at least FLAT_SHARE of it within FLAT_DELTA_E: a dark photo (a crop of the night sky)
# can have 85% of its border within 3 of its median, but its grain spreads those pixels, where a
# flat fill's sit on the median even after JPEG. On the training generator's scenes (1,500 of the
# world mix; docs/notes/demo-model.md, session 28) the photos whose border read plain had at most
# 62% of it within 1.5, while 99% of the plain fills the border reads had at least 80%; with this
# check no photo there reads plain, and 1% of the plain fills (the noisiest) go unnamed.
FLAT_DELTA_E = 1.5
FLAT_SHARE = 0.8
# The border strip read, as a share of the shorter side (at least 2 px).
BORDER_SHARE = 0.04
_READ_SIDE = 128  # the picture is read at this size: the border is about colour, not detail

# sRGB (D65) to CIE XYZ, then to CIELAB: the standard formulas.
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)


def _lab(image: Image.Image) -> np.ndarray:
    """CIELAB (L 0..100) of an RGB picture, as float32 H x W x 3."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_PALETTE_LAB = _lab(Image.fromarray(np.array([list(BACKGROUND_COLOURS.values())], dtype=np.uint8)))[0]


def nearest_colour_name(lab: np.ndarray) -> str:
    """The palette name nearest a CIELAB colour."""
    return list(BACKGROUND_COLOURS)[int(np.linalg.norm(_PALETTE_LAB - lab, axis=-1).argmin())]


def border_colour(image: Image.Image) -> str | None:
    """The background's colour name when the picture's border is one plain colour; None when it
    is not (a photo, a texture, a gradient, or a border the objects cover)."""
    picture = image.convert("RGB")
    picture.thumbnail((_READ_SIDE, _READ_SIDE))
    lab = _lab(picture)
    h, w = lab.shape[:2]
    k = max(2, round(BORDER_SHARE * min(h, w)))
    border = np.concatenate(
        [lab[:k].reshape(-1, 3), lab[-k:].reshape(-1, 3), lab[k:-k, :k].reshape(-1, 3), lab[k:-k, -k:].reshape(-1, 3)]
    )
    median = np.median(border, axis=0)
    off = np.linalg.norm(border - median, axis=-1)
    if (off <= SAME_COLOUR_DELTA_E).mean() < PLAIN_SHARE or (off <= FLAT_DELTA_E).mean() < FLAT_SHARE:
        return None
    return nearest_colour_name(median)


def drop_contradicted_background(alt_text: str, border: str | None) -> str:
    """The alt text without a background clause the border contradicts: a plain colour the border
    is not (another colour, or not plain at all), or a photo or texture where the border is one
    flat colour. A clause this does not read (a gradient, a real checkpoint's own words) stays."""
    clause = background_clause(alt_text)
    if clause is None:
        return alt_text
    if len(clause.what) == 2 and clause.what[0] == "plain":
        colour = clause.what[1]
        if colour not in BACKGROUND_COLOURS or colour == border:
            return alt_text
    elif clause.what in (("photo",), ("textured",)):
        if border is None:
            return alt_text
    else:
        return alt_text
    return without_background(alt_text, clause)
