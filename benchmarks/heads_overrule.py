"""How sure the demo model's scene heads must be before their reading overrules the decoder's
words for the main object (scene_heads.SURE_OF_OBJECT, answer_agreement.reconcile's ``sure``).

Captions the same scenes once with the overrule off, reads the heads beside each answer, then
applies each threshold to the answers as reconcile does (a sure colour or shape replaces the
caption's and alt text's), and prints colour+shape accuracy in caption and alt text per threshold.
The threshold is chosen on the training generator's own scenes (unseen seed) and the validation
scenes (training/validation_scenes.py, drawn by matplotlib on pictures no other set uses); the
held-out sets (training/heldout_scenes.py) are the test and only report what it gives there.

    python benchmarks/heads_overrule.py [--scenes 300] [--thresholds 0 0.3 0.5 0.7 0.9] [--views turns]

About 5 minutes a set on 2 CPU cores, with the demo model built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def caption_without_overrule(captioner, images, batch_size: int = 50, views: str | None = None):
    """(answers, readings) for the images: the decoder's own words, the heads' reading of each
    (from the served views of it, scene_heads.DEFAULT_VIEWS, or those named)."""
    import snap2caption_service.core.captioner as captioner_module
    from snap2caption_service.core.captioner import CaptionJob

    readings, read = [], captioner.scene_heads.read

    def recording_read(*args, **kwargs):
        out = read(*args, **kwargs) if views is None else read(*args, **kwargs, views=views)
        readings.extend(out)
        return out

    captioner.scene_heads.read, sure = recording_read, captioner_module.SURE_OF_OBJECT
    captioner_module.SURE_OF_OBJECT = 2.0  # no probability reaches it: the overrule is off
    try:
        answers = []
        for start in range(0, len(images), batch_size):
            jobs = [CaptionJob(image, "casual", "personal", 10, 1) for image in images[start : start + batch_size]]
            answers += [cands[0] for cands in captioner.caption_batch(jobs)]
    finally:
        captioner.scene_heads.read, captioner_module.SURE_OF_OBJECT = read, sure
    return answers, readings


def accuracy(truths, answers, readings, threshold: float) -> dict:
    """Colour+shape right in caption and alt text, as reconcile would leave them at ``threshold``."""
    from training.evaluate_demo import first_color_and_shape, first_pair

    right = heads_right = overruled = 0
    for truth, answer, reading in zip(truths, answers, readings):
        sure_color, sure_shape = reading.sure_parts(threshold)
        fields = [first_color_and_shape(answer.caption), first_pair(answer.alt_text)]
        after = [(sure_color or f[0], sure_shape or f[1]) if f else None for f in fields]
        right += all(f == truth for f in after)
        overruled += after != fields
        heads_right += (reading.color, reading.shape) == truth
    n = len(truths)
    return {"right": right / n, "overruled": overruled / n, "heads_right": heads_right / n}


def scenes(set_name: str, n: int):
    """(images, truths): the generator's own world-mix scenes (seed 9001, as evaluate-demo), the
    validation scenes (training/validation_scenes.py), or a held-out set."""
    if set_name == "validation":
        from training.validation_scenes import validation_set

        val = validation_set(n)
        return [s.image for s in val], [(s.color, s.shape) for s in val]
    if set_name == "own":
        from training import synthetic

        examples = synthetic.make_examples(n, 9001)
        return [synthetic.render_scene(e.scene) for e in examples], [
            (e.scene.main.color, e.scene.main.shape) for e in examples
        ]
    from training.heldout_scenes import heldout_set

    held = heldout_set(set_name, n)
    return [s.image for s in held], [(s.color, s.shape) for s in held]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300, help="scenes per set")
    parser.add_argument("--sets", nargs="+", default=["own", "validation", "vector", "photo"])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--views", help="the views the heads read (scene_heads.VIEWS); default: the served ones")
    args = parser.parse_args(argv)

    from snap2caption_service.core.model_loading import load_captioner
    from snap2caption_service.core.scene_heads import DEFAULT_VIEWS
    from snap2caption_service.core.settings import get_settings
    from training.build_demo import cpu_name, ensure_demo_model

    captioner = load_captioner(get_settings(), ensure_demo_model)
    rows = {}
    for name in args.sets:
        images, truths = scenes(name, args.scenes)
        answers, readings = caption_without_overrule(captioner, images, views=args.views)
        rows[name] = {t: accuracy(truths, answers, readings, t) for t in [2.0, *args.thresholds]}
        print(f"{name}: {len(truths)} scenes", flush=True)
    how = args.views or DEFAULT_VIEWS
    print(f"\n{captioner.version}, {cpu_name()}; heads read views {how!r}; colour+shape right in caption and alt text")
    print("(overruled share)\n")
    print("| threshold | " + " | ".join(args.sets) + " |\n|---|" + "---:|" * len(args.sets))
    print("| heads alone | " + " | ".join(f"{rows[s][2.0]['heads_right']:.1%}" for s in args.sets) + " |")
    for t in [2.0, *args.thresholds]:
        label = "off (decoder's words)" if t > 1 else f"{t:g}"
        cells = [f"{rows[s][t]['right']:.1%} ({rows[s][t]['overruled']:.1%})" for s in args.sets]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
