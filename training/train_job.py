"""One training job, as `snap2caption train` and `snap2caption retrain` both run it:

fine-tune -> score the candidate and the baseline on the same eval set -> gate -> with MLflow:
log everything, register the version, and move the ``champion`` alias only if the gate says so.

With MLflow the baseline is the registered champion (``champion_baseline``), whatever the
candidate started from: the gate decides whether it replaces what is served, and the registry
refuses the promotion if the champion is no longer the version it was scored against.

Without MLflow the job still trains, evaluates and writes ``summary.json`` with the gate's
verdict; nothing is registered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from training.config import TrainingConfig
from training.datasets import CaptionRecord
from training.finetune import FinetuneResult, finetune, read_records
from training.gate import GateDecision, decide

log = logging.getLogger(__name__)


@dataclass
class DatasetInput:
    """A dataset the run consumed, as MLflow records it."""

    name: str
    digest: str
    source: str
    num_rows: int
    context: str = "training"


@dataclass(frozen=True)
class Baseline:
    """What a candidate is scored against: ``adapter`` (None: the bare base model) and the
    champion version that adapter is (None: there was no champion). Both are required, so no
    caller can say "there was no champion" by forgetting an argument."""

    adapter: str | None
    champion_version: str | None

    @property
    def label(self) -> str:
        if self.champion_version is not None:
            return f"champion v{self.champion_version}"
        return self.adapter or "base model"


def champion_baseline(registered_model: str, dst: Path) -> Baseline:
    """The registry's current champion, its adapter downloaded into ``dst``; with none yet, the
    bare base model and explicitly no champion. Needs MLFLOW_TRACKING_URI."""
    from training.registry import Registry

    registry = Registry(registered_model)
    champion = registry.champion()
    if champion is None:
        return Baseline(adapter=None, champion_version=None)
    # By version, not by alias: the adapter scored must be the version the registry later
    # checks the champion against, even if the alias moves between these two calls.
    return Baseline(adapter=str(registry.download(champion.version, dst)), champion_version=champion.version)


@dataclass
class JobOutcome:
    adapter_dir: Path
    candidate_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    decision: GateDecision
    train: FinetuneResult
    baseline: Baseline
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "adapter_dir": str(self.adapter_dir),
            "run_id": self.run_id,
            "version": self.version,
            "promoted": self.promoted,
            "decision": {"promote": self.decision.promote, "reason": self.decision.reason},
            "compared_with": self.baseline.label,
            "candidate": self.candidate_metrics,
            "baseline": self.baseline_metrics,
            "train": {
                "steps": self.train.steps,
                "samples_per_s": round(self.train.samples_per_s, 2),
                "wall_s": round(self.train.train_wall_s, 1),
                "final_loss": self.train.final_loss,
                "records": self.train.train_records,
                "eval_records": len(self.train.eval_records),
            },
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
        }


def headline(metrics: dict) -> dict:
    """The metrics a report shows, rounded."""
    keys = ("cider_d", "bleu4", "rouge_l", "hashtag_f1", "color_shape_accuracy")
    return {k: round(metrics[k], 4) for k in keys if k in metrics}


def default_output_dir(cfg: TrainingConfig) -> Path:
    from snap2caption_service.core.settings import get_settings

    if cfg.output_dir:
        return Path(cfg.output_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return get_settings().data_dir / "runs" / f"{cfg.name}-{stamp}"


def run_job(
    cfg: TrainingConfig,
    output_dir: Path,
    *,
    baseline: Baseline,
    resume_adapter: str | None = None,
    train_records: list[CaptionRecord] | None = None,
    eval_records: list[CaptionRecord] | None = None,
    datasets: list[DatasetInput] | None = None,
    track: bool = False,
    run_name: str | None = None,
    tags: dict | None = None,
    progress: bool = True,
) -> JobOutcome | None:
    """Returns None on torchrun ranks other than 0 (they only train; ``baseline`` is unused there).

    ``baseline``: what the candidate must beat; with ``track``, ``champion_baseline()``'s answer,
    whose champion version the registry checks again before it moves the alias.
    """
    from training.loop import distributed_from_env

    ddp = distributed_from_env()
    output_dir.mkdir(parents=True, exist_ok=True)
    if train_records is None:
        train_records, eval_records = read_records(cfg)
    if not ddp.is_main:
        finetune(cfg, output_dir, resume_adapter, train_records, eval_records, progress=False, dist_info=ddp)
        return None
    if track and baseline.champion_version is None and baseline.adapter is not None:
        # An adapter that is not the champion decides nothing about replacing it.
        raise ValueError(
            f"a tracked job is scored against the registry's champion (champion_baseline()), "
            f"not against {baseline.adapter}"
        )
    if not track:
        return _run(cfg, output_dir, resume_adapter, baseline, train_records, eval_records, None, progress, ddp)

    params = {
        "resume_adapter": resume_adapter or "",
        "train_records": len(train_records),
        "eval_records": len(eval_records or []),
        "world_size": ddp.world_size,
    }
    return tracked_job(
        cfg,
        output_dir,
        run_name or cfg.name,
        params,
        {"champion_version": baseline.champion_version or "none", **(tags or {})},
        datasets,
        lambda tracking: _run(
            cfg, output_dir, resume_adapter, baseline, train_records, eval_records, tracking, progress, ddp
        ),
        lambda outcome, artifact: _register(cfg, outcome, artifact),
    )


def tracked_job(
    cfg: TrainingConfig,
    output_dir: Path,
    run_name: str,
    params: dict,
    tags: dict,
    datasets: list[DatasetInput] | None,
    work: Callable[[ModuleType], JobOutcome],
    register: Callable[[JobOutcome, str], None],
) -> JobOutcome:
    """One MLflow run around ``work(tracking)`` (train + score + gate): its datasets, both
    evaluations, the adapter, then ``register(outcome, artifact_path)`` and summary.json. An
    exception anywhere marks the run FAILED and moves no alias."""
    from training import tracking

    with tracking.start_run(cfg.mlflow_experiment, run_name, cfg.model_dump(mode="json"), params, tags=tags) as run:
        for d in datasets or []:
            tracking.log_dataset(d.name, d.digest, d.source, d.num_rows, d.context)
        outcome = work(tracking)
        outcome.run_id = run.info.run_id
        tracking.log_eval(outcome.candidate_metrics, output_dir / "predictions.csv")
        tracking.log_eval(outcome.baseline_metrics, output_dir / "baseline_predictions.csv", prefix="baseline_")
        artifact = tracking.log_adapter(outcome.adapter_dir)
        register(outcome, artifact)
        (output_dir / "summary.json").write_text(json.dumps(outcome.summary(), indent=2))
        import mlflow

        mlflow.log_artifact(str(output_dir / "summary.json"))
    return outcome


def _run(
    cfg, output_dir, resume_adapter, baseline: Baseline, train_records, eval_records, tracking, progress, ddp
) -> JobOutcome:
    from snap2caption_service.core.captioner import Captioner, GenerationSettings
    from training.evaluation import score

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    on_log = (lambda step, stats: tracking.log_step(stats, step)) if tracking else None
    result = finetune(
        cfg, output_dir, resume_adapter, train_records, eval_records, on_log=on_log, progress=progress, dist_info=ddp
    )
    timings["train"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    generation = GenerationSettings(max_new_tokens=cfg.eval.max_new_tokens)
    candidate = Captioner.load(result.base_ref, str(result.adapter_dir), generation=generation)
    cand_metrics, _ = score(candidate, result.eval_records, cfg.eval, output_dir / "predictions.csv")
    del candidate
    base_captioner = Captioner.load(result.base_ref, baseline.adapter or "", generation=generation)
    base_metrics, _ = score(base_captioner, result.eval_records, cfg.eval, output_dir / "baseline_predictions.csv")
    del base_captioner
    timings["evaluate"] = time.perf_counter() - t1
    return judge(cfg, output_dir, result, baseline, cand_metrics, base_metrics, timings)


def judge(
    cfg: TrainingConfig,
    output_dir: Path,
    result: FinetuneResult,
    baseline: Baseline,
    cand_metrics: dict[str, float],
    base_metrics: dict[str, float],
    timings: dict[str, float],
) -> JobOutcome:
    """The gate's verdict on two evaluations of the same records, written to summary.json."""
    decision = decide(cand_metrics, base_metrics, cfg.gate_rule())
    log.info("gate against %s: %s (%s)", baseline.label, "PROMOTE" if decision.promote else "HOLD", decision.reason)
    outcome = JobOutcome(result.adapter_dir, cand_metrics, base_metrics, decision, result, baseline, timings=timings)
    (output_dir / "summary.json").write_text(json.dumps(outcome.summary(), indent=2))
    return outcome


def _register(cfg: TrainingConfig, outcome: JobOutcome, artifact_path: str) -> None:
    """Register the adapter and apply the gate: the champion alias moves last, or not at all, and
    only if the champion is still the one the baseline was."""
    from training.registry import Registry

    registry = Registry(cfg.registered_model)
    info = registry.register(outcome.run_id, artifact_path, tags={"config": cfg.name, "base_model": cfg.base_model})
    outcome.version = info.version
    registry.apply_gate(
        info.version,
        outcome.decision,
        metrics=outcome.candidate_metrics,
        rule=cfg.gate_rule(),
        expected_champion=outcome.baseline.champion_version,
    )
    outcome.promoted = outcome.decision.promote
