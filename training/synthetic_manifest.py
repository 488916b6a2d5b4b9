"""Write synthetic demo scenes as a JSONL manifest (+ PNGs), optionally "corrected".

    python -m training.synthetic_manifest OUT_DIR [--n 500] [--seed 77] [--caption-prefix "Keep it simple: "]

The prefix plays a creator's consistent edit: a fine-tune on this manifest should learn to
write it. Used by the example config training/configs/demo-lora.yaml and by the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from snap2caption_service.core.prompting import split_target
from training import synthetic
from training.datasets import CaptionRecord, write_manifest


def scene_records(n: int, seed: int, caption_prefix: str = "", image_dir: Path | None = None) -> list[CaptionRecord]:
    records = []
    for i, ex in enumerate(synthetic.make_examples(n, seed)):
        path = image_dir / f"{seed}-{i}.png"
        synthetic.render_scene(ex.scene).save(path)
        caption, hashtags, alt_text = split_target(ex.target)
        records.append(
            CaptionRecord(
                image=f"{image_dir.name}/{path.name}",
                image_id=f"{seed}-{i}",
                caption=caption_prefix + caption,
                hashtags=hashtags,
                alt_text=alt_text,
                tone=ex.tone,
                audience=ex.audience,
            )
        )
    return records


def scene_captions(n: int, seed: int) -> list[str]:
    """The captions of ``scene_records(n, seed)`` without rendering any image."""
    return [split_target(ex.target)[0] for ex in synthetic.make_examples(n, seed)]


def cached_records(n: int, seed: int) -> list[CaptionRecord]:
    """``n`` scenes rendered once under ``<data_dir>/synthetic/`` (a config's synthetic source)."""
    from snap2caption_service.core.settings import get_settings
    from training.datasets import read_manifest

    out_dir = get_settings().data_dir / "synthetic" / f"scenes-{synthetic.GENERATOR_VERSION}-{seed}-{n}"
    manifest = out_dir / "records.jsonl"
    if not manifest.is_file():
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        write(tmp, n, seed)
        try:
            os.replace(tmp, out_dir)  # whole folder or nothing: a killed render is redone
        except OSError:
            if not manifest.is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process rendered it first
    return read_manifest(manifest)


def write(out_dir: Path, n: int, seed: int, caption_prefix: str = "") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    records = scene_records(n, seed, caption_prefix, out_dir / "images")
    write_manifest(records, out_dir / "records.jsonl")
    return out_dir / "records.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.synthetic_manifest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=77, help="differs from the demo model's training seed (1)")
    p.add_argument("--caption-prefix", default="Keep it simple: ")
    args = p.parse_args(argv)
    print(write(args.out_dir.expanduser(), args.n, args.seed, args.caption_prefix))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
