"""Synthetic captioned scenes: the offline data the embedded demo model learns from.

Each scene is 1-3 shapes (rotated, sometimes outlined) on a plain, gradient, photo or textured
background, seen through a camera (light, blur, JPEG). Its targets (caption in a
tone and audience, hashtags, alt text) are written from the scene description, so every
target is true of its picture and evaluation can check colour and shape mechanically.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from snap2caption_service.core.contracts import MAX_HASHTAGS, MIN_HASHTAGS
from snap2caption_service.core.plain_background import BACKGROUND_COLOURS
from snap2caption_service.core.platforms import DEFAULT_PLATFORM, PLATFORM_NAMES
from snap2caption_service.core.prompting import format_target

# Bump when scenes or target texts change: the demo-model cache is keyed by it.
# 2: white/black/gray, photo and textured backgrounds; rotation, outlines, blur, JPEG, lighting;
#    hashtags without generic filler, as many as the prompt asks for; alt text within 125 characters.
# 3: the mix below (photo and textured backgrounds only in empty scenes; milder rotation and camera).
GENERATOR_VERSION = "10"  # 10: every object stands out from what is around it (min_contrast), shades from a box per colour word  # 9: other objects by colour alone ("a green shape"), no tags of theirs  # 8: captions name the second object  # 7: the world mix by default, captions name size and place  # 6: one object in half the scenes  # 5: milder mix (SceneMix); 4: on a gradient, alt text names two objects at most

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
# The shades a person calls by each colour word, as boxes in HSV (hue in degrees, may wrap below
# 0; saturation; value): a dark forest green is green and a pale lemon yellow is yellow, where
# one RGB value per word taught the tower one shade (docs/notes/demo-model.md, session 25).
# tests/test_synthetic.py checks every corner against a hue judge written apart from this.
SHADE_BOXES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-10, 6), (0.7, 1.0), (0.5, 1.0)),
    "green": ((90, 150), (0.5, 1.0), (0.3, 0.85)),
    "blue": ((205, 235), (0.65, 1.0), (0.4, 1.0)),
    "yellow": ((48, 60), (0.65, 1.0), (0.85, 1.0)),
    "orange": ((20, 34), (0.8, 1.0), (0.85, 1.0)),
    "purple": ((268, 295), (0.5, 1.0), (0.3, 0.8)),
    "black": ((0, 360), (0.0, 1.0), (0.0, 0.14)),
    "white": ((0, 360), (0.0, 0.06), (0.92, 1.0)),
}
# Plain backgrounds a person would name by colour. White and black are object colours too: an
# object is never drawn on a background of its own colour, and captions name the object first.
BACKGROUNDS = BACKGROUND_COLOURS
BACKGROUND_NAMES = tuple(BACKGROUNDS)
# Backgrounds that have no colour name: called what they are, never a wrong colour.
PHOTO, TEXTURED = "photo", "textured"
BACKGROUND_KINDS = (*BACKGROUND_NAMES, PHOTO, TEXTURED)
# Photographs the training scenes are drawn on (scikit-image's sample data). The held-out sets
# (training/heldout_scenes.py) use other photos, so a score there is not a memorised background.
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_right.png", "ihc.png", "camera.png")
# More of scikit-image's pictures, for the world mix: colour and gray photographs, none of them
# a held-out background (those are rocket, hubble_deep_field and scikit-learn's two).
MORE_TRAIN_PHOTOS = ("motorcycle_left.png", "retina.jpg", "coins.png", "moon.png", "clock_motion.png")
TEXTURES = ("gravel.png", "brick.png", "grass.png")
SHAPES = ("circle", "square", "triangle", "star")


@dataclass(frozen=True)
class SceneMix:
    """How much of the world the captioned scenes show: the knob between a model that passes its
    own bar and one that holds up on independently drawn pictures (issue 15).

    Measured on the 4.4M-parameter demo model (2 CPU cores, ~12 min build): with a quarter of the
    scenes on photos or textures, rotation up to 25 degrees and camera effects on a fifth to a
    quarter, it named colour and shape right in 77% of its own scenes (8x8 patches; 69% with
    16x16), 58% of the independent vector set and 47% of the photo set. Without photo or textured
    captioned scenes, rotation up to 8 degrees and outlines on a quarter: 92% of its own scenes
    (its tower read shape right in 95%), 57% and 38% held out. This mix (no rotation or outlines,
    light camera effects, one object in half the scenes): 95.0% of its own scenes, 53% and 34%
    held out, with 1,000 decoder steps (93% with 600). Answers on photo backgrounds, which it was
    not trained to caption, are flagged through the scene heads.
    """

    # Background kinds of captioned scenes (plain, gradient, photo, textured).
    background_weights: tuple[int, int, int, int] = (60, 40, 0, 0)
    max_rotation_deg: float = 0.0
    outline_share: float = 0.0
    brightness_share: float = 0.1
    blur_share: float = 0.0
    stretch_share: float = 0.1
    jpeg_share: float = 0.1
    # Diameter ranges per size band on the 128 px canvas.
    sizes: tuple[tuple[str, float, float], ...] = (("large", 50, 62), ("medium", 34, 42), ("small", 20, 26))
    # False: a polygon's outline spans the diameter, so a star covers less than half of what a
    # circle of its size covers, and a tower can tell shapes apart by covered area alone (which
    # does not carry over to pictures drawn otherwise: docs/notes/demo-model.md). True: the
    # diameter is that of the circle covering as much as the shape does.
    area_matched: bool = False
    # Photographs that photo backgrounds are cropped from, and the share of photo backgrounds
    # drawn instead as a procedural photo-like picture (_photo_like): six photos teach a tower
    # those six, not busy backgrounds in general.
    photos: tuple[str, ...] = TRAIN_PHOTOS
    photo_like_share: float = 0.0
    # Every object must stand out: at most max_blend of the background just around it within
    # min_contrast (CIE76) of its fill, or background, places and shades are drawn again.
    # 0: no check. The world mix has both (generator 10): over three stage-1 seeds they read the
    # validation scenes at 85.0% against 81.1% without (docs/notes/demo-model.md, session 26).
    min_contrast: float = 0.0
    max_blend: float = 0.15
    # Object shades: True, anywhere in the colour word's SHADE_BOXES box; False, within 15 of
    # one RGB value per word (COLORS).
    shade_boxes: bool = False


# Redraws of a scene whose background hides an object (min_contrast); one still hidden after them
# is drawn as it is (none among the photo scenes of 1,500 that tests/test_synthetic.py draws).
_REDRAWS = 12
# The demo model's mix up to generator version 6: flat shapes on plain or gradient backgrounds.
FLAT_MIX = SceneMix()
# The demo model's mix (and the vision-tower benchmark's): every rotation, area-matched sizes
# over wider bands, and photos, textures, outlines and camera effects on a tenth to a fifth of
# the scenes. On the hybrid tower it names colour and shape in 92% / 74% of the held-out sets
# where the flat mix on the CLIP tower named 58% / 45% (docs/notes/demo-model.md, session 16).
WORLD_MIX = SceneMix(
    background_weights=(55, 30, 10, 5),
    max_rotation_deg=180.0,
    outline_share=0.15,
    brightness_share=0.2,
    blur_share=0.15,
    stretch_share=0.15,
    jpeg_share=0.2,
    sizes=(("large", 40, 58), ("medium", 24, 34), ("small", 14, 22)),
    area_matched=True,
    photos=TRAIN_PHOTOS + MORE_TRAIN_PHOTOS,
    photo_like_share=0.4,
    min_contrast=25.0,
    shade_boxes=True,
)
# By name, as a demo recipe says which mix it trains on.
MIXES = {"flat": FLAT_MIX, "world": WORLD_MIX}
MIX = WORLD_MIX


@contextmanager
def scene_mix(mix: SceneMix):
    """Sample and render with another mix inside the block (benchmarks and experiments)."""
    global MIX
    previous, MIX = MIX, mix
    try:
        yield mix
    finally:
        MIX = previous


TONES = ("funny", "quirky", "serious", "inspirational", "casual", "poetic")
AUDIENCES = ("personal", "promotional", "academic")
CANVAS = 128

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    size: str
    row: int
    col: int

    @property
    def position(self) -> str:
        """Where a person would say the object is: 'top left', 'center', 'bottom'."""
        r, c = _ROWS[self.row], _COLS[self.col]
        if r == "middle" and c == "center":
            return "center"
        if r == "middle":
            return c
        if c == "center":
            return r
        return f"{r} {c}"

    @property
    def where(self) -> str:
        """Its place as a phrase: 'in the center', 'at the top', 'in the top left'."""
        pos = self.position
        return {
            "center": "in the center",
            "left": "on the left",
            "right": "on the right",
            "top": "at the top",
            "bottom": "at the bottom",
        }.get(pos, f"in the {pos}")

    def phrase(self) -> str:
        return f"{article(self.size)} {self.size} {self.color} {self.shape} {self.where}"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # objects[0] is the main (largest) object
    # One colour name (plain), two (a gradient from, to), or PHOTO / TEXTURED.
    background: tuple[str, ...]
    seed: int = 0

    @property
    def main(self) -> SceneObject:
        return self.objects[0]

    @property
    def background_kind(self) -> str:
        """The background's one label: its colour name (the first of a gradient), PHOTO or TEXTURED."""
        return self.background[0]

    def background_phrase(self) -> str:
        if self.background[0] in (PHOTO, TEXTURED):
            return f"a {self.background[0]} background"
        if len(self.background) == 1:
            return f"a plain {self.background[0]} background"
        return f"a gradient background from {self.background[0]} to {self.background[1]}"


