"""Synthetic captioned scenes: the offline data the embedded demo model learns from.

Each scene is 1-3 flat shapes on a plain or gradient background. Its targets (caption in a
tone and audience, hashtags, alt text) are written from the scene description, so every
target is true of its picture and evaluation can check colour and shape mechanically.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from snap2caption_service.core.prompting import format_target

# Bump when scenes or target texts change: the demo-model cache is keyed by it.
GENERATOR_VERSION = "1"

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
# Backgrounds use colour names no object has, so "red" in a caption always means an object.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "beige": (222, 200, 160),
    "teal": (40, 130, 130),
    "pink": (235, 150, 185),
    "brown": (110, 70, 40),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"large": (50, 62), "medium": (34, 42), "small": (20, 26)}
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

    def phrase(self) -> str:
        pos = self.position
        where = {
            "center": "in the center",
            "left": "on the left",
            "right": "on the right",
            "top": "at the top",
            "bottom": "at the bottom",
        }.get(pos, f"in the {pos}")
        return f"a {self.size} {self.color} {self.shape} {where}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # objects[0] is the main (largest) object
    background: tuple[str, ...]  # one name (plain) or two (gradient from, to)
    seed: int = 0

    @property
    def main(self) -> SceneObject:
        return self.objects[0]

    def background_phrase(self) -> str:
        if len(self.background) == 1:
            return f"a plain {self.background[0]} background"
        return f"a gradient background from {self.background[0]} to {self.background[1]}"


def sample_scene(rng: random.Random) -> Scene:
    n = rng.choices((1, 2, 3), weights=(4, 3, 3))[0]
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
    objects = tuple(
        SceneObject(rng.choice(list(COLORS)), rng.choice(SHAPES), size, r, c) for size, (r, c) in zip(sizes, cells)
    )
    if rng.random() < 0.6:
        background: tuple[str, ...] = (rng.choice(list(BACKGROUNDS)),)
    else:
        background = tuple(rng.sample(list(BACKGROUNDS), 2))
    return Scene(objects, background, seed=rng.randrange(2**31))


def _jittered(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _shape_points(shape: str, cx: float, cy: float, d: float) -> list[tuple[float, float]]:
    r = d / 2
    if shape == "triangle":
        h = d * math.sqrt(3) / 2
        return [(cx, cy - h / 2 - 2), (cx - r, cy + h / 2), (cx + r, cy + h / 2)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.42
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + r * 0.08))
        return pts
    raise ValueError(shape)


def render_scene(scene: Scene, size: int = CANVAS) -> Image.Image:
    """Draw the scene at 2x and downsample, so edges look like a resized photo's."""
    rng = random.Random(scene.seed)
    big = CANVAS * 2
    if len(scene.background) == 1:
        img = Image.new("RGB", (big, big), _jittered(BACKGROUNDS[scene.background[0]], rng, 12))
    else:
        a = _jittered(BACKGROUNDS[scene.background[0]], rng, 12)
        b = _jittered(BACKGROUNDS[scene.background[1]], rng, 12)
        ramp = Image.linear_gradient("L").resize((big, big))
        if rng.random() < 0.5:
            ramp = ramp.rotate(90)
        img = Image.composite(Image.new("RGB", (big, big), b), Image.new("RGB", (big, big), a), ramp)
    draw = ImageDraw.Draw(img)
    cell = big / 3
    for obj in scene.objects:
        lo, hi = SIZES[obj.size]
        d = rng.uniform(lo, hi) * 2
        cx = (obj.col + 0.5) * cell + rng.uniform(-6, 6)
        cy = (obj.row + 0.5) * cell + rng.uniform(-6, 6)
        # Keep the whole shape on the canvas: a clipped star stops looking like a star.
        cx, cy = (min(max(v, d / 2 + 4), big - d / 2 - 4) for v in (cx, cy))
        fill = _jittered(COLORS[obj.color], rng, 15)
        if obj.shape == "circle":
            draw.ellipse((cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2), fill=fill)
        elif obj.shape == "square":
            s = d * 0.86  # a square reads as big as a circle of the same diameter at ~0.86
            draw.rectangle((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=fill)
        else:
            draw.polygon(_shape_points(obj.shape, cx, cy, d * 1.08), fill=fill)
    return img.resize((size, size), Image.LANCZOS)


# --- target texts -------------------------------------------------------------------------

# {c} colour, {s} shape, {bg} background colour word. Two variants per tone and audience,
# so the model learns tone-specific wording rather than one fixed sentence.
CAPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "funny": {
        "personal": (
            "My {c} {s} and I are not speaking today. It knows what it did.",
            "Told everyone I am into geometry now. Exhibit A: one very {c} {s}.",
        ),
        "promotional": (
            "Our {c} {s} sold out faster than my weekend plans. Grab yours!",
            "Warning: this {c} {s} may cause extreme good taste. Shop now.",
        ),
        "academic": (
            "Peer reviewed by my cat: the {c} {s} is statistically adorable.",
            "Hypothesis: a {c} {s} improves any slide. Results: strongly positive.",
        ),
    },
    "quirky": {
        "personal": (
            "Just a {c} {s} living its best little life on {bg}.",
            "Plot twist: the {c} {s} was the main character all along.",
        ),
        "promotional": (
            "Meet the {c} {s} your shelf did not know it needed.",
            "Odd, bold and totally {c}: the {s} drop is here.",
        ),
        "academic": (
            "Field notes: one {c} {s} spotted in its natural {bg} habitat.",
            "Curious specimen: a {c} {s} behaving exactly like a {s}.",
        ),
    },
    "serious": {
        "personal": (
            "A {c} {s}, quietly holding its place against {bg}.",
            "Some days call for nothing more than a single {c} {s}.",
        ),
        "promotional": (
            "The {c} {s}: precise form, honest colour, built to last.",
            "Introducing the {c} {s}. Clean lines for a focused space.",
        ),
        "academic": (
            "A {c} {s} on a {bg} field, presented as a study of form and contrast.",
            "Observation of a {c} {s}: shape and colour remain clearly distinct.",
        ),
    },
    "inspirational": {
        "personal": ("Be the {c} {s} in a {bg} world.", "Stand out like a {c} {s}. Every day is a fresh canvas."),
        "promotional": (
            "Dream bold with the {c} {s}. Your space, your story.",
            "Let the {c} {s} remind you to shine. Available today.",
        ),
        "academic": (
            "Every discovery starts with a simple {c} {s}. Keep asking questions.",
            "From one {c} {s} to a world of ideas: curiosity builds knowledge.",
        ),
    },
    "casual": {
        "personal": ("Weekend vibes with a {c} {s}.", "Nothing fancy, just a {c} {s} hanging out."),
        "promotional": (
            "New in: the {c} {s}. Easy pick for any room.",
            "Say hi to our {c} {s}, fresh in the shop this week.",
        ),
        "academic": (
            "Quick look at a {c} {s} for today's geometry notes.",
            "Today's example: a {c} {s}, simple and easy to spot.",
        ),
    },
    "poetic": {
        "personal": (
            "A {c} {s} drifts in {bg} light, still and sure.",
            "Soft {bg} silence, and one {c} {s} to hold it.",
        ),
        "promotional": (
            "Where {bg} meets a {c} {s}, beauty finds a home. Discover it.",
            "A {c} {s}, shaped like a quiet promise. Now in store.",
        ),
        "academic": (
            "In the grammar of shapes, the {c} {s} is a clear and steady word.",
            "A {c} {s} against {bg}: form and hue in gentle dialogue.",
        ),
    },
}

