"""Held-out scenes the demo model never trained on: coloured shapes drawn by code that shares
nothing with training/synthetic.py but the words.

Two sets, each deterministic by seed:

- "vector": shapes rasterised here from signed distance functions (anti-aliased by pixel
  coverage, no PIL.ImageDraw), in a palette of our own shades per colour name, at continuous
  sizes, positions and rotations, on plain backgrounds, in images of 160-320 px (some not
  square), some blurred, some JPEG-compressed.
- "photo": the same shapes composited onto crops of real photographs (scikit-image's and
  scikit-learn's sample images), sometimes outlined, under lighting shifts.

Only the vocabulary (colour and shape names) comes from synthetic.py; no RGB value does, so a
model that learned synthetic.py's exact colours and strokes is caught out here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFilter

from training.synthetic import BACKGROUND_NAMES, COLORS, SHAPES

T = TypeVar("T")

HELDOUT_SETS = ("vector", "photo")
DEFAULT_SEEDS = {"vector": 7101, "photo": 7202}

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)

# Named shades, several per colour word, chosen by hand to be what a person calls that colour
# (crimson and scarlet are red; navy and royal are blue).
OBJECT_PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((200, 16, 46), (255, 36, 0), (178, 34, 34), (227, 38, 54)),  # crimson, scarlet, firebrick, alizarin
    "green": ((34, 139, 34), (50, 205, 50), (0, 120, 0), (76, 187, 23)),  # forest, lime, dark, kelly
    "blue": ((0, 0, 128), (65, 105, 225), (0, 71, 171), (30, 144, 255)),  # navy, royal, cobalt, dodger
    "yellow": ((255, 215, 0), (255, 244, 79), (255, 236, 0), (240, 228, 66)),  # gold, lemon, canary, maize
    "orange": ((255, 140, 0), (242, 133, 0), (255, 117, 24), (255, 159, 28)),  # dark orange, tangerine, pumpkin
    "purple": ((128, 0, 128), (102, 51, 153), (148, 0, 211), (120, 40, 150)),  # purple, rebecca, violet, plum
    "black": ((0, 0, 0), (28, 26, 30), (20, 24, 32), (36, 32, 28)),  # jet, charcoal, ink, soot
    "white": ((255, 255, 255), (246, 246, 240), (255, 255, 242), (238, 242, 250)),  # snow, bone, ivory, frost
}
BACKGROUND_PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "white": ((252, 252, 252), (244, 241, 236), (236, 240, 244)),
    "black": ((4, 4, 6), (22, 20, 18), (14, 18, 24)),
    "gray": ((96, 96, 98), (112, 114, 118), (140, 140, 136), (158, 158, 160), (172, 170, 168)),
    "beige": ((232, 214, 178), (214, 196, 158), (240, 225, 196)),
    "teal": ((0, 128, 128), (24, 110, 120), (48, 148, 140)),
    "pink": ((255, 182, 193), (242, 140, 172), (250, 165, 200)),
    "brown": ((120, 72, 38), (139, 90, 52), (92, 58, 34)),
}
# Only backgrounds the model has a word for: a truth it cannot say would be a test of vocabulary.
_PLAIN_BACKGROUNDS = tuple(name for name in BACKGROUND_NAMES if name in BACKGROUND_PALETTE)
# Object colours a person would lump with the background ("a white circle on ivory"): never paired.
_SAME_FAMILY = {
    "white": {"white"},
    "black": {"black"},
    "gray": set(),
    "beige": {"white", "yellow"},
    "teal": {"green", "blue"},
    "pink": {"red", "purple", "white"},
    "brown": {"orange", "red", "black"},
}

# Colour photographs that synthetic.py never trains on (its TRAIN_PHOTOS: astronaut, coffee, chelsea,
# motorcycle_right, ihc, camera). Left out as well: motorcycle_left (the same scene as
# motorcycle_right, a stereo pair), grey textures (brick, gravel: its TEXTURES), the horse (a
# silhouette, not a photo) and retina (a crop of it is an orange surface a person might call
# textured, which would make the truth a matter of opinion).
_SKIMAGE_PHOTOS = ("rocket", "hubble_deep_field")
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")

# Colour distance (CIE76 in Lab) an object must keep from the background around it to stand out.
_MIN_CONTRAST = 32.0


@dataclass(eq=False)
class HeldOutScene:
    image: Image.Image
    color: str  # the main (largest) object's colour name
    shape: str
    background: str  # a colour name, "photo" or "textured"
    set_name: str
    # Pixels surely inside the main object (edges, outline and blur excluded): lets a test check the
    # truth against what was actually drawn.
    main_mask: np.ndarray = field(repr=False)


# --- rasterising ------------------------------------------------------------------------------


def _shape_vertices(shape: str, radius: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices around (0, 0) with the given circumradius, rotated by angle."""
    if shape == "square":
        a = angle + np.arange(4) * (math.pi / 2) + math.pi / 4
        r = np.full(4, radius)
    elif shape == "triangle":
        a = angle + np.arange(3) * (2 * math.pi / 3)
        r = np.full(3, radius)
    elif shape == "star":
        a = angle + np.arange(10) * (math.pi / 5)
        # A five-pointed star reads as one for inner/outer ratios of roughly 0.38 to 0.5.
        r = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    else:
        raise ValueError(shape)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from each pixel centre to a simple polygon, after
    Inigo Quilez's sdPolygon: nearest edge distance, sign by the even-odd crossing rule."""
    d = np.full(px.shape, np.inf)
    inside = np.zeros(px.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        (xi, yi), (xj, yj) = verts[i], verts[i - 1]
        ex, ey = xj - xi, yj - yi
        wx, wy = px - xi, py - yi
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        d = np.minimum(d, bx * bx + by * by)
        crosses = (py >= yi) != (py >= yj)
        x_at = xi + (py - yi) * ex / (ey if ey != 0 else 1e-12)
        inside ^= crosses & (px < x_at)
    return np.where(inside, -1.0, 1.0) * np.sqrt(d)


@dataclass
class _Shape:
    color: str
    shape: str
    rgb: np.ndarray  # float 0..1
    cx: float
    cy: float
    radius: float  # circumradius in pixels
    verts: np.ndarray | None = None  # polygon vertices around (0, 0); None for a circle
    outline: tuple[np.ndarray, float] | None = None  # (rgb, width in px)

    def area(self) -> float:
        if self.verts is None:
            return math.pi * self.radius**2
        x, y = self.verts[:, 0], self.verts[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))

    def local_sdf(self, h: int, w: int, pad: float) -> tuple[tuple[slice, slice], np.ndarray]:
        """Signed distance over the object's bounding box grown by pad (clipped to the frame): the
        only pixels drawing or measuring it needs, which keeps a scene to milliseconds."""
        r = self.radius + pad
        x0, x1 = max(0, int(self.cx - r)), min(w, int(self.cx + r) + 2)
        y0, y1 = max(0, int(self.cy - r)), min(h, int(self.cy + r) + 2)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        px, py = xs + 0.5 - self.cx, ys + 0.5 - self.cy
        sdf = np.hypot(px, py) - self.radius if self.verts is None else _polygon_sdf(px, py, self.verts)
        return (slice(y0, y1), slice(x0, x1)), sdf


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Fraction of each pixel the shape covers, from the distance to its edge: a one-pixel box
    filter, which is what anti-aliasing by supersampling converges to."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _paint(canvas: np.ndarray, obj: _Shape) -> None:
    """Blend the object over the canvas in place by its coverage; an outline is a band of the
    given width just inside the edge, blended the same way."""
    box, sdf = obj.local_sdf(*canvas.shape[:2], pad=2.0)
    cov = _coverage(sdf)[..., None]
    canvas[box] = canvas[box] * (1 - cov) + cov * obj.rgb
    if obj.outline is not None:
        rgb, width = obj.outline
        ring = np.clip(width / 2 + 0.5 - np.abs(sdf + width / 2), 0.0, 1.0)[..., None]
        canvas[box] = canvas[box] * (1 - ring) + ring * rgb