def _background(rng: random.Random) -> tuple[str, ...]:
    kind = rng.choices(("plain", "gradient", PHOTO, TEXTURED), weights=MIX.background_weights)[0]
    if kind == "plain":
        return (rng.choice(BACKGROUND_NAMES),)
    if kind == "gradient":
        return tuple(rng.sample(BACKGROUND_NAMES, 2))
    return (kind,)


def sample_scene(rng: random.Random) -> Scene:
    # Most errors are in which colour goes with which shape of two or three objects: fewer of those.
    n = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
    main_size = rng.choice(("large", "large", "medium"))
    smaller = ("medium", "small") if main_size == "large" else ("small",)
    sizes = [main_size] + [rng.choice(smaller) for _ in range(n - 1)]
    cells: list[tuple[int, int]] = []
    for size in sizes:
        for _ in range(50):
            cell = (rng.randrange(3), rng.randrange(3))
            # Large shapes overflow their grid cell, so keep neighbours a cell away.
            gap = 2 if (size == "large" or any(s == "large" for s in sizes[: len(cells)])) else 1
            if all(max(abs(cell[0] - o[0]), abs(cell[1] - o[1])) >= gap for o in cells):
                cells.append(cell)
                break
        else:
            break
    background = _background(rng)
    # An object the colour of its background would be invisible: never drawn.
    colors = [c for c in COLORS if c not in background]
    objects = tuple(
        SceneObject(rng.choice(colors), rng.choice(SHAPES), size, r, c) for size, (r, c) in zip(sizes, cells)
    )
    return Scene(objects, background, seed=rng.randrange(2**31))


