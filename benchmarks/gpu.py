"""Real LLaVA shapes on a GPU, from configs alone: nothing is downloaded.

Builds random-weight models with the published LLaVA-1.5-7B and LLaVA-1.6-Mistral-7B shapes
(training/checkpoint_families.py, shape "7b") straight on the device in bf16 with SDPA
attention, and runs Captioner.caption_batch, the serving path, at batch 1, 8 and 32 with the
answer grammar on and off. Prints captions/s, generated tokens/s and p50/p90 seconds per batch.

Random weights never stop early: unconstrained rows run to --max-new-tokens, constrained ones
to their grammar's token bound (every field at its cap), so tokens/s is the comparable figure.

    python benchmarks/gpu.py                       # on a CUDA machine
    python benchmarks/gpu.py --shape tiny --device cpu --batches 1 2 --rounds 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAMILY_NAMES = {"llava": "LLaVA-1.5-7B", "llava_next": "LLaVA-1.6-Mistral-7B", "llava_onevision": "OneVision-Qwen2-7B"}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def build(family: str, shape: str, device: str):
    """(model, processor) with random weights, built directly on the device (bf16 on CUDA)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from training.checkpoint_families import model_config, processor_for

    config = model_config(family, shape)
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return model.eval(), processor_for(family, shape)


def photos(n: int) -> list:
    from PIL import Image

    sizes = [(640, 480), (480, 640), (512, 512), (1024, 384)]  # what phones send, tiled differently
    return [Image.new("RGB", sizes[i % len(sizes)], (i * 37 % 255, 120, 200)) for i in range(n)]


def run(family: str, shape: str, device: str, batches: list[int], rounds: int, max_new_tokens: int) -> list[dict]:
    import torch

    from snap2caption_service.core.captioner import BatchStats, Captioner, CaptionJob
    from snap2caption_service.core.settings import GenerationSettings

    model, processor = build(family, shape, device)
    rows = []
    for constrained in (False, True):
        captioner = Captioner(
            model, processor, f"random-{family}-{shape}", GenerationSettings(max_new_tokens, constrained=constrained)
        )
        for batch in batches:
            jobs = [CaptionJob(img, "casual", "personal", 8) for img in photos(batch)]
            captioner.caption_batch(jobs[:1])  # warm-up: kernels, allocator
            seconds, tokens = [], 0
            for _ in range(rounds):
                stats = BatchStats()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                captioner.caption_batch(jobs, stats)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - t0)
                tokens += stats.generated_tokens
            rows.append(
                {
                    "model": FAMILY_NAMES[family] if shape == "7b" else f"{family} ({shape})",
                    "batch": batch,
                    "constrained": constrained,
                    "captions_per_s": batch * rounds / sum(seconds),
                    "tokens_per_s": tokens / sum(seconds),
                    "p50": statistics.median(seconds),
                    "p90": pct(seconds, 0.9),
                }
            )
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["llava", "llava_next"], help="default: llava llava_next")
    parser.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per configuration")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="unconstrained answers' budget")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or --shape tiny --device cpu for a smoke run")
        return 2
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# {where}, torch {torch.__version__}, {args.rounds} rounds per row")
    print(
        f"{'model':>22} {'batch':>5} {'constrained':>11} {'captions/s':>10} {'tokens/s':>9} {'p50 s':>7} {'p90 s':>7}"
    )
    for family in args.families:
        for r in run(family, args.shape, args.device, args.batches, args.rounds, args.max_new_tokens):
            print(
                f"{r['model']:>22} {r['batch']:>5} {str(r['constrained']):>11} {r['captions_per_s']:>10.2f} "
                f"{r['tokens_per_s']:>9.0f} {r['p50']:>7.2f} {r['p90']:>7.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