def _lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3)).reshape(-1, 3)


def _stands_out(obj_rgb: np.ndarray, surround: np.ndarray) -> bool:
    """True when the object's colour is far from the surrounding background's mean colour and
    little of that background is close to it (so no part of the edge dissolves)."""
    obj = _lab(obj_rgb)[0]
    sur = _lab(surround)
    if np.linalg.norm(sur.mean(axis=0) - obj) < _MIN_CONTRAST:
        return False
    return float(np.mean(np.linalg.norm(sur - obj, axis=1) < _MIN_CONTRAST * 0.75)) < 0.1


# --- scene layout -----------------------------------------------------------------------------


def _canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    side = int(rng.integers(160, 321))
    if rng.random() < 0.35:  # some landscape or portrait frames, as photos come
        other = int(np.clip(side * rng.uniform(0.6, 0.85), 160, 320))
        return (side, other) if rng.random() < 0.5 else (other, side)
    return side, side


def _layout(rng: np.random.Generator, w: int, h: int, colors: list[str]) -> list[_Shape] | None:
    """Place 1-3 shapes, the first clearly the largest, none overlapping, all inside the frame."""
    short = min(w, h)
    shapes: list[_Shape] = []
    for k, color in enumerate(colors):
        shape = _pick(rng, SHAPE_NAMES)
        radius = short * rng.uniform(0.17, 0.3) if k == 0 else shapes[0].radius * rng.uniform(0.4, 0.62)
        verts = None if shape == "circle" else _shape_vertices(shape, radius, rng.uniform(0, 2 * math.pi), rng)
        rgb = np.array(_pick(rng, OBJECT_PALETTE[color]), dtype=np.float32) / 255
        obj = _Shape(color, shape, rgb, 0.0, 0.0, radius, verts)
        # Areas differ by shape at one circumradius (a star covers far less than a circle), so a
        # smaller object is shrunk until the main one clearly covers the most of what is drawn.
        if k and obj.area() * 1.6 > shapes[0].area():
            scale = 0.97 * math.sqrt(shapes[0].area() / (1.6 * obj.area()))
            obj.radius *= scale
            obj.verts = None if verts is None else verts * scale
        if obj.radius < 7:
            return None
        margin = obj.radius + 3
        for _ in range(40):
            obj.cx, obj.cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
            if all(math.hypot(obj.cx - s.cx, obj.cy - s.cy) > obj.radius + s.radius + 4 for s in shapes):
                break
        else:
            return None
        shapes.append(obj)
    return shapes


