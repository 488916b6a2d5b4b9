"""The fine-tuning config: one YAML file says everything a run depends on.

``snap2caption train --config training/configs/<name>.yaml`` reads it; ``--set key=value``
overrides single fields (dotted keys: ``--set lora.r=8 --set steps=50``). Unknown keys are
an error, so a typo never silently trains with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSource(_Strict):
    kind: Literal["instacities", "manifest", "feedback_snapshot", "synthetic"]
    path: str = ""
    tone: str = "casual"  # instacities only: the folders carry no tone/audience
    audience: str = "personal"
    # synthetic only: the demo model's generated scenes (training/synthetic.py), no path.
    scenes: int = Field(0, ge=0)
    seed: int = 77

    @model_validator(mode="after")
    def _check(self) -> DataSource:
        if self.kind == "synthetic":
            if not self.scenes or self.path:
                raise ValueError("a synthetic data source takes `scenes` (and optionally `seed`), not a path")
        elif not self.path:
            raise ValueError(f"a {self.kind} data source needs a path")
        return self


class LoraSettings(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="Language-model projections to adapt; None = the base's defaults (finetune.LORA_TARGETS)."
    )
    layers: list[int] | None = Field(None, description="Decoder layers to adapt; None = all.")
    # Trained fully and saved whole with the adapter (e.g. multi_modal_projector). Off by default:
    # vLLM's LoRA loader refuses adapters that carry full modules, and the file grows by them.
    modules_to_save: list[str] = Field(default_factory=list)


class OptimizerSettings(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)


class EvalSettings(_Strict):
    # Held out from the training data by image (the same photo never lands on both sides).
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    data: list[DataSource] = Field(default_factory=list, description="An explicit eval set instead.")
    max_records: int = Field(200, ge=1)
    # Synthetic scenes scored for colour+shape accuracy: a guard for the demo model only.
    guard_scenes: int = Field(0, ge=0)
    guard_seed: int = 9001
    batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(128, ge=8)
    # CIDEr-D's document frequencies: the eval references plus these captions, one document
    # each (coco-caption's precomputed "coco-val-df" plays this role). Without a background
    # corpus, a phrase that every reference shares -- a correction creators make to every
    # caption -- has idf 0, and the gate could not see a model adopt it. Use captions from the
    # base model's usual distribution; only the captions are read.
    idf_corpus: list[DataSource] = Field(default_factory=list)


class TrainingConfig(_Strict):
    name: str
    base_model: str = Field("demo", description="'demo' (the embedded model), an HF LLaVA id or a folder.")
    resume_adapter: str | None = Field(None, description="A LoRA adapter folder, 'champion', or none.")
    data: list[DataSource] = Field(default_factory=list)
    replay: list[DataSource] = Field(
        default_factory=list,
        description="Rehearsal: records mixed into every fine-tune's training data (not its evaluation), so "
        "learning a few hundred edits does not make the model forget what its base reads well.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    kl_to_base: float = Field(
        0.0,
        ge=0,
        description="Weight of KL(adapter || adapter switched off) on the answer tokens the base already "
        "writes (training/loop.py kl_to_base): keeps an adapter learnt from a few edits from changing "
        "what it was not taught to change.",
    )
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    # The promotion gate (training/gate.py): primary_metric, min_improvement, guarded, lower_is_better.
    registration_rule: dict = Field(default_factory=dict)
    registered_model: str = Field(
        "",
        description="MLflow registered model name; empty: SNAP2CAPTION_REGISTERED_MODEL, else snap2caption-captioner.",
    )
    mlflow_experiment: str = "snap2caption-training"
    output_dir: str = Field("", description="Default: <data_dir>/runs/<name>-<time>.")

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        self.gate_rule()  # a bad rule fails at load time, not after an hour of training
        return self

    def gate_rule(self):
        from training.gate import GateRule

        return GateRule.from_dict(self.registration_rule)

    def total_steps(self, num_examples: int, world_size: int = 1) -> int:
        if self.steps is not None:
            return self.steps
        per_step = self.batch_size * self.grad_accum  # the global batch, however many processes share it
        return max(1, round(self.epochs * num_examples / per_step))


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainingConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return TrainingConfig.model_validate(raw)


def _set_dotted(d: dict, key: str, value) -> None:
    """``a.b=v`` sets a nested field; a number picks a list item (``eval.idf_corpus.0.scenes=30``)."""
    parts = key.split(".")
    for p in parts[:-1]:
        d = d[_index(d, p, key)] if isinstance(d, list) else d.setdefault(p, {})
    if isinstance(d, list):
        d[_index(d, parts[-1], key)] = value
    else:
        d[parts[-1]] = value


def _index(items: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ValueError(f"--set {key}: {part!r} is not an item of a list of {len(items)}")
    return int(part)