def sample_empty_scene(rng: random.Random) -> Scene:
    """A picture with no object the model knows, mostly photographs: what the vision tower must
    learn to read as empty, so a real photo is flagged rather than captioned as a shape."""
    kind = rng.choices((PHOTO, TEXTURED, "plain"), weights=(70, 20, 10))[0]
    return Scene((), (rng.choice(BACKGROUND_NAMES),) if kind == "plain" else (kind,), seed=rng.randrange(2**31))


def _shade(color: str, rng: random.Random) -> tuple[int, int, int]:
    if not MIX.shade_boxes:
        return _jittered(COLORS[color], rng, 15)
    (h0, h1), (s0, s1), (v0, v1) = SHADE_BOXES[color]
    rgb = colorsys.hsv_to_rgb((rng.uniform(h0, h1) % 360) / 360, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return tuple(round(255 * c) for c in rgb)  # type: ignore[return-value]


def _jittered(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _shape_points(shape: str, cx: float, cy: float, d: float, angle: float = 0.0) -> list[tuple[float, float]]:
    r = d / 2
    if shape == "triangle":
        h = d * math.sqrt(3) / 2
        pts = [(cx, cy - h / 2 - 2), (cx - r, cy + h / 2), (cx + r, cy + h / 2)]
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.42
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + r * 0.08))
    elif shape == "square":
        s = d * 0.43  # a square reads as big as a circle of the same diameter at ~0.86
        pts = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    else:
        raise ValueError(shape)
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        pts = [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in pts]
    return pts


