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
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from snap2caption_service.core.scene_heads import TokenSelection
from snap2caption_service.core.versions import DEMO_META_FILE, demo_version
from training import synthetic
from training.demo_model import ARCHITECTURE_VERSION, DEMO_ARCHITECTURE, DemoArchitecture, build_untrained
from training.loop import EncodedDataset, TrainConfig, TrainExample, train

log = logging.getLogger(__name__)

# 11: the objects head reads the focused tokens too, and colour and shape train on them alone;
# 10: the colour and shape heads train on the plain mean of tokens too (the objects head's confidence);
# 9: stage 1 learns where the main object lies (a main head over each token); colour and shape
# read the tokens weighted by it (scene_heads.focused_patches);
# 8: stage 2 replays the frozen tower's stored outputs, batches grouped by length;
# 7: deterministic kernels (the same recipe builds the same weights on one CPU kind);
# 6: stage 2 compiled; 5: eager attention in stage 1; 4: scene heads saved (confidence);
# 3: prompts carry platform and hashtag count
TRAINER_VERSION = "11"
META_FILE = DEMO_META_FILE


@dataclass(frozen=True)
class DemoRecipe:
    train_seed: int = 1
    # Which scenes both stages draw (synthetic.MIXES): "world" varies what a person drawing or
    # photographing shapes would vary; "flat" is the mix of generator versions up to 6.
    mix: str = "world"
    # Stage 1: the vision tower learns the scenes (see vision_pretrain.py).
    vision_scenes: int = 24000
    # 1,500 steps of the hybrid tower read 96.7% / 85.7% of the held-out sets' colour and shape
    # (benchmarks/vision_towers.py, session 16) at 0.48 s a step on 2 CPU cores.
    vision_steps: int = 1500
    vision_batch_size: int = 64
    vision_lr: float = 2e-3
    empty_scene_share: float = 0.08
    # Stage 2: projector + decoder learn to caption, the tower frozen (as in LLaVA's stage 1).
    train_examples: int = 12000
    steps: int = 1100
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 30
    compile_decoder: bool = True  # see TrainConfig.compile; the short test builds turn it off
    group_by_length: bool = True  # see TrainConfig.group_by_length
    # A safety net on a slow or busy machine, not the schedule: the recipe is step-based so
    # the same recipe gives the same model (on one CPU kind: deterministic_kernels). On 2 idle
    # cores a build takes about 28 minutes.
    time_budget_s: float = 60 * 60


# Architecture fields added after models were built, with the default that keeps the old
# behaviour: keyed only when they differ from it, so adding one leaves built models' keys alone.
_ARCH_FIELDS_ADDED_LATER = {
    "vision_kind": "clip",
    "vision_conv_depths": (2, 2, 1),
    "vision_conv_widths": (128, 192, 256),
}