def _pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def _pick_colors(rng: np.random.Generator, main: str, allowed: list[str]) -> list[str]:
    n = int(rng.choice([1, 2, 3], p=[0.4, 0.3, 0.3]))
    return [main] + [_pick(rng, allowed) for _ in range(n - 1)]


def _finish(canvas: np.ndarray, rng: np.random.Generator, blur_p: float, jpeg_p: float) -> Image.Image:
    img = Image.fromarray(np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.6))))
    if rng.random() < jpeg_p:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(30, 80)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def _core_mask(obj: _Shape, h: int, w: int) -> np.ndarray:
    inset = 2.5 + (obj.outline[1] if obj.outline else 0.0)
    box, sdf = obj.local_sdf(h, w, pad=0.0)
    mask = np.zeros((h, w), dtype=bool)
    mask[box] = sdf < -inset
    return mask


# --- the two sets ---------------------------------------------------------------------------------


def _vector_scene(rng: np.random.Generator) -> HeldOutScene:
    w, h = _canvas_size(rng)
    # The main colour is drawn first and kept through retries, so every colour leads about as many
    # scenes and the per-colour table has a fair number in each row.
    main = _pick(rng, COLOR_NAMES)
    shapes = None
    while not shapes:
        bg_name = _pick(rng, [b for b in _PLAIN_BACKGROUNDS if main not in _SAME_FAMILY[b]])
        bg = np.array(_pick(rng, BACKGROUND_PALETTE[bg_name]), dtype=np.float32) / 255
        allowed = [c for c in COLOR_NAMES if c not in _SAME_FAMILY[bg_name]]
        shapes = _layout(rng, w, h, _pick_colors(rng, main, allowed))
        if shapes and not all(_stands_out(s.rgb, bg[None]) for s in shapes):
            shapes = None
    canvas = np.empty((h, w, 3), dtype=np.float32)
    canvas[:] = bg
    # A little sensor-like noise, so "plain" is not a single RGB value.
    canvas += rng.normal(0, 0.008, size=(h, w, 1)).astype(np.float32)
    for s in shapes:
        _paint(canvas, s)
    img = _finish(canvas, rng, blur_p=0.25, jpeg_p=0.35)
    first = shapes[0]
    return HeldOutScene(img, first.color, first.shape, bg_name, "vector", _core_mask(first, h, w))


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data
    from sklearn.datasets import load_sample_image

    out = [getattr(skimage.data, name)() for name in _SKIMAGE_PHOTOS]
    out += [load_sample_image(name) for name in _SKLEARN_PHOTOS]
    return tuple(np.ascontiguousarray(a, dtype=np.uint8) for a in out)


