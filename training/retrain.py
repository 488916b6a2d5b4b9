"""`snap2caption retrain`: new feedback -> snapshot -> fine-tune from the champion -> gate.

1. Count the feedback events waiting on ``caption.feedback`` after the latest snapshot; stop
   if fewer than ``min_new_events``.
2. Build the next snapshot (training/feedback_snapshot.py) and split it by image into train
   and eval.
3. Fine-tune from the champion's adapter (or the base model when there is none yet), score
   the candidate and the champion on the same eval records, log the run to MLflow, register
   the version and let the gate move the ``champion`` alias or tag it ``challenger``.
4. Only then mark the snapshot consumed: a run that fails anywhere leaves the champion as it
   was and the events for the next run.

Runs on demand, from the k8s CronJob (k8s/base/retrain-cronjob.yaml), or with ``--watch``
whenever enough feedback has accumulated.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class RetrainDefaults(BaseSettings):
    """`snap2caption retrain` defaults from the environment (flags override them)."""

    model_config = SettingsConfigDict(env_prefix="SNAP2CAPTION_", env_ignore_empty=True, extra="ignore")

    retrain_config: str = Field(
        str(Path(__file__).parent / "configs" / "demo-retrain.yaml"), description="training config for the fine-tune"
    )
    snapshots: str = Field("", description="snapshot root, folder or s3://bucket/prefix; default <data_dir>/snapshots")
    retrain_min_events: int = Field(1, ge=0, description="do nothing unless this many feedback events are new")


@dataclass
class RetrainSettings:
    """One retrain job, resolved from flags over RetrainDefaults."""

    config: str
    snapshots: str
    archive: str
    overrides: list[str] | None = None
    min_new_events: int = 1
    output_dir: str | None = None


def retrain(rs: RetrainSettings, progress: bool = True) -> dict:
    from snap2caption_service.core.caption_archive import CaptionArchive
    from snap2caption_service.core.settings import KafkaSettings
    from training.config import load_config
    from training.feedback_snapshot import build_snapshot, mark_consumed, pending_events, read_snapshot
    from training.finetune import holdout_split
    from training.tracking import tracking_uri
    from training.train_job import DatasetInput, champion_baseline, run_job

    t0 = time.perf_counter()
    cfg = load_config(rs.config, rs.overrides)
    tracking_uri()  # fail now, before reading Kafka and training, if MLflow is not configured
    stream = KafkaSettings()
    bootstrap, topic = stream.kafka_bootstrap_servers, stream.topic_feedback
    waiting = pending_events(rs.snapshots, bootstrap, topic)
    if waiting < rs.min_new_events:
        log.info("%d new feedback events on %s (< %d): nothing to do", waiting, topic, rs.min_new_events)
        return {"status": "nothing_new", "waiting_events": waiting}

    snapshot = build_snapshot(rs.snapshots, CaptionArchive(rs.archive), bootstrap, topic, advance=False)
    if snapshot is None:
        return {"status": "nothing_new", "waiting_events": waiting}
    report = {
        "snapshot": snapshot.id,
        "snapshot_location": snapshot.location,
        "offsets": snapshot.offsets,
        "counts": snapshot.counts,
    }
    if snapshot.trainable == 0:
        mark_consumed(rs.snapshots, snapshot)  # only downvotes without edits: nothing to learn, move on
        return {"status": "nothing_new", **report}

    records = read_snapshot(snapshot.location)
    train_records, eval_records = holdout_split(records, cfg.eval.holdout_fraction, cfg.seed)
    eval_records = eval_records[: cfg.eval.max_records]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(rs.output_dir) if rs.output_dir else _runs_dir() / f"retrain-{stamp}-{snapshot.id}"

    # The champion is both the starting point and the baseline to beat.
    champion = champion_baseline(cfg.registered_model, out / "champion")
    log.info(
        "retraining from %s on snapshot %s (%d train / %d eval records)",
        champion.label if champion.champion_version else f"the base model ({cfg.base_model})",
        snapshot.id,
        len(train_records),
        len(eval_records),
    )
    outcome = run_job(
        cfg,
        out,
        baseline=champion,
        resume_adapter=champion.adapter,
        train_records=train_records,
        eval_records=eval_records,
        datasets=[
            DatasetInput(
                f"feedback-{snapshot.id}",
                snapshot.content_hash[:32],
                snapshot.location,  # MLflow: <= 36 chars
                len(records),
                "training",
            )
        ],
        track=True,
        run_name=f"retrain-{snapshot.id}",
        tags={"snapshot": snapshot.id, "snapshot_offsets": json.dumps(snapshot.offsets)},
        progress=progress,
    )
    mark_consumed(rs.snapshots, snapshot)
    report.update(
        {
            "status": "promoted" if outcome.promoted else "held",
            "version": outcome.version,
            "run_id": outcome.run_id,
            "reason": outcome.decision.reason,
            "started_from": f"v{champion.champion_version}" if champion.champion_version else "base",
            "train_records": len(train_records),
            "eval_records": len(eval_records),
            "samples_per_s": round(outcome.train.samples_per_s, 1),
            "timings_s": {
                **{k: round(v, 1) for k, v in outcome.timings.items()},
                "total": round(time.perf_counter() - t0, 1),
            },
            "candidate": _headline(outcome.candidate_metrics),
            "champion": _headline(outcome.baseline_metrics),
        }
    )
    return report


def watch(rs: RetrainSettings, interval_s: float) -> int:
    """Retrain whenever min_new_events have accumulated; a failed run is logged and retried later."""
    log.info("watching for >= %d new feedback events every %.0fs", rs.min_new_events, interval_s)
    while True:
        try:
            report = retrain(rs, progress=False)
            if report["status"] != "nothing_new":
                log.info("retrain: %s", json.dumps(report))
        except KeyboardInterrupt:
            return 0
        except Exception:  # noqa: BLE001 - keep watching; the champion is untouched by a failed run
            log.exception("retrain failed; will try again in %.0fs", interval_s)
        try:
            time.sleep(interval_s)
        except KeyboardInterrupt:
            return 0


def _headline(metrics: dict) -> dict:
    keys = ("cider_d", "bleu4", "rouge_l", "hashtag_f1", "color_shape_accuracy")
    return {k: round(metrics[k], 4) for k in keys if k in metrics}


def _runs_dir() -> Path:
    from snap2caption_service.core.settings import get_settings

    return get_settings().data_dir / "runs"