def _area(pts: list[tuple[float, float]]) -> float:
    """A simple polygon's area (shoelace formula)."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]))) / 2


# The span to draw each polygon at so that it covers as much as a circle of that diameter
# (measured at 100 px: _shape_points nudges a triangle by a fixed 2 px).
_SPAN_OF_EQUAL_AREA = {
    shape: math.sqrt((math.pi / 4 * 100**2) / _area(_shape_points(shape, 0.0, 0.0, 100.0)))
    for shape in ("square", "triangle", "star")
}


def _inside(pts: list[tuple[float, float]], side: int, margin: float = 4) -> list[tuple[float, float]]:
    """The polygon moved just enough to lie wholly on the canvas (an area-matched star is wider
    than the circle whose place it takes)."""
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    dx = max(0.0, margin - min(xs)) - max(0.0, max(xs) - (side - margin))
    dy = max(0.0, margin - min(ys)) - max(0.0, max(ys) - (side - margin))
    return [(x + dx, y + dy) for x, y in pts]


@cache
def _sample_picture(name: str) -> Image.Image:
    """One of the sample pictures the scikit-image wheel ships (no download), as RGB, loaded once."""
    from pathlib import Path

    import skimage.data

    with Image.open(Path(skimage.data.__file__).parent / name) as pic:
        return pic.convert("RGB")


def _picture_crop(name: str, rng: random.Random, side: int) -> Image.Image:
    pic = _sample_picture(name)
    w, h = pic.size
    crop = int(min(w, h) * rng.uniform(0.35, 1.0))
    x, y = rng.randrange(w - crop + 1), rng.randrange(h - crop + 1)
    return pic.crop((x, y, x + crop, y + crop)).resize((side, side), Image.BILINEAR)


def _photo_like(rng: random.Random, side: int) -> Image.Image:
    """A procedural stand-in for a photograph: fields of 1/f noise (the amplitude spectrum of natural
    images) around a random base colour, mostly in brightness with a little colour as in photos,
    so there is structure at every scale and no two are alike."""
    import numpy as np

    gen = np.random.default_rng(rng.getrandbits(32))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.rfftfreq(side), indexing="ij"))
    f[0, 0] = 1.0
    amplitude = f ** -gen.uniform(1.1, 1.8)
    amplitude[0, 0] = 0.0
    phases = np.exp(2j * np.pi * gen.random((3, *f.shape)))
    fields = np.fft.irfft2(amplitude * phases, s=(side, side))
    fields /= fields.std(axis=(1, 2), keepdims=True)
    brightness = np.full((3, 1), gen.uniform(20, 55))
    tint = gen.normal(size=(3, 2)) * gen.uniform(4, 18)
    mixing = np.concatenate([brightness, tint], axis=1)
    base = gen.uniform(50, 205, size=3)
    rgb = base[:, None, None] + np.einsum("cf,fhw->chw", mixing, fields)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def _textured(rng: random.Random, side: int) -> Image.Image:
    """A texture photo (gravel, brick, grass) tinted with a random colour, or coloured noise."""
    if rng.random() < 0.6:
        gray = _picture_crop(rng.choice(TEXTURES), rng, side).convert("L")
        dark, light = _jittered((60, 60, 60), rng, 60), _jittered((200, 200, 200), rng, 55)
        return ImageOps.colorize(gray, dark, light)
    # Gaussian noise around mid-gray, as PIL's Image.effect_noise draws it, but from the scene's own
    # seed: effect_noise draws from C's rand(), so the same scene came out differently depending
    # on what the process had drawn before.
    import numpy as np

    sigma = rng.uniform(30, 90)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(128, sigma, (side // 8, side // 8))
    small = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
    return ImageOps.colorize(small, _jittered((70, 70, 70), rng, 70), _jittered((190, 190, 190), rng, 65))


def _draw_background(scene: Scene, rng: random.Random, side: int) -> Image.Image:
    if scene.background[0] == PHOTO:
        # Checked first, so a mix without photo-like pictures draws exactly as before.
        if MIX.photo_like_share and rng.random() < MIX.photo_like_share:
            return _photo_like(rng, side)
        return _picture_crop(rng.choice(MIX.photos), rng, side)
    if scene.background[0] == TEXTURED:
        return _textured(rng, side)
    if len(scene.background) == 1:
        return Image.new("RGB", (side, side), _jittered(BACKGROUNDS[scene.background[0]], rng, 12))
    a = _jittered(BACKGROUNDS[scene.background[0]], rng, 12)
    b = _jittered(BACKGROUNDS[scene.background[1]], rng, 12)
    ramp = Image.linear_gradient("L").resize((side, side))
    if rng.random() < 0.5:
        ramp = ramp.rotate(90)
    return Image.composite(Image.new("RGB", (side, side), b), Image.new("RGB", (side, side), a), ramp)


def _camera(img: Image.Image, rng: random.Random) -> Image.Image:
    """What happens to a picture between the scene and the service: light, focus, shape, compression."""
    if rng.random() < MIX.brightness_share:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    if rng.random() < MIX.brightness_share:
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.15))
    if rng.random() < MIX.blur_share:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < MIX.stretch_share:
        # A tall or wide photo, which the model's processor squeezes back to a square.
        w, h = img.size
        ratio = rng.uniform(0.75, 1.35)
        img = img.resize((round(w * ratio**0.5), round(h / ratio**0.5)), Image.BILINEAR)
    if rng.random() < MIX.jpeg_share:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(40, 85))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


@dataclass(frozen=True)
class _Mark:
    """One object as it is drawn on the 2x canvas: where, how big, in which shade."""

    shape: str
    fill: tuple[int, int, int]
    outline: tuple[int, int, int] | None
    width: int
    box: tuple[float, float, float, float] | None = None  # a circle's bounding box
    points: tuple[tuple[float, float], ...] = ()  # a polygon's corners

    def draw(self, draw: ImageDraw.ImageDraw, ink: int | None = None) -> None:
        """Draw it in its colours, or all in one ``ink`` (a mask of where it lies)."""
        fill, outline = (self.fill, self.outline) if ink is None else (ink, ink)
        if self.box is not None:
            draw.ellipse(self.box, fill=fill, outline=outline, width=self.width)
        else:
            draw.polygon(list(self.points), fill=fill, outline=outline, width=self.width)


def _mark(obj: SceneObject, rng: random.Random, big: int) -> _Mark:
    lo, hi = next((lo, hi) for name, lo, hi in MIX.sizes if name == obj.size)
    cell = big / 3
    d = rng.uniform(lo, hi) * 2
    cx = (obj.col + 0.5) * cell + rng.uniform(-12, 12)
    cy = (obj.row + 0.5) * cell + rng.uniform(-12, 12)
    # Keep the whole shape on the canvas: a clipped star stops looking like a star.
    cx, cy = (min(max(v, d / 2 + 4), big - d / 2 - 4) for v in (cx, cy))
    fill = _shade(obj.color, rng)
    # Outlines, as a person drawing on a busy background adds them.
    outline = _jittered((20, 20, 20) if obj.color != "black" else (235, 235, 235), rng, 15)
    width = rng.choice((3, 5)) if rng.random() < MIX.outline_share else 0
    if obj.shape == "circle":
        box = (cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2)
        return _Mark(obj.shape, fill, outline if width else None, width, box=box)
    angle = math.radians(rng.uniform(-MIX.max_rotation_deg, MIX.max_rotation_deg))
    span = d * (1.0 if obj.shape == "square" else 1.08)
    if MIX.area_matched:
        span = d * _SPAN_OF_EQUAL_AREA[obj.shape]
    pts = _shape_points(obj.shape, cx, cy, span, angle)
    if MIX.area_matched:
        pts = _inside(pts, big)
    return _Mark(obj.shape, fill, outline if width else None, width, points=tuple(pts))


def _lab(pixels):
    from skimage.color import rgb2lab

    return rgb2lab(pixels.reshape(-1, 1, 3).astype("float64") / 255).reshape(-1, 3)


def _grown(mark: _Mark, by: float) -> _Mark:
    """The mark with every corner moved ``by`` pixels further from its centre."""
    if mark.box is not None:
        x0, y0, x1, y1 = mark.box
        return replace(mark, box=(x0 - by, y0 - by, x1 + by, y1 + by))
    cx = sum(x for x, _ in mark.points) / len(mark.points)
    cy = sum(y for _, y in mark.points) / len(mark.points)
    points = []
    for x, y in mark.points:
        d = max(math.hypot(x - cx, y - cy), 1e-6)
        points.append((x + (x - cx) * by / d, y + (y - cy) * by / d))
    return replace(mark, points=tuple(points))


def _mark_contrast(img: Image.Image, mark: _Mark) -> float:
    """The share of the background just around the object that is close in colour (CIE76 under
    MIX.min_contrast) to the object's fill: 0 stands out all round, 1 is invisible."""
    import numpy as np

    xs = [mark.box[0], mark.box[2]] if mark.box else [x for x, _ in mark.points]
    ys = [mark.box[1], mark.box[3]] if mark.box else [y for _, y in mark.points]
    x0, y0 = max(0, int(min(xs)) - 6), max(0, int(min(ys)) - 6)
    x1, y1 = min(img.width, int(max(xs)) + 7), min(img.height, int(max(ys)) + 7)
    shape_mask, grown = Image.new("L", img.size, 0), Image.new("L", img.size, 0)
    mark.draw(ImageDraw.Draw(shape_mask), ink=255)
    _grown(mark, 4.0).draw(ImageDraw.Draw(grown), ink=255)
    box = (x0, y0, x1, y1)
    ring = (np.asarray(grown.crop(box)) > 0) & (np.asarray(shape_mask.crop(box)) == 0)
    around = np.asarray(img.crop(box))[ring]
    if not len(around):
        return 0.0
    distance = np.linalg.norm(_lab(around) - _lab(np.array(mark.fill)), axis=1)
    return float(np.mean(distance < MIX.min_contrast))


