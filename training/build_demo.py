"""Build (or find in the cache) the embedded demo model.

The cache folder name is a hash of everything that determines the weights: the scene
generator, the architecture and the training recipe. Change any of them and the next
``snap2caption demo-model`` builds a new one; otherwise the cached one is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import synthetic
from .demo_model import ARCHITECTURE_VERSION, DemoArchitecture, build_untrained
from .loop import EncodedDataset, TrainConfig, TrainExample, train

log = logging.getLogger(__name__)

TRAINER_VERSION = "1"
META_FILE = "snap2caption_demo.json"


@dataclass(frozen=True)
class DemoRecipe:
    train_examples: int = 12000
    train_seed: int = 1
    steps: int = 700
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 40
    # The bound is 15 minutes on 2 cores; stop a little before, whatever the machine.
    time_budget_s: float = 13 * 60


def recipe_key(recipe: DemoRecipe, arch: DemoArchitecture) -> str:
    blob = json.dumps({"generator": synthetic.GENERATOR_VERSION, "architecture": ARCHITECTURE_VERSION,
                       "trainer": TRAINER_VERSION, "recipe": asdict(recipe), "arch": asdict(arch)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def demo_model_dir(data_dir: Path, recipe: DemoRecipe | None = None, arch: DemoArchitecture | None = None) -> Path:
    key = recipe_key(recipe or DemoRecipe(), arch or DemoArchitecture())
    return Path(data_dir) / "models" / f"demo-{key}"


def is_built(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def ensure_demo_model(data_dir: Path, progress: bool = True, recipe: DemoRecipe | None = None,
                      arch: DemoArchitecture | None = None) -> Path:
    """The cached demo model's folder, training it first if it is not there yet."""
    recipe, arch = recipe or DemoRecipe(), arch or DemoArchitecture()
    target = demo_model_dir(data_dir, recipe, arch)
    if is_built(target):
        return target
    log.info("building the demo model into %s (first run only; about 10 minutes on 2 CPU cores)", target)
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = build_demo_model(tmp, recipe, arch, progress=progress)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    # Rename last, so a killed build never leaves a folder that looks finished.
    try:
        tmp.rename(target)
    except OSError:
        if not is_built(target):  # another process finished first: theirs is as good as ours
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_demo_model(out_dir: Path, recipe: DemoRecipe, arch: DemoArchitecture, progress: bool = True) -> dict:
    import torch

    t0 = time.perf_counter()
    model, processor = build_untrained(arch, seed=recipe.train_seed)
    examples = [
        TrainExample(synthetic.render_scene(e.scene), e.tone, e.audience, e.target)
        for e in synthetic.make_examples(recipe.train_examples, recipe.train_seed)
    ]
    data = EncodedDataset(processor, examples, progress=progress)
    cfg = TrainConfig(steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                      warmup_steps=recipe.warmup_steps, seed=recipe.train_seed,
                      time_budget_s=recipe.time_budget_s, precision="auto")
    result = train(model, data, cfg, progress=progress)
    if result.stopped_early:
        log.warning("demo model training hit its time budget at step %d of %d", result.steps, recipe.steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {
        "name": "snap2caption-demo",
        "version": f"demo-{recipe_key(recipe, arch)}",
        "recipe": asdict(recipe),
        "architecture": asdict(arch),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.steps,
        "final_loss": round(result.final_loss, 4),
        "samples_per_s": round(result.samples_per_s, 2),
        "train_wall_s": round(result.wall_s, 1),
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "stopped_early": result.stopped_early,
        "torch_threads": torch.get_num_threads(),
    }