TONE_TAGS = {
    "funny": "#funny",
    "quirky": "#quirky",
    "serious": "#minimal",
    "inspirational": "#inspiration",
    "casual": "#vibes",
    "poetic": "#poetry",
}
AUDIENCE_TAGS = {
    "personal": ("#aesthetic", "#dailypic", "#mood"),
    "promotional": ("#shopnow", "#newarrival", "#smallbusiness"),
    "academic": ("#geometry", "#research", "#science"),
}
GENERIC_TAGS = ("#shapes", "#design", "#art", "#colorful", "#minimalart")
NUM_TARGET_HASHTAGS = 10


def alt_text(scene: Scene) -> str:
    parts = [obj.phrase() for obj in scene.objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed[0].upper()}{listed[1:]}, on {scene.background_phrase()}."


def hashtags(scene: Scene, tone: str, audience: str) -> list[str]:
    m = scene.main
    tags = [f"#{m.color}", f"#{m.shape}", f"#{m.color}{m.shape}"]
    for obj in scene.objects[1:]:
        tags += [f"#{obj.color}", f"#{obj.shape}"]
    tags += [TONE_TAGS[tone], *AUDIENCE_TAGS[audience], *GENERIC_TAGS]
    unique = list(dict.fromkeys(tags))
    return unique[:NUM_TARGET_HASHTAGS]


def caption(scene: Scene, tone: str, audience: str, variant: int) -> str:
    templates = CAPTIONS[tone][audience]
    bg = scene.background[0]
    return templates[variant % len(templates)].format(c=scene.main.color, s=scene.main.shape, bg=bg)


def target_text(scene: Scene, tone: str, audience: str, variant: int) -> str:
    """The assistant's answer, in the format the captioning core parses."""
    return format_target(caption(scene, tone, audience, variant), hashtags(scene, tone, audience), alt_text(scene))


@dataclass(frozen=True)
class Example:
    scene: Scene
    tone: str
    audience: str
    target: str


def make_examples(n: int, seed: int) -> list[Example]:
    """n examples with random scenes, tones and audiences; the same seed gives the same set."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        tone, audience = rng.choice(TONES), rng.choice(AUDIENCES)
        out.append(Example(scene, tone, audience, target_text(scene, tone, audience, rng.randrange(2))))
    return out


def corpus_lines() -> list[str]:
    """Every word the targets can use, for training the demo tokenizer."""
    lines = []
    for tone, by_aud in CAPTIONS.items():
        for templates in by_aud.values():
            for t in templates:
                for c in COLORS:
                    for s in SHAPES:
                        lines.append(t.format(c=c, s=s, bg=rng_bg(c)))
    lines += list(TONE_TAGS.values()) + [t for v in AUDIENCE_TAGS.values() for t in v] + list(GENERIC_TAGS)
    lines += [f"#{c} #{s} #{c}{s}" for c in COLORS for s in SHAPES]
    rng = random.Random(0)
    lines += [alt_text(sample_scene(rng)) for _ in range(400)]
    return lines


def rng_bg(color: str) -> str:
    names = list(BACKGROUNDS)
    return names[len(color) % len(names)]
