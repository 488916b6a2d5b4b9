"""A validation set for choosing among demo-model recipes: coloured shapes drawn by matplotlib,
code that shares nothing with the training generator (training/synthetic.py) or the held-out
test sets (training/heldout_scenes.py) but the colour and shape words.

Why a third set: the held-out sets are the test, so choosing a recipe, a view or a threshold
on them would tune to the test; and the generator's own scenes mislead on busy backgrounds
(docs/notes/demo-model.md, session 24: the own scenes preferred 2,100 stage-1 steps, the photo
set 1,500). This set is drawn differently from all three:

- objects are matplotlib patches (Agg's anti-aliasing, a five-pointed star from
  ``Path.unit_regular_star``), in xkcd colour-survey shades per colour word;
- half the backgrounds are busy pictures none of the other sets uses: crops of matplotlib's
  photograph of Grace Hopper, and its two elevation grids rendered as hill-shaded relief maps
  through a colour map (``LightSource.shade``), which look like aerial photographs;
- the other half are plain CSS-named colours (lavender, wheat, slate gray ...);
- sizes, places and rotations are continuous; frames 144-288 px, some not square; some blurred
  (scikit-image's Gaussian filter) or JPEG-compressed.

    python -m training.validation_scenes --out DIR [--n 300]   # writes PNGs and truth.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from training.synthetic import COLORS, SHAPES

DEFAULT_SEED = 8303

# Shades from the xkcd colour survey (what people called each colour), several per word.
OBJECT_SHADES: dict[str, tuple[str, ...]] = {
    "red": ("xkcd:red", "xkcd:cherry red", "xkcd:tomato red", "xkcd:lipstick red"),
    "green": ("xkcd:grass green", "xkcd:emerald", "xkcd:kelly green", "xkcd:forest green"),
    "blue": ("xkcd:cobalt blue", "xkcd:bright blue", "xkcd:royal blue", "xkcd:primary blue"),
    "yellow": ("xkcd:sunflower yellow", "xkcd:bright yellow", "xkcd:canary yellow", "xkcd:lemon yellow"),
    "orange": ("xkcd:orange", "xkcd:tangerine", "xkcd:bright orange", "xkcd:pumpkin orange"),
    "purple": ("xkcd:purple", "xkcd:royal purple", "xkcd:violet", "xkcd:grape purple"),
    "black": ("xkcd:black", "xkcd:almost black", "xkcd:dark", "xkcd:very dark brown"),
    "white": ("xkcd:white", "xkcd:off white", "snow", "whitesmoke"),
}
PLAIN_BACKGROUNDS = (
    "lavender", "wheat", "slategray", "lightsteelblue", "darkslategray", "ivory", "silver", "dimgray",
    "mistyrose", "tan", "cadetblue", "rosybrown", "palegoldenrod", "lightgray", "midnightblue", "sienna",
)  # fmt: skip
RELIEF_COLOUR_MAPS = ("terrain", "gist_earth", "copper", "bone", "pink", "cubehelix")
# CIE76 distance an object keeps from the background around it: at least this on average, and at
# most 10% of the surround closer than 0.7 of it, so no part of its outline dissolves.
MIN_CONTRAST = 30.0


@dataclass(eq=False)
class ValidationScene:
    image: Image.Image
    color: str  # the main (largest) object's colour word
    shape: str
    background: str  # "plain", "photo" or "relief"
    center: tuple[float, float]  # the main object's centre in pixels (x, y): lets a test check the truth


def _rgb(name: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(name))


def _lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3)).reshape(-1, 3)


@lru_cache(maxsize=1)
def _busy_pictures() -> tuple[tuple[str, np.ndarray], ...]:
    """Grace Hopper's photograph and hill-shaded relief maps, float RGB in 0..1."""
    from matplotlib import cbook, colormaps
    from matplotlib.colors import LightSource

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out = [("photo", np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255)]
    for grid, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        z = np.asarray(cbook.get_sample_data(grid)[key], dtype=np.float64)
        for i, cmap in enumerate(RELIEF_COLOUR_MAPS):
            light = LightSource(azdeg=315 - 40 * i, altdeg=35 + 5 * (i % 3))
            shaded = light.shade(z, cmap=colormaps[cmap], blend_mode="soft", vert_exag=4 if i % 2 else 1)
            out.append(("relief", shaded[..., :3]))
    return tuple(out)


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[str, np.ndarray]:
    if rng.random() < 0.5:
        rgb = _rgb(PLAIN_BACKGROUNDS[int(rng.integers(len(PLAIN_BACKGROUNDS)))])
        return "plain", np.broadcast_to(rgb, (h, w, 3)).copy()
    # A third of busy backgrounds are the photograph, the rest relief maps.
    pictures = _busy_pictures()
    kind, pic = pictures[0] if rng.random() < 1 / 3 else pictures[1 + int(rng.integers(len(pictures) - 1))]
    ph, pw = pic.shape[:2]
    scale = rng.uniform(0.3, 0.95) * min(pw / w, ph / h)
    cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = Image.fromarray((pic[y0 : y0 + ch, x0 : x0 + cw] * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return kind, np.asarray(crop, dtype=np.float64) / 255


def _patch(shape: str, x: float, y: float, r: float, angle: float, color: np.ndarray, edge):
    """A matplotlib patch in pixel coordinates, r its circumradius."""
    from matplotlib.patches import Circle, PathPatch, RegularPolygon
    from matplotlib.path import Path as MplPath
    from matplotlib.transforms import Affine2D

    style = {"facecolor": color, "edgecolor": edge[0] if edge else "none", "linewidth": edge[1] if edge else 0}
    if shape == "circle":
        return Circle((x, y), r, **style)
    if shape in ("square", "triangle"):
        return RegularPolygon((x, y), 4 if shape == "square" else 3, radius=r, orientation=angle, **style)
    star = MplPath.unit_regular_star(5, innerCircle=0.45)
    return PathPatch(star.transformed(Affine2D().scale(r).rotate(angle).translate(x, y)), **style)


def _area(shape: str, r: float) -> float:
    return (
        {"circle": math.pi, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4}.get(
            shape, 5 * 0.45 * math.sin(math.pi / 5)
        )
        * r
        * r
    )


def _surround(bg: np.ndarray, x: float, y: float, r: float) -> np.ndarray:
    h, w = bg.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    d = np.hypot(xs + 0.5 - x, ys + 0.5 - y)
    return bg[(d > r * 1.05) & (d < r * 1.05 + max(5.0, 0.3 * r))]


def _visible(color: np.ndarray, surround: np.ndarray) -> bool:
    if not len(surround):
        return False
    dist = np.linalg.norm(_lab(surround) - _lab(color)[0], axis=1)
    return float(dist.mean()) >= MIN_CONTRAST and float(np.mean(dist < 0.7 * MIN_CONTRAST)) <= 0.1


def _layout(rng: np.random.Generator, w: int, h: int, bg: np.ndarray):
    """1-3 objects, the first clearly the largest by area, apart and each visible on its background."""
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.35, 0.3]))
    short = min(w, h)
    placed = []
    for k in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        rgb = _rgb(OBJECT_SHADES[color][int(rng.integers(len(OBJECT_SHADES[color])))])
        if k == 0:
            r = short * rng.uniform(0.16, 0.32)
        else:
            # Area at most 1/1.7 of the main object's, at least a ninth of it.
            target = _area(placed[0][1], placed[0][4]) * rng.uniform(1 / 9, 1 / 1.7)
            r = math.sqrt(target / _area(shape, 1.0))
        if r < 6:
            return None
        for _ in range(30):
            x, y = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
            if all(math.hypot(x - p[2], y - p[3]) > r + p[4] + 3 for p in placed):
                break
        else:
            return None
        if not _visible(rgb, _surround(bg, x, y, r)):
            return None
        placed.append((color, shape, x, y, r, rgb, rng.uniform(0, 2 * math.pi)))
    return placed