def _photo_crop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    src = _pick(rng, _photos())
    ph, pw = src.shape[:2]
    # Crop with the frame's aspect ratio, 35-90% of the photo, so backgrounds range from a
    # recognisable scene to a close-up of one part of it.
    scale = rng.uniform(0.35, 0.9) * min(pw / w, ph / h)
    cw, ch = max(16, int(w * scale)), max(16, int(h * scale))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = Image.fromarray(src[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32) / 255


def _surround(bg: np.ndarray, obj: _Shape) -> np.ndarray:
    """Background pixels in a band just outside the object, where contrast decides its edge."""
    width = max(6.0, obj.radius * 0.35)
    box, sdf = obj.local_sdf(*bg.shape[:2], pad=width)
    return bg[box][(sdf > 1) & (sdf < width)]


def _photo_scene(rng: np.random.Generator) -> HeldOutScene:
    w, h = _canvas_size(rng)
    main = _pick(rng, COLOR_NAMES)  # kept through retries, as in the vector set
    shapes = None
    while not shapes:
        bg = _photo_crop(rng, w, h)
        shapes = _layout(rng, w, h, _pick_colors(rng, main, list(COLOR_NAMES)))
        if shapes and not all(_stands_out(s.rgb, _surround(bg, s)) for s in shapes):
            shapes = None
    canvas = bg.copy()
    for s in shapes:
        if rng.random() < 0.35:
            # Stickers and cut-outs often carry a thin dark or light border.
            edge = np.array((0.05, 0.05, 0.05) if s.color != "black" else (0.95, 0.95, 0.95), dtype=np.float32)
            s.outline = (edge, float(rng.uniform(1.5, 3.5)))
        _paint(canvas, s)
    # Lighting: overall exposure, a slight colour cast and a brightness ramp across the frame.
    gain = rng.uniform(0.85, 1.1) * (1 + rng.uniform(-0.05, 0.05, size=3))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xs / w - 0.5) * math.cos(theta) + (ys / h - 0.5) * math.sin(theta)
    canvas = canvas * gain.astype(np.float32) * (1 + rng.uniform(0, 0.18) * ramp)[..., None]
    img = _finish(canvas, rng, blur_p=0.2, jpeg_p=0.5)
    first = shapes[0]
    return HeldOutScene(img, first.color, first.shape, "photo", "photo", _core_mask(first, h, w))


_MAKERS = {"vector": _vector_scene, "photo": _photo_scene}


def heldout_set(name: str, n: int = 300, seed: int | None = None) -> list[HeldOutScene]:
    """n scenes of the named set; scene i depends only on (seed, i), so a shorter set is a prefix."""
    make = _MAKERS[name]
    seed = DEFAULT_SEEDS[name] if seed is None else seed
    return [make(np.random.default_rng((seed, i))) for i in range(n)]


def real_photos() -> dict[str, Image.Image]:
    """Two real photographs with no coloured shapes in them (scikit-learn's sample images): what an
    honest captioner should not describe as "a red circle on a plain background"."""
    from sklearn.datasets import load_sample_image

    return {name.removesuffix(".jpg"): Image.fromarray(load_sample_image(name)) for name in _SKLEARN_PHOTOS}
