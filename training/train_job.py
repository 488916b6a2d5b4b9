"""One training job, as `snap2caption train` and `snap2caption retrain` both run it:

fine-tune -> score the candidate and the baseline (the adapter it started from, or the bare
base model) on the same eval set -> gate -> with MLflow: log everything, register the version,
and move the ``champion`` alias only if the gate says so.

Without MLflow the job still trains, evaluates and writes ``summary.json`` with the gate's
verdict; nothing is registered.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

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


@dataclass
class JobOutcome:
    adapter_dir: Path
    candidate_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    decision: GateDecision
    train: FinetuneResult
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"adapter_dir": str(self.adapter_dir), "run_id": self.run_id, "version": self.version,
                "promoted": self.promoted, "decision": {"promote": self.decision.promote,
                                                        "reason": self.decision.reason},
                "candidate": self.candidate_metrics, "baseline": self.baseline_metrics,
                "train": {"steps": self.train.steps, "samples_per_s": round(self.train.samples_per_s, 2),
                          "wall_s": round(self.train.train_wall_s, 1), "final_loss": self.train.final_loss,
                          "records": self.train.train_records, "eval_records": len(self.train.eval_records)},
                "timings_s": {k: round(v, 1) for k, v in self.timings.items()}}


def default_output_dir(cfg: TrainingConfig) -> Path:
    from snap2caption_service.core.settings import get_settings

    if cfg.output_dir:
        return Path(cfg.output_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return get_settings().data_dir / "runs" / f"{cfg.name}-{stamp}"


def run_job(cfg: TrainingConfig, output_dir: Path, resume_adapter: str | None = None,
            baseline_adapter: str | None = None, train_records: list[CaptionRecord] | None = None,
            eval_records: list[CaptionRecord] | None = None, datasets: list[DatasetInput] | None = None,
            track: bool = False, run_name: str | None = None, tags: dict | None = None,
            progress: bool = True, expected_champion=None) -> JobOutcome | None:
    """Returns None on torchrun ranks other than 0 (they only train).

    ``expected_champion``: the champion version the baseline is (None: there was none); the
    registry refuses a promotion if the champion changed while this job ran.
    """
    from training.loop import distributed_from_env

    ddp = distributed_from_env()
    output_dir.mkdir(parents=True, exist_ok=True)
    if train_records is None:
        train_records, eval_records = read_records(cfg)
    if not ddp.is_main:
        finetune(cfg, output_dir, resume_adapter, train_records, eval_records, progress=False, dist_info=ddp)
        return None
    if not track:
        return _run(cfg, output_dir, resume_adapter, baseline_adapter, train_records, eval_records, None, progress,
                    ddp)

    from training import tracking

    params = {"resume_adapter": resume_adapter or "", "train_records": len(train_records),
              "eval_records": len(eval_records or []), "world_size": ddp.world_size}
    with tracking.start_run(cfg.mlflow_experiment, run_name or cfg.name, cfg.model_dump(mode="json"), params,
                            tags=tags) as run:
        for d in datasets or []:
            tracking.log_dataset(d.name, d.digest, d.source, d.num_rows, d.context)
        outcome = _run(cfg, output_dir, resume_adapter, baseline_adapter, train_records, eval_records, tracking,
                       progress, ddp)
        outcome.run_id = run.info.run_id
        tracking.log_eval(outcome.candidate_metrics, output_dir / "predictions.csv")
        tracking.log_eval(outcome.baseline_metrics, output_dir / "baseline_predictions.csv", prefix="baseline_")
        artifact = tracking.log_adapter(outcome.adapter_dir)
        _register(cfg, outcome, artifact, expected_champion)
        (output_dir / "summary.json").write_text(json.dumps(outcome.summary(), indent=2))
        import mlflow

        mlflow.log_artifact(str(output_dir / "summary.json"))
    return outcome


def _run(cfg, output_dir, resume_adapter, baseline_adapter, train_records, eval_records, tracking, progress,
         ddp) -> JobOutcome:
    from snap2caption_service.core.captioner import Captioner, GenerationSettings

    from training.evaluation import score

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    on_log = (lambda step, stats: tracking.log_step(stats, step)) if tracking else None
    result = finetune(cfg, output_dir, resume_adapter, train_records, eval_records, on_log=on_log,
                      progress=progress, dist_info=ddp)
    timings["train"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    generation = GenerationSettings(max_new_tokens=cfg.eval.max_new_tokens)
    candidate = Captioner.load(result.base_ref, str(result.adapter_dir), generation=generation)
    cand_metrics, _ = score(candidate, result.eval_records, cfg.eval, output_dir / "predictions.csv")
    del candidate
    baseline = Captioner.load(result.base_ref, baseline_adapter or "", generation=generation)
    base_metrics, _ = score(baseline, result.eval_records, cfg.eval, output_dir / "baseline_predictions.csv")
    del baseline
    timings["evaluate"] = time.perf_counter() - t1
    decision = decide(cand_metrics, base_metrics, cfg.gate_rule())
    log.info("gate: %s (%s)", "PROMOTE" if decision.promote else "HOLD", decision.reason)
    outcome = JobOutcome(result.adapter_dir, cand_metrics, base_metrics, decision, result, timings=timings)
    (output_dir / "summary.json").write_text(json.dumps(outcome.summary(), indent=2))
    return outcome


def _register(cfg: TrainingConfig, outcome: JobOutcome, artifact_path: str, expected_champion) -> None:
    """Register the adapter and apply the gate: the champion alias moves last, or not at all."""
    from training.registry import Registry

    registry = Registry(cfg.registered_model)
    info = registry.register(outcome.run_id, artifact_path, tags={"config": cfg.name, "base_model": cfg.base_model})
    outcome.version = info.version
    registry.apply_gate(info.version, outcome.decision, metrics=outcome.candidate_metrics, rule=cfg.gate_rule(),
                        expected_champion=expected_champion)
    outcome.promoted = outcome.decision.promote