def _background_and_marks(scene: Scene, rng: random.Random, big: int) -> tuple[Image.Image, list[_Mark]]:
    img = _draw_background(scene, rng, big)
    marks = [_mark(obj, rng, big) for obj in scene.objects]
    if MIX.min_contrast and scene.objects:
        # A background can hide an object of a shade close to its own, and a label naming what
        # cannot be seen teaches noise: draw background, places and shades again until every
        # object shows.
        for _ in range(_REDRAWS):
            if all(_mark_contrast(img, m) <= MIX.max_blend for m in marks):
                break
            img = _draw_background(scene, rng, big)
            marks = [_mark(obj, rng, big) for obj in scene.objects]
    return img, marks


def render_scene(scene: Scene, size: int = CANVAS) -> Image.Image:
    """Draw the scene at 2x and downsample, so edges look like a resized photo's."""
    return render_scene_and_main(scene, size)[0]


def render_scene_and_main(scene: Scene, size: int = CANVAS, grid: int = 8):
    """The picture (as render_scene draws it) and where its main object lies: the share of each
    cell of a ``grid`` x ``grid`` split of the picture that the object covers, row by row (all 0
    for a scene without objects). A stretched picture is squeezed back to a square by the model's
    processor, so the cells are the processor's too."""
    import numpy as np

    rng = random.Random(scene.seed)
    big = CANVAS * 2
    img, marks = _background_and_marks(scene, rng, big)
    draw = ImageDraw.Draw(img)
    for m in marks:
        m.draw(draw)
    picture = _camera(img.resize((size, size), Image.LANCZOS), rng)
    mask = Image.new("L", (big, big), 0)
    if marks:
        marks[0].draw(ImageDraw.Draw(mask), ink=255)
        for other in marks[1:]:  # a later object drawn over the main one hides that part of it
            other.draw(ImageDraw.Draw(mask), ink=0)
    cover = np.asarray(mask.resize((grid, grid), Image.BOX), dtype=np.float32) / 255
    return picture, cover.reshape(-1)