def _draw(bg: np.ndarray, placed, rng: np.random.Generator) -> Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = bg.shape[:2]
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(bg, extent=(0, w, h, 0), interpolation="nearest")
    for color, shape, x, y, r, rgb, angle in placed:
        edge = None
        if rng.random() < 0.25:
            edge = ("xkcd:dark grey" if color != "black" else "xkcd:light grey", float(rng.uniform(1.0, 2.5)))
        ax.add_patch(_patch(shape, x, y, r, angle, rgb, edge))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def _camera(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    from skimage.filters import gaussian

    if rng.random() < 0.25:
        blurred = gaussian(np.asarray(img, dtype=np.float64) / 255, sigma=float(rng.uniform(0.5, 1.4)), channel_axis=-1)
        img = Image.fromarray((np.clip(blurred, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.4:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(35, 90)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def _scene(rng: np.random.Generator) -> ValidationScene:
    side = int(rng.integers(144, 289))
    w, h = (side, side) if rng.random() < 0.6 else (side, int(side * rng.uniform(0.62, 0.9)))
    if rng.random() < 0.5:
        w, h = h, w
    while True:
        kind, bg = _background(rng, w, h)
        placed = _layout(rng, w, h, bg)
        if placed:
            break
    img = _camera(_draw(bg, placed, rng), rng)
    return ValidationScene(img, placed[0][0], placed[0][1], kind, (placed[0][2], placed[0][3]))


def validation_set(n: int = 300, seed: int = DEFAULT_SEED) -> list[ValidationScene]:
    """n scenes; scene i depends only on (seed, i), so a shorter set is a prefix of a longer one."""
    return [_scene(np.random.default_rng((seed, i))) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs and truth.json")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, scene in enumerate(validation_set(args.n, args.seed)):
        name = f"{i:04d}.png"
        scene.image.save(args.out / name)
        truth[name] = {"color": scene.color, "shape": scene.shape, "background": scene.background}
    (args.out / "truth.json").write_text(json.dumps(truth, indent=1))
    print(f"{args.n} scenes in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