def recipe_key(recipe: DemoRecipe, arch: DemoArchitecture) -> str:
    arch_fields = asdict(arch)
    for name, default in _ARCH_FIELDS_ADDED_LATER.items():
        if arch_fields[name] == default:
            del arch_fields[name]
    blob = json.dumps(
        {
            "generator": synthetic.GENERATOR_VERSION,
            "architecture": ARCHITECTURE_VERSION,
            "trainer": TRAINER_VERSION,
            "recipe": asdict(recipe),
            "arch": arch_fields,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def demo_model_dir(data_dir: Path, recipe: DemoRecipe | None = None, arch: DemoArchitecture | None = None) -> Path:
    key = recipe_key(recipe or DemoRecipe(), arch or DEMO_ARCHITECTURE)
    return Path(data_dir) / "models" / demo_version(key)


def is_built(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def ensure_demo_model(
    data_dir: Path, progress: bool = True, recipe: DemoRecipe | None = None, arch: DemoArchitecture | None = None
) -> Path:
    """The cached demo model's folder, training it first if it is not there yet."""
    import fcntl

    recipe, arch = recipe or DemoRecipe(), arch or DEMO_ARCHITECTURE
    target = demo_model_dir(data_dir, recipe, arch)
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per recipe: a second caller (a test, the service) waits for the
    # first instead of training the same model again beside it.
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(target):
            return target
        return _build_into(target, recipe, arch, progress)


def _build_into(target: Path, recipe: DemoRecipe, arch: DemoArchitecture, progress: bool) -> Path:
    log.info("building the demo model into %s (first run only; 15-35 minutes on 2 CPU cores)", target)
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
    if recipe.mix not in synthetic.MIXES:
        raise ValueError(f"unknown scene mix {recipe.mix!r}; known: {', '.join(synthetic.MIXES)}")
    with synthetic.scene_mix(synthetic.MIXES[recipe.mix]), deterministic_kernels():
        return _build(out_dir, recipe, arch, progress)


@contextmanager
def deterministic_kernels():
    """torch's deterministic algorithms inside the block, as they were after it.

    torch.compile's CPU kernels for stage 2 summed in a different order from run to run: two
    builds of one recipe on one CPU kind came out with decoders 2 points apart on the held-out
    vector set, although stage 1 (eager) was identical to four digits. Under deterministic
    algorithms the compiled decoder trains to the same weights every time, at no measurable cost
    (100 decoder steps: 94 s against 99 s on 2 CPU cores). warn_only: an op without a
    deterministic version warns rather than stopping the build.
    """
    import torch

    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _build(out_dir: Path, recipe: DemoRecipe, arch: DemoArchitecture, progress: bool) -> dict:
    import random

    import torch

    from training.frozen_tower import tower_stored_if_possible
    from training.vision_pretrain import (
        SceneLabelDataset,
        held_out_accuracy,
        make_pretrainer,
        save_heads,
        vision_tower_of,
    )

    t0 = time.perf_counter()
    model, processor = build_untrained(arch, seed=recipe.train_seed)

    def vision_scenes(rng: random.Random, n: int) -> list:
        # Some pictures hold no known object, so the heads learn to say so (the served confidence).
        return [
            synthetic.sample_empty_scene(rng)
            if rng.random() < recipe.empty_scene_share
            else synthetic.sample_scene(rng)
            for _ in range(n)
        ]

    grid = arch.image_size // arch.patch_size  # the tower's tokens per side
    scenes = SceneLabelDataset(
        processor.image_processor,
        vision_scenes(random.Random(recipe.train_seed), recipe.vision_scenes),
        progress,
        grid=grid,
    )
    held = SceneLabelDataset(
        processor.image_processor,
        vision_scenes(random.Random(recipe.train_seed + 10_000), 512),
        progress=False,
        grid=grid,
    )
    tower = vision_tower_of(model)
    # torch's CPU flash-attention backward is slow on short sequences: with 65 tokens a tower
    # step took 0.148 s under sdpa and 0.086 s under eager attention (same maths). The decoder
    # stage keeps sdpa, which is faster there (0.64 s against 0.66 s a step).
    attention_tower = arch.vision_kind == "clip"  # FocalNet has no attention; BiT refuses the setting
    if attention_tower:
        model.set_attn_implementation("eager")
    pretrainer = make_pretrainer(tower, arch.vision_hidden, TokenSelection.of(model.config))
    vision_cfg = TrainConfig(
        steps=recipe.vision_steps,
        batch_size=recipe.vision_batch_size,
        lr=recipe.vision_lr,
        warmup_steps=30,
        seed=recipe.train_seed,
        time_budget_s=recipe.time_budget_s / 2,
        precision="auto",
    )
    vision_result = train(pretrainer, scenes, vision_cfg, progress=progress)
    vision_acc = held_out_accuracy(pretrainer, held)
    log.info(
        "vision tower: held-out accuracy %s after %d steps (%.0fs)",
        vision_acc,
        vision_result.steps,
        vision_result.wall_s,
    )
    save_heads(pretrainer, out_dir)
    del pretrainer, scenes
    if attention_tower:
        model.set_attn_implementation("sdpa")
    for p in tower.parameters():
        p.requires_grad = False

    examples = [
        TrainExample(synthetic.render_scene(e.scene), e.tone, e.audience, e.target, e.num_hashtags, e.platform)
        for e in synthetic.make_examples(recipe.train_examples, recipe.train_seed)
    ]
    data = EncodedDataset(processor, examples, progress=progress)
    cfg = TrainConfig(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        warmup_steps=recipe.warmup_steps,
        seed=recipe.train_seed,
        time_budget_s=recipe.time_budget_s - vision_result.wall_s,
        precision="auto",
        compile=recipe.compile_decoder,
        group_by_length=recipe.group_by_length,
    )
    # The tower is frozen from here on: its output for each picture is computed once, not at
    # each of the ~3 epochs' steps (benchmarks/decoder_stage.py), where that is exact.
    with tower_stored_if_possible(model, data, progress):
        result = train(model, data, cfg, progress=progress)
    for p in tower.parameters():
        p.requires_grad = True
    if result.stopped_early:
        log.warning("demo model training hit its time budget at step %d of %d", result.steps, recipe.steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {
        "name": "snap2caption-demo",
        "version": demo_version(recipe_key(recipe, arch)),
        "recipe": asdict(recipe),
        "architecture": asdict(arch),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision_steps": vision_result.steps,
        "vision_held_out_accuracy": {k: round(v, 4) for k, v in vision_acc.items()},
        "vision_train_wall_s": round(vision_result.wall_s, 1),
        "steps": result.steps,
        "final_loss": round(result.final_loss, 4),
        "samples_per_s": round(result.samples_per_s, 2),
        "train_wall_s": round(vision_result.wall_s + result.wall_s, 1),
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "stopped_early": result.stopped_early or vision_result.stopped_early,
        "torch_threads": torch.get_num_threads(),
        # The same recipe builds in 853 s on one 2-core VM and 1665 s on an AMD EPYC without AMX:
        # a build time means little without the CPU it ran on.
        "cpu": cpu_name(),
    }


def cpu_name() -> str:
    """The CPU's model name as Linux reports it ("AMD EPYC", "Intel(R) Xeon(R) ..."), else the
    platform's guess."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
