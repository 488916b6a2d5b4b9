"""Which vision tower reads shape on pictures its generator never drew (issue 15).

Trains each tower kind the demo architecture offers (``DemoArchitecture.vision_kind``: a CLIP ViT,
LLaVA-1.5's kind; FocalNet, a convolutional tower transformers' LLaVA loads too; and the hybrid,
DPT-Hybrid's BiT ResNet under a ViT layer, at 128 px) as the demo build's stage 1 does (training/vision_pretrain.py: scene heads over the pooled image tokens), on
the same scenes in one run, then reads the heads on the independently drawn 300-scene held-out
sets (training/heldout_scenes.py). Only stage 1: the captions follow the heads closely (the
shipped model's heads get 58.0% colour+shape on the vector set, its captions 57.3%).

    python benchmarks/vision_towers.py [--kinds clip focalnet hybrid] [--steps 1500] [--scenes 24000]
                                       [--mix world|flat] [--json-out FILE]

About 6-12 minutes per tower at the defaults on 2 CPU cores, plus 1-2 minutes to draw the scenes
at each picture size (64 px for CLIP and FocalNet, 128 px for the hybrid; the same scenes).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training import synthetic  # noqa: E402
from training.demo_model import HYBRID_ARCHITECTURE, VISION_KINDS, DemoArchitecture, build_untrained  # noqa: E402


def draw_scenes(processor, n: int, seed: int, mix):
    from training.vision_pretrain import SceneLabelDataset

    rng = random.Random(seed)
    with synthetic.scene_mix(mix):
        scenes = [
            synthetic.sample_empty_scene(rng) if rng.random() < 0.08 else synthetic.sample_scene(rng) for _ in range(n)
        ]
        return SceneLabelDataset(processor.image_processor, scenes)


def read_heldout(pretrainer, processor, set_name: str) -> dict:
    from snap2caption_service.core.scene_heads import SceneHeads
    from training.heldout_scenes import heldout_set
    from training.vision_pretrain import SHAPES, head_labels, head_weights

    scenes = heldout_set(set_name, 300)
    pixels = processor.image_processor(images=[s.image for s in scenes], return_tensors="pt")["pixel_values"]
    heads = SceneHeads(head_weights(pretrainer), head_labels())
    pretrainer.eval()
    # The picture alone, as this benchmark has always compared towers (the service reads more views).
    readings = heads.read(pretrainer.tower, pixels, pretrainer.selection, views="picture", zoom=None)
    pretrainer.train()
    colors, shapes = [r.color for r in readings], [r.shape for r in readings]
    color_ok = [c == s.color for c, s in zip(colors, scenes)]
    shape_ok = [p == s.shape for p, s in zip(shapes, scenes)]
    per_shape = {
        shape: sum(ok for ok, s in zip(shape_ok, scenes) if s.shape == shape) / sum(s.shape == shape for s in scenes)
        for shape in SHAPES
    }
    n = len(scenes)
    return {
        "color": sum(color_ok) / n,
        "shape": sum(shape_ok) / n,
        "both": sum(c and s for c, s in zip(color_ok, shape_ok)) / n,
        "per_shape": per_shape,
    }


def tower_architecture(kind: str, args) -> DemoArchitecture:
    if kind == "hybrid":
        return HYBRID_ARCHITECTURE
    arch = replace(DemoArchitecture(), vision_kind=kind)
    return replace(arch, vision_layers=args.focalnet_layers) if kind == "focalnet" else arch


def run_tower(kind: str, args, scenes_for) -> dict:
    import torch

    from snap2caption_service.core.scene_heads import TokenSelection
    from training.loop import TrainConfig, train
    from training.vision_pretrain import held_out_accuracy, make_pretrainer, vision_tower_of

    arch = tower_architecture(kind, args)
    model, processor = build_untrained(arch, seed=1)
    train_data, own_data = scenes_for(processor)
    tower = vision_tower_of(model)
    if kind == "clip":
        model.set_attn_implementation("eager")  # as the demo build's stage 1 (build_demo.py)
    pretrainer = make_pretrainer(tower, arch.vision_hidden, TokenSelection.of(model.config))
    cfg = TrainConfig(
        steps=args.steps, batch_size=64, lr=args.lr, warmup_steps=30, seed=1, time_budget_s=4 * 3600, precision="auto"
    )
    result = train(pretrainer, train_data, cfg, progress=not args.quiet)
    own = held_out_accuracy(pretrainer, own_data)
    return {
        "kind": kind,
        "parameters": sum(p.numel() for p in tower.parameters()),
        "steps": result.steps,
        "train_s": round(result.wall_s, 1),
        "s_per_step": round(result.wall_s / max(result.steps, 1), 3),
        "own_shape": own["shape"],
        "own_color": own["color"],
        **{name: read_heldout(pretrainer, processor, name) for name in ("vector", "photo")},
        "threads": torch.get_num_threads(),
    }


def table(rows: list[dict]) -> str:
    from training.vision_pretrain import SHAPES

    head = (
        "| tower | params | s/step | own unseen: shape | vector: colour / shape / both | photo: colour / shape / both | "
        + " / ".join(SHAPES)
        + " (vector) |\n|---|---:|---:|---:|---|---|---|"
    )
    lines = [head]
    for r in rows:
        v, p = r["vector"], r["photo"]
        lines.append(
            f"| {r['kind']} | {r['parameters']:,} | {r['s_per_step']:.3f} | {r['own_shape']:.1%} | "
            f"{v['color']:.1%} / {v['shape']:.1%} / {v['both']:.1%} | {p['color']:.1%} / {p['shape']:.1%} / {p['both']:.1%} | "
            + " / ".join(f"{v['per_shape'][s]:.0%}" for s in SHAPES)
            + " |"
        )
    if len(rows) > 1:
        base = rows[0]
        for r in rows[1:]:
            lines.append(
                f"\n{r['kind']} vs {base['kind']}: vector shape {r['vector']['shape'] - base['vector']['shape']:+.1%}, "
                f"photo shape {r['photo']['shape'] - base['photo']['shape']:+.1%}, "
                f"time per step x{r['s_per_step'] / base['s_per_step']:.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", choices=VISION_KINDS, default=list(VISION_KINDS))
    parser.add_argument("--steps", type=int, default=1500, help="training steps per tower (batch 64)")
    parser.add_argument("--scenes", type=int, default=24000, help="training scenes, drawn once for all towers")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--focalnet-layers", type=int, default=2, help="FocalNet blocks per stage (2: about the CLIP tower's cost)"
    )
    parser.add_argument(
        "--mix", choices=sorted(synthetic.MIXES), default="world", help="scene mix (training/synthetic.py)"
    )
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    drawn: dict[int, tuple] = {}

    def scenes_for(processor):
        """The same scenes for every tower, encoded once per picture size."""
        size = processor.image_processor.size["height"]
        if size not in drawn:
            t0 = time.perf_counter()
            drawn[size] = (
                draw_scenes(processor, args.scenes, seed=1, mix=synthetic.MIXES[args.mix]),
                draw_scenes(processor, 512, seed=10_001, mix=synthetic.MIXES[args.mix]),
            )
            print(f"drew {args.scenes} + 512 {args.mix}-mix scenes at {size} px in {time.perf_counter() - t0:.0f} s")
        return drawn[size]

    rows = []
    for kind in args.kinds:
        rows.append(run_tower(kind, args, scenes_for))
        print(json.dumps(rows[-1]), flush=True)
    from training.build_demo import cpu_name

    print(
        f"\n{args.steps} steps per tower, {args.scenes} {args.mix}-mix scenes, {cpu_name()}, {rows[0]['threads']} threads\n"
    )
    print(table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