# --- target texts -------------------------------------------------------------------------

# {n} the main object as a person names it ("big red circle": size word, colour, shape), {a}/{A}
# its article, {w} where it is (" in the top left"), {c} its colour, {s} its shape, {o} the second
# object by colour and shape ("a white star"). Three variants per tone and audience, picked by how
# many objects the picture has; the second and third name the second object. With size, place and
# the second object in the sentence, twenty pictures in one tone get twenty captions (issue 15),
# from things the model can see: two big red triangles at the top differ in what stands beside
# them. No variant names the background: the alt text does.
CAPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "funny": {
        "personal": (
            "My {n}{w} and I are not speaking today. It knows what it did.",
            "Told everyone I am into geometry now. Exhibit A: one very {n}{w}, plus {o}.",
            "Me: I will keep it simple. Also me: {a} {n}{w}, {o} and friends.",
        ),
        "promotional": (
            "Our {n}{w} sold out faster than my weekend plans. Grab yours!",
            "Warning: this {n}{w} and {o} may cause extreme good taste. Shop now.",
            "Buy one {n}{w}, get {o} and compliments free. Limited stock!",
        ),
        "academic": (
            "Peer reviewed by my cat: the {n}{w} is statistically adorable.",
            "Hypothesis: {a} {n}{w} next to {o} improves any slide. Results: strongly positive.",
            "Sample size of one {n}{w} and {o}, confidence level: extremely high.",
        ),
    },
    "quirky": {
        "personal": (
            "Just {a} {n} living its best little life{w}.",
            "Plot twist: the {n}{w} was the main character all along, not {o}.",
            "The {n}{w} brought {o} and did not tell anyone.",
        ),
        "promotional": (
            "Meet the {n}{w}, the piece your shelf did not know it needed.",
            "Odd, bold and totally {c}: meet the {n}{w} and {o}.",
            "Weird flex, but our {n}{w} is back in stock, with {o}.",
        ),
        "academic": (
            "Field notes: one {n} spotted{w}, in its natural habitat.",
            "Curious specimen: {a} {n}{w} behaving exactly like a {s}, beside {o}.",
            "Unusual sighting: {a} {n}{w}, {o} and a crowd of shapes.",
        ),
    },
    "serious": {
        "personal": (
            "{A} {n}, quietly holding its place{w}.",
            "Some days call for nothing more than a single {n}{w} and {o}.",
            "One {n} among others{w}, {o} too, and still the one I notice.",
        ),
        "promotional": (
            "The {n}{w}: precise form, honest colour, built to last.",
            "Introducing the {n}, with {o}. Clean lines{w} for a focused space.",
            "Designed with care: the {n}{w}, {o} and their companions.",
        ),
        "academic": (
            "{A} {n}{w}, presented as a study of form and contrast.",
            "Observation of {a} {n}{w} and {o}: shape and colour remain clearly distinct.",
            "Composition study: {a} {n}{w} as the dominant element, {o} beside it.",
        ),
    },
    "inspirational": {
        "personal": (
            "Be the {n}{w}, bright in an ordinary world.",
            "Stand out like {a} {n}{w} beside {o}. Every day is a fresh canvas.",
            "Even among many, the {n} finds its place{w}, and so does {o}. So will you.",
        ),
        "promotional": (
            "Dream bold with the {n}{w}. Your space, your story.",
            "Let the {n}{w} and {o} remind you to shine. Available today.",
            "Start something bold with {a} {n}{w} and {o}. Yours today.",
        ),
        "academic": (
            "Every discovery starts with a simple {n}{w}. Keep asking questions.",
            "From one {n}{w} and {o} to a world of ideas: curiosity builds knowledge.",
            "Look closer: the {n}{w} and {o}. Every question starts with noticing.",
        ),
    },
    "casual": {
        "personal": (
            "Weekend vibes with {a} {n}{w}.",
            "Nothing fancy, just {a} {n} hanging out{w} with {o}.",
            "Hanging out with my {n}{w}, {o} and the rest of the crew.",
        ),
        "promotional": (
            "New in: the {n}{w}. Easy pick for any room.",
            "Say hi to our {n}{w} and {o}, fresh in the shop this week.",
            "The {n} just landed{w}, with {o}. Come take a look.",
        ),
        "academic": (
            "Quick look: {a} {n}{w} for today's geometry notes.",
            "Today's example: {a} {n}{w} and {o}, simple and easy to spot.",
            "Class notes: the {n}{w}, {o} and a few neighbours.",
        ),
    },
    "poetic": {
        "personal": (
            "{A} {n} drifts in quiet light{w}, still and sure.",
            "Soft silence, and one {n}{w} beside {o} to hold it.",
            "{A} {n}{w} among its kin, {o} among them, a small song of shapes.",
        ),
        "promotional": (
            "Where light meets {a} {n}{w}, beauty finds a home. Discover it.",
            "{A} {n}{w} and {o}, shaped like a quiet promise. Now in store.",
            "{A} {n}{w} and {o} to gather the light of your room.",
        ),
        "academic": (
            "In the grammar of shapes, the {n}{w} is a clear and steady word.",
            "{A} {n}{w} and {o}: form and hue in gentle dialogue.",
            "{A} {n}{w} leads the eye, {o} and the others follow.",
        ),
    },
}

