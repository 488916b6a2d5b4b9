"""Constrained decoding and lean scoring, measured side by side in one run.

1. Throughput: Captioner.caption_batch on the demo model with the answer grammar on and off, at
   raw batch 1 and 32, in alternating rounds (on, off, on, off, ...) so both see the same machine
   state. The issue's target: constraints cost at most 10% of throughput.
2. Peak memory of scoring one batch (issue 14 section 4): the old way (generate with
   output_logits=True, then stack every step's logits and log-softmax them) against the
   Captioner's running chosen-token log-probabilities, on a tiny random-weight OneVision model
   with Qwen2's 152,064-token vocabulary. Each variant runs in its own process; the figure is
   its peak RSS above what it held after loading and a warm-up on the same batch (2 new tokens),
   so the prefill's own peak is in both baselines and the difference is what scoring holds.

    python benchmarks/constrained.py [--rounds 5] [--memory-batch 32] [--memory-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QWEN2_VOCAB = 152064


def demo_jobs(n: int, hashtags: int):
    from snap2caption_service.core.captioner import CaptionJob
    from training import synthetic

    examples = synthetic.make_examples(n, 4242)
    return [CaptionJob(synthetic.render_scene(e.scene), e.tone, e.audience, hashtags, 1) for e in examples]


def throughput(rounds: int, batches: list[int], hashtags: int) -> list[dict]:
    from snap2caption_service.core.captioner import BatchStats, Captioner
    from snap2caption_service.core.settings import GenerationSettings, Settings
    from training.build_demo import ensure_demo_model

    folder = ensure_demo_model(Settings().data_dir)
    on = Captioner.load(str(folder), device="cpu", generation=GenerationSettings(constrained=True))
    # The same weights, unconstrained: only the generation settings differ.
    off = Captioner(on.model, on.processor, on.version, GenerationSettings(constrained=False))
    rows = []
    for batch in batches:
        jobs = demo_jobs(batch, hashtags)
        on.caption_batch(jobs[:1])  # warm-up (first-call allocations)
        off.caption_batch(jobs[:1])
        seconds = {"on": [], "off": []}
        tokens = {"on": 0, "off": 0}
        for _ in range(rounds):
            for name, captioner in (("on", on), ("off", off)):
                stats = BatchStats()
                t0 = time.perf_counter()
                captioner.caption_batch(jobs, stats)
                seconds[name].append(time.perf_counter() - t0)
                tokens[name] += stats.generated_tokens
        for name in ("on", "off"):
            rows.append(
                {
                    "batch": batch,
                    "constrained": name == "on",
                    "captions_per_s": batch * rounds / sum(seconds[name]),
                    "tokens_per_s": tokens[name] / sum(seconds[name]),
                    "p50_s": statistics.median(seconds[name]),
                }
            )
    return rows


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def memory_probe(variant: str, batch: int, new_tokens: int) -> dict:
    """Runs in a child process: one batch scored ``variant``'s way; peak RSS above the baseline."""
    import torch
    from PIL import Image

    from snap2caption_service.core.captioner import Captioner, CaptionJob
    from snap2caption_service.core.settings import GenerationSettings
    from training.checkpoint_families import build_random

    torch.manual_seed(0)
    model, processor = build_random("llava_onevision", vocab_size=QWEN2_VOCAB)
    captioner = Captioner(model, processor, "memory-probe", GenerationSettings(new_tokens, constrained=False))
    jobs = [CaptionJob(Image.new("RGB", (64, 48), (i * 7 % 255, 90, 160))) for i in range(batch)]
    if variant == "stacked":
        prompts = [captioner.chat.prompt(j.tone, j.audience) for j in jobs]
        inputs = processor(text=prompts, images=[j.image for j in jobs], return_tensors="pt", padding=True)
        kwargs = dict(max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True, output_logits=True)
        kwargs["pad_token_id"] = processor.tokenizer.pad_token_id
        with torch.inference_mode():
            model.generate(**inputs, **{**kwargs, "max_new_tokens": 2})  # warm-up
            baseline = _peak_rss_mb()
            out = model.generate(**inputs, **kwargs)
            new = out.sequences[:, inputs["input_ids"].shape[1] :]
            logits = torch.stack(out.logits, dim=1).float()  # what the Captioner did before
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
            steps = int(logprobs.shape[1])
    else:
        # Warm-up as above: the whole batch, 2 new tokens (the prefill's own peak is in the baseline).
        Captioner(model, processor, "warm-up", GenerationSettings(2, constrained=False)).caption_batch(jobs)
        baseline = _peak_rss_mb()
        captioner.caption_batch(jobs)
        steps = new_tokens
    return {"variant": variant, "batch": batch, "steps": steps, "peak_above_baseline_mb": _peak_rss_mb() - baseline}


def memory(batch: int, new_tokens: int) -> list[dict]:
    rows = []
    for variant in ("stacked", "running"):
        out = subprocess.run(
            [sys.executable, __file__, "--probe", variant, "--memory-batch", str(batch)]
            + ["--memory-tokens", str(new_tokens)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per batch size (default 5)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="raw batch sizes (default 1 32)")
    parser.add_argument(
        "--hashtags",
        type=int,
        default=10,
        help="hashtags asked per caption (default 10, what the demo model writes unasked, so both runs write the "
        "same answers and the difference is the grammar's cost; at 8 the grammar also changes what it writes)",
    )
    parser.add_argument("--memory-batch", type=int, default=32)
    parser.add_argument("--memory-tokens", type=int, default=128)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--probe", choices=["stacked", "running"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(memory_probe(args.probe, args.memory_batch, args.memory_tokens)))
        return 0

    import torch

    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    if not args.skip_throughput:
        rows = throughput(args.rounds, args.batches, args.hashtags)
        print(
            f"\n## Constrained vs unconstrained generation (demo model, raw caption_batch, {args.hashtags} hashtags, "
            f"{args.rounds} alternating rounds)"
        )
        print(f"{'batch':>5} {'constrained':>11} {'captions/s':>11} {'tokens/s':>9} {'p50 s':>7}")
        for r in rows:
            print(
                f"{r['batch']:>5} {str(r['constrained']):>11} {r['captions_per_s']:>11.2f} "
                f"{r['tokens_per_s']:>9.0f} {r['p50_s']:>7.3f}"
            )
        for batch in args.batches:
            on, off = (next(r for r in rows if r["batch"] == batch and r["constrained"] is c) for c in (True, False))
            print(
                f"batch {batch}: constrained/unconstrained throughput = {on['captions_per_s'] / off['captions_per_s']:.3f}"
            )

    rows = memory(args.memory_batch, args.memory_tokens)
    print(f"\n## Peak memory of scoring one batch (tiny OneVision, vocabulary {QWEN2_VOCAB:,})")
    print(f"{'scoring':>24} {'batch':>5} {'steps':>5} {'peak above baseline MB':>23}")
    names = {"stacked": "stacked logits (before)", "running": "running log-probs (now)"}
    for r in rows:
        print(f"{names[r['variant']]:>24} {r['batch']:>5} {r['steps']:>5} {r['peak_above_baseline_mb']:>23.0f}")
    before, after = (r["peak_above_baseline_mb"] for r in rows)
    print(f"before/after = {before / max(after, 1.0):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
