"""LoRA fine-tuning of a LLaVA model through the one training loop (training/loop.py).

``finetune(config)`` reads the config's data, holds out an eval split by image, wraps the
base model (or the adapter it resumes from) with peft, trains, saves the adapter with a
small ``snap2caption_adapter.json`` naming its base, and evaluates it. Under torchrun every
process trains; only rank 0 saves, evaluates and logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from snap2caption_service.core.captioner import base_identity, check_adapter_base, load_checkpoint, safetensors_adapter
from snap2caption_service.core.model_loading import resolve_base
from snap2caption_service.core.settings import get_settings
from snap2caption_service.core.versions import ADAPTER_META
from training.build_demo import ensure_demo_model
from training.config import TrainingConfig
from training.datasets import CaptionRecord, load_image, read_source
from training.loop import Distributed, EncodedDataset, TrainConfig, TrainExample, distributed_from_env, train

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    adapter_dir: Path | None  # None on ranks other than 0
    base_ref: str
    steps: int
    samples_per_s: float
    train_wall_s: float
    final_loss: float
    train_records: int
    eval_records: list[CaptionRecord] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def holdout_split(
    records: list[CaptionRecord], fraction: float, seed: int = 0
) -> tuple[list[CaptionRecord], list[CaptionRecord]]:
    """Deterministic split by image: a photo is either trained on or evaluated on, never both."""
    if fraction <= 0:
        return records, []

    def bucket(r: CaptionRecord) -> float:
        h = hashlib.sha256(f"{seed}:{r.image_id or r.image}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    train_part = [r for r in records if bucket(r) >= fraction]
    eval_part = [r for r in records if bucket(r) < fraction]
    return train_part, eval_part


def read_records(cfg: TrainingConfig) -> tuple[list[CaptionRecord], list[CaptionRecord]]:
    records = [r for src in cfg.data for r in read_source(src.model_dump())]
    if not records:
        raise ValueError(f"config {cfg.name!r}: no training records (data: {[s.path for s in cfg.data]})")
    if cfg.eval.data:
        eval_records = [r for src in cfg.eval.data for r in read_source(src.model_dump())]
        return records, eval_records[: cfg.eval.max_records]
    train_part, eval_part = holdout_split(records, cfg.eval.holdout_fraction, cfg.seed)
    return train_part, eval_part[: cfg.eval.max_records]


# LoRA targets per language model (text_config.model_type): the attention projections, which
# every family names alike; vLLM serves LoRA on exactly these (and the MLP's gate/up/down_proj,
# which a config may add).
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def default_lora_targets(model) -> list[str]:
    text_type = model.config.text_config.model_type
    if text_type not in LORA_TARGETS:
        raise ValueError(
            f"no default LoRA targets for a {text_type!r} language model (known: {', '.join(LORA_TARGETS)}): "
            "list lora.target_modules in the training config"
        )
    return LORA_TARGETS[text_type]


def lora_target_pattern(modules: list[str], layers: list[int] | None = None) -> str:
    """LoRA on the language model's layers only: the vision towers (CLIP, SigLIP) use the same
    projection names (q_proj, k_proj, v_proj) and adapting them would retrain the eyes, not the words.

    ``layers`` limits it further to those decoder layers: layers below them then read the
    image tokens exactly as before, which protects what the model sees from a style fine-tune.
    """
    where = r".*\.layers\.(" + "|".join(str(i) for i in layers) + r")\..*" if layers else ".*"
    return r"^(?!.*vision_tower)(?=.*language_model\.)" + where + r"\.(" + "|".join(modules) + r")$"


def train_dtype(cfg: TrainingConfig, device: str):
    """Master weights in fp32 (autocast does the fast math) on CPU; bf16 base weights on GPU
    keep a 7B model inside one card's memory, the LoRA weights stay fp32 either way."""
    import torch

    return torch.bfloat16 if device.startswith("cuda") and cfg.precision != "fp32" else torch.float32