# Tags beyond the objects' own: specific to what every scene is (flat geometric art), never the
# generic reach-bait platforms advise against (core/generic_hashtags.txt).
STYLE_TAGS = ("#geometricart", "#flatdesign")
# The most hashtags a target carries; a prompt may ask for more, and the answer then stops here.
MAX_TARGET_HASHTAGS = 8
# The most characters an alt text may have (W3C WAI's 125-character guidance).
ALT_TEXT_TARGET_CHARS = 125


def _other_words(color: str) -> str:
    """An object other than the main one, by its colour alone: the tower reads the others'
    colours well and their shapes poorly (docs/notes/demo-model.md, sessions 21-22), and a target
    naming a shape the model cannot see teaches it to write a shape the picture does not hold,
    which caption and alt text then name differently."""
    return f"{article(color)} {color} shape"


_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


def _others_words(others: list[SceneObject]) -> list[str]:
    """The other objects, those of one colour counted together ("two black shapes"), not listed
    as one phrase twice over, which a screen reader would read out as if it were a stutter."""
    counts = Counter(o.color for o in others)  # in order of first appearance
    return [_other_words(c) if n == 1 else f"{_COUNT_WORDS[n]} {c} shapes" for c, n in counts.items()]


def alt_text(scene: Scene) -> str:
    """The main object first, with size and place; the others by colour; then the
    background. At most ALT_TEXT_TARGET_CHARS: on a gradient (the longest background phrase) a
    third object is left out, a rule the model can see, rather than a character count it cannot."""
    most = 2 if len(scene.background) == 2 else 3
    for count in range(min(len(scene.objects), most), 0, -1):
        parts = [scene.main.phrase()] + _others_words(scene.objects[1:count])
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        text = f"{listed[0].upper()}{listed[1:]}, on {scene.background_phrase()}."
        if len(text) <= ALT_TEXT_TARGET_CHARS:
            return text
    return text


