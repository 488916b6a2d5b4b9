"""How fast the demo build's stage 2 (projector + decoder, tower frozen) trains, each way.

Trains the untrained demo architecture on the same examples, side by side in one run:

- ``tower each step``: the frozen tower runs on every batch (the build before trainer 8);
- ``stored outputs``: its outputs computed once per picture (training/frozen_tower.py);
- ``+ grouped by length``: and batches of examples of about the same length
  (TrainConfig.group_by_length), so less padding.

Prints samples per second after the first ``--warmup`` steps (torch.compile's compiling and the
first shapes fall there), the padding share of each way's batches, and each way's speed against
the first. Also checks that stored outputs give the same loss as the tower itself on one batch.

    python benchmarks/decoder_stage.py [--examples 1024] [--steps 60] [--warmup 20] [--no-compile]

About 6 minutes on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WAYS = ("tower each step", "stored outputs", "+ grouped by length")


def examples(n: int):
    from training import synthetic
    from training.build_demo import DemoRecipe
    from training.loop import TrainExample

    with synthetic.scene_mix(synthetic.MIXES[DemoRecipe().mix]):
        return [
            TrainExample(synthetic.render_scene(e.scene), e.tone, e.audience, e.target, e.num_hashtags, e.platform)
            for e in synthetic.make_examples(n, 1)
        ]


def padding_share(data, batch_size: int, steps: int, grouped: bool) -> float:
    """The share of batch positions that are padding, over the batches ``train`` would draw."""
    import random

    from training.loop import batch_order

    lengths = [len(ids) for ids in data.input_ids]
    batches = batch_order(len(data), batch_size, random.Random(1), lengths if grouped else None)
    real = padded = 0
    for _ in range(steps):
        idx = next(batches)
        real += sum(lengths[i] for i in idx)
        padded += max(lengths[i] for i in idx) * len(idx)
    return 1 - real / padded


def run(way: str, args, ex) -> dict:
    import torch

    from training.build_demo import DemoRecipe
    from training.demo_model import DEMO_ARCHITECTURE, build_untrained
    from training.frozen_tower import precompute_tower_outputs, tower_replayed
    from training.loop import EncodedDataset, TrainConfig, train
    from training.vision_pretrain import vision_tower_of

    recipe = DemoRecipe()
    model, processor = build_untrained(DEMO_ARCHITECTURE, seed=1)
    for p in vision_tower_of(model).parameters():
        p.requires_grad = False
    data = EncodedDataset(processor, ex, progress=False)
    grouped = way == WAYS[2]
    times: dict[int, float] = {}
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        warmup_steps=recipe.warmup_steps,
        seed=1,
        log_every=1,
        compile=not args.no_compile,
        group_by_length=grouped,
    )

    def on_log(step: int, _stats: dict) -> None:
        times[step] = time.perf_counter()

    if way == WAYS[0]:
        result = train(model, data, cfg, on_log=on_log, progress=False)
        exact = None
    else:
        t0 = time.perf_counter()
        with torch.no_grad():
            reference = model(**data.batch(range(8))).loss.item()
        stored = precompute_tower_outputs(model, data, progress=False)
        precompute_s = time.perf_counter() - t0
        with tower_replayed(model, stored):
            with torch.no_grad():
                replayed = model(**data.batch(range(8))).loss.item()
            result = train(model, data, cfg, on_log=on_log, progress=False)
        exact = abs(reference - replayed)
    timed = args.steps - args.warmup
    return {
        "way": way,
        "samples_per_s": timed * recipe.batch_size / (times[args.steps] - times[args.warmup]),
        "padding": padding_share(data, recipe.batch_size, args.steps, grouped),
        "final_loss": result.final_loss,
        "loss_gap": exact,
        "precompute_s_per_1000": None if exact is None else precompute_s / len(ex) * 1000,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    parser.add_argument("--no-compile", action="store_true", help="eager decoder (the build compiles it)")
    args = parser.parse_args(argv)
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must be between 0 and --steps")

    from training.build_demo import cpu_name

    ex = examples(args.examples)
    rows = [run(way, args, ex) for way in WAYS]
    base = rows[0]["samples_per_s"]
    print(
        f"\nstage 2 of the demo build: {args.examples} examples, {args.steps} steps "
        f"({args.warmup} untimed), {'eager' if args.no_compile else 'compiled'}, {cpu_name()}, "
        f"{rows[0]['threads']} threads\n"
    )
    print("| way | samples/s | padding | vs tower each step | loss, stored vs tower (8 examples) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        gap = "" if r["loss_gap"] is None else f"{r['loss_gap']:.1e}"
        print(
            f"| {r['way']} | {r['samples_per_s']:.1f} | {r['padding']:.1%} | x{r['samples_per_s'] / base:.2f} | {gap} |"
        )
    print(f"\ncomputing the stored outputs: {rows[1]['precompute_s_per_1000']:.1f} s per 1,000 pictures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
