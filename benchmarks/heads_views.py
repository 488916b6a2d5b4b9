"""Which views of a picture the demo model's scene heads should read together
(scene_heads.VIEWS, averaged by SceneHeads.read): the picture alone, with its mirror image, its
four quarter turns, or the turns and their mirror images; and whether a crop around the main
object, read besides (scene_heads.ZOOM), helps (the service reads none since the main head,
session 27).

Reads the same scenes every way and prints how often the main object's colour and shape (and
the shape alone) come out right. The choice is made on the training generator's own scenes
(unseen seed, as benchmarks/heads_overrule.py) and the validation scenes
(training/validation_scenes.py); the held-out sets (training/heldout_scenes.py), the test, only
report what it gives there.

    python benchmarks/heads_views.py [--own 2000] [--validation 600] [--heldout 300] [--zooms 0.7 0.8]

About 15 minutes on 2 CPU cores, with the demo model built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.heads_overrule import scenes  # noqa: E402


def readings(captioner, images, views: str, zoom: float | None, batch_size: int = 50):
    from snap2caption_service.core.captioner import vision_tower
    from snap2caption_service.core.scene_heads import TokenSelection

    tower, selection = vision_tower(captioner.model), TokenSelection.of(captioner.model.config)
    out = []
    for start in range(0, len(images), batch_size):
        pixels = captioner.processor.image_processor(images[start : start + batch_size], return_tensors="pt")
        out += captioner.scene_heads.read(tower, pixels["pixel_values"], selection, views=views, zoom=zoom)
    return out


def main(argv: list[str] | None = None) -> int:
    from snap2caption_service.core.scene_heads import ZOOM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--own", type=int, default=2000, help="the generator's own scenes")
    parser.add_argument("--validation", type=int, default=600, help="validation scenes (training/validation_scenes.py)")
    parser.add_argument("--heldout", type=int, default=300, help="scenes per held-out set")
    parser.add_argument(
        "--zooms", nargs="*", type=float, default=[0.6, ZOOM, 0.8], help="crop sides to try besides none"
    )
    args = parser.parse_args(argv)

    from snap2caption_service.core.model_loading import load_captioner
    from snap2caption_service.core.scene_heads import DEFAULT_VIEWS, VIEWS
    from snap2caption_service.core.settings import get_settings
    from training.build_demo import cpu_name, ensure_demo_model

    captioner = load_captioner(get_settings(), ensure_demo_model)
    ways = [(views, None) for views in VIEWS] + [(DEFAULT_VIEWS, zoom) for zoom in args.zooms]
    rows = []
    for name, n in [
        ("own", args.own),
        ("validation", args.validation),
        ("vector", args.heldout),
        ("photo", args.heldout),
    ]:
        images, truths = scenes(name, n)
        cells = []
        for views, zoom in ways:
            read = readings(captioner, images, views, zoom)
            both = sum((r.color, r.shape) == t for r, t in zip(read, truths)) / n
            shape = sum(r.shape == t[1] for r, t in zip(read, truths)) / n
            cells.append(f"{both:.1%} ({shape:.1%})")
        rows.append(f"| {name} ({n}) | " + " | ".join(cells) + " |")
        print(f"{name}: {n} scenes", flush=True)
    print(
        f"\n{captioner.version}, {cpu_name()}; heads right on colour and shape (shape alone); "
        f"served: {DEFAULT_VIEWS}, no zoom\n"
    )
    heads = [f"{v} ({len(VIEWS[v])})" if z is None else f"{v} + zoom {z}" for v, z in ways]
    print("| set | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(ways))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