def available_hashtags(scene: Scene) -> list[str]:
    """Every tag true of the scene, most specific first: the main object's, then the style's. The
    others get none: their shapes are not named (``_other_words``), and a tag of one would name an
    object the caption and alt text leave unnamed."""
    m = scene.main
    tags = [f"#{m.color}{m.shape}", f"#{m.color}", f"#{m.shape}"]
    tags += [f"#{m.shape}art", *STYLE_TAGS]
    return list(dict.fromkeys(tags))[:MAX_TARGET_HASHTAGS]


def hashtags(scene: Scene, num_hashtags: int) -> list[str]:
    return available_hashtags(scene)[:num_hashtags]


# How a caption sizes the main object: a medium one gets no word.
SIZE_WORDS = {"large": "big", "medium": "", "small": "little"}


def _fill(template: str, obj: SceneObject, other: SceneObject | None = None) -> str:
    noun = " ".join(w for w in (SIZE_WORDS[obj.size], obj.color, obj.shape) if w)
    a = article(noun)
    o = _other_words(other.color) if other else ""
    return template.format(n=noun, a=a, A=a.capitalize(), w=f" {obj.where}", c=obj.color, s=obj.shape, o=o)


def caption(scene: Scene, tone: str, audience: str) -> str:
    templates = CAPTIONS[tone][audience]
    second = scene.objects[1] if len(scene.objects) > 1 else None
    return _fill(templates[(len(scene.objects) - 1) % len(templates)], scene.main, second)


def target_text(scene: Scene, tone: str, audience: str, num_hashtags: int = MAX_TARGET_HASHTAGS) -> str:
    """The assistant's answer, in the format the captioning core parses."""
    return format_target(caption(scene, tone, audience), hashtags(scene, num_hashtags), alt_text(scene))


@dataclass(frozen=True)
class Example:
    scene: Scene
    tone: str
    audience: str
    target: str
    num_hashtags: int = MAX_TARGET_HASHTAGS  # what the prompt asks for; the target may have fewer
    platform: str = DEFAULT_PLATFORM


def make_examples(n: int, seed: int) -> list[Example]:
    """n examples with random scenes, tones, audiences, platforms and hashtag counts; the same
    seed gives the same set."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        tone, audience = rng.choice(TONES), rng.choice(AUDIENCES)
        k = rng.randint(MIN_HASHTAGS, MAX_HASHTAGS)
        platform = rng.choice(PLATFORM_NAMES)
        out.append(Example(scene, tone, audience, target_text(scene, tone, audience, k), k, platform))
    return out


def corpus_lines() -> list[str]:
    """Every word the targets can use, for training the demo tokenizer."""
    lines = []
    sizes, cells = tuple(SIZE_WORDS), [(r, c) for r in range(3) for c in range(3)]
    for by_aud in CAPTIONS.values():
        for templates in by_aud.values():
            for t in templates:
                for i, c in enumerate(COLORS):
                    for j, s in enumerate(SHAPES):
                        row, col = cells[(i + 3 * j) % len(cells)]
                        other = SceneObject(list(COLORS)[-1 - i], SHAPES[-1 - j], "small", 2 - row, 2 - col)
                        lines.append(_fill(t, SceneObject(c, s, sizes[(i + j) % len(sizes)], row, col), other))
    lines += list(STYLE_TAGS) + [f"#{s}art" for s in SHAPES]
    lines += [f"#{c} #{s} #{c}{s}" for c in COLORS for s in SHAPES]
    rng = random.Random(0)
    lines += [alt_text(sample_scene(rng)) for _ in range(400)]
    return lines