def load_trainable(base_ref: str, cfg: TrainingConfig, resume_adapter: str | None, device: str):
    """(peft model, processor, base identity): a supported checkpoint loaded as serving loads it
    (core/captioner.load_checkpoint: its family's auto class, safetensors only, every weight
    accounted for), with LoRA on the language model and everything else frozen."""
    if resume_adapter:
        safetensors_adapter(resume_adapter)  # a pickle-only adapter fails before the base loads
    model, processor = load_checkpoint(base_ref, train_dtype(cfg, device))
    identity = base_identity(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return attach_lora(model, cfg, resume_adapter, base_ref, identity, device), processor, identity


def attach_lora(model, cfg: TrainingConfig, resume_adapter: str | None, base_ref: str, identity: dict, device: str):
    """``model`` wrapped with a trainable LoRA: ``resume_adapter``'s (checked against the base it
    was trained on) or a fresh one from ``cfg.lora``. The base weights stay frozen, so
    ``unload()`` on the result gives back the same base for the next adapter."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if resume_adapter:
        resume_dir = safetensors_adapter(resume_adapter)
        check_adapter_base(resume_dir, base_ref, identity)
        model = PeftModel.from_pretrained(model, resume_dir, is_trainable=True)
        log.info("resuming from adapter %s", resume_adapter)
    else:
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=lora_target_pattern(cfg.lora.target_modules or default_lora_targets(model), cfg.lora.layers),
            modules_to_save=cfg.lora.modules_to_save or None,
            bias="none",
        )
        model = get_peft_model(model, lora)
    for p in model.parameters():  # peft leaves trainable weights in the base dtype
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def examples_of(records: list[CaptionRecord]) -> list[TrainExample]:
    return [
        TrainExample(
            load_image(r.image),
            r.tone,
            r.audience,
            r.target(),
            learn_hashtags=not r.hashtags_from_ranker,
            shown_caption=r.shown_caption,
        )
        for r in records
    ]


def finetune(
    cfg: TrainingConfig,
    output_dir: Path,
    resume_adapter: str | None = None,
    train_records: list[CaptionRecord] | None = None,
    eval_records: list[CaptionRecord] | None = None,
    on_log=None,
    progress: bool = True,
    device: str = "auto",
    dist_info: Distributed | None = None,
) -> FinetuneResult:
    """Train an adapter; records default to the config's data (split into train and eval)."""
    import torch

    from snap2caption_service.core.captioner import resolve_device

    ddp = dist_info or distributed_from_env()
    if train_records is None:
        train_records, eval_records = read_records(cfg)
    if not train_records:
        raise ValueError("no training records left after holding out the eval split")
    device = resolve_device(device)
    if ddp.world_size > 1 and device == "cuda":
        import os

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    base_ref = resolve_base(cfg.base_model, get_settings().data_dir, ensure_demo_model)
    torch.manual_seed(cfg.seed)
    model, processor, identity = load_trainable(base_ref, cfg, resume_adapter, device)
    return train_adapter(
        model,
        processor,
        identity,
        base_ref,
        cfg,
        output_dir,
        train_records,
        eval_records,
        on_log,
        progress,
        ddp,
        meta={"resumed_from": resume_adapter},
    )


def train_adapter(
    model,
    processor,
    identity: dict,
    base_ref: str,
    cfg: TrainingConfig,
    output_dir: Path,
    train_records: list[CaptionRecord],
    eval_records: list[CaptionRecord] | None = None,
    on_log=None,
    progress: bool = True,
    ddp: Distributed | None = None,
    meta: dict | None = None,
) -> FinetuneResult:
    """Train the LoRA ``model`` already carries (``attach_lora``) and save it, with
    ``snap2caption_adapter.json`` (its base, the config, and ``meta``), to ``output_dir/adapter``."""
    ddp = ddp or distributed_from_env()
    replay = [r for src in cfg.replay for r in read_source(src.model_dump())]
    data = EncodedDataset(processor, examples_of(train_records + replay), progress=progress and ddp.is_main)
    steps = cfg.total_steps(len(data))
    loop_cfg = TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        lr=cfg.optimizer.lr,
        min_lr_ratio=cfg.optimizer.min_lr_ratio,
        warmup_steps=min(cfg.optimizer.warmup_steps, max(0, steps - 1)),
        weight_decay=cfg.optimizer.weight_decay,
        grad_clip=cfg.optimizer.grad_clip,
        seed=cfg.seed,
        log_every=max(1, min(10, steps // 10)),
        checkpoint_dir=str(output_dir / "checkpoint"),
        checkpoint_every=cfg.checkpoint_every,
        precision=cfg.precision,
        kl_to_base=cfg.kl_to_base,
    )
    log.info(
        "fine-tuning %s on %d records for %d steps (global batch %d)",
        cfg.name,
        len(data),
        steps,
        cfg.batch_size * cfg.grad_accum,
    )
    result = train(model, data, loop_cfg, on_log=on_log if ddp.is_main else None, progress=progress, dist_info=ddp)
    adapter_dir = None
    if ddp.is_main:
        adapter_dir = output_dir / "adapter"
        model.save_pretrained(adapter_dir)
        meta = {
            "base_model": cfg.base_model,
            "base_ref": base_ref,
            "base_identity": identity,  # checked when the adapter is loaded (core/captioner.check_adapter_base)
            "config": cfg.name,
            **(meta or {}),
            "steps": result.steps,
            "train_records": len(data),
            "created_at": datetime.now(UTC).isoformat(),
        }
        if cfg.base_model == "demo":
            meta["base_version"] = Path(base_ref).name  # the demo model's recipe hash
        (adapter_dir / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return FinetuneResult(
        adapter_dir,
        base_ref,
        result.steps,
        result.samples_per_s,
        result.wall_s,
        result.final_loss,
        len(data),
        list(eval_records or []),
        result.losses,
    )
