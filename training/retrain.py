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
5. Creators (training/creator_retrain.py): each creator with enough new feedback gets their own
   adapter on top of the (possibly new) champion, gated per creator. This step runs even when
   the champion had nothing new. Feedback on captions requested with a ``creator_id`` is that
   creator's house style: it trains their adapter and is kept out of the champion's data, so
   one creator's style never reaches everyone's captions.

Runs on demand, from the k8s CronJob (k8s/base/retrain-cronjob.yaml), or with ``--watch``
whenever enough feedback has accumulated.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
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
    creator_config: str = Field(
        str(Path(__file__).parent / "configs" / "demo-creator.yaml"), description="training config for creator adapters"
    )
    creator_min_events: int = Field(
        50, ge=1, description="train a creator's adapter once this many of their feedback records are new"
    )
    creator_min_eval_records: int = Field(
        8, ge=1, description="hold a creator whose held-out records are fewer than this (too few to judge)"
    )


@dataclass
class RetrainSettings:
    """One retrain job, resolved from flags over RetrainDefaults."""

    config: str
    snapshots: str
    archive: str
    overrides: list[str] | None = None
    min_new_events: int = 1
    output_dir: str | None = None
    creators: bool = True
    creator_config: str = field(default_factory=lambda: RetrainDefaults().creator_config)
    creator_overrides: list[str] | None = None
    creator_min_events: int = field(default_factory=lambda: RetrainDefaults().creator_min_events)
    creator_min_eval_records: int = field(default_factory=lambda: RetrainDefaults().creator_min_eval_records)


def retrain(rs: RetrainSettings, progress: bool = True) -> dict:
    """The champion step, then the creators' step; the report's ``status`` is the champion's,
    ``creators`` has one entry per creator with feedback."""
    from training.tracking import tracking_uri

    t0 = time.perf_counter()
    tracking_uri()  # fail now, before reading Kafka and training, if MLflow is not configured
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(rs.output_dir) if rs.output_dir else _runs_dir() / f"retrain-{stamp}"
    report, snapshot = _champion_step(rs, out, progress)
    if rs.creators:
        from training.creator_retrain import CreatorSettings, retrain_creators

        t1 = time.perf_counter()
        settings = CreatorSettings(
            rs.creator_config, rs.creator_min_events, rs.creator_min_eval_records, rs.creator_overrides
        )
        try:
            report["creators"] = retrain_creators(
                settings, rs.snapshots, snapshot, out / "creators", _champion_model(rs), progress
            )
        except Exception as exc:  # noqa: BLE001 - the champion's outcome above stands; say why no creator ran
            log.exception("the creators' step failed before any creator ran; every served adapter is unchanged")
            report["creators"] = []
            report["creators_error"] = f"{type(exc).__name__}: {exc}"[:500]
        report.setdefault("timings_s", {})["creators"] = round(time.perf_counter() - t1, 1)
    report.setdefault("timings_s", {})["total"] = round(time.perf_counter() - t0, 1)
    return report


def _champion_model(rs: RetrainSettings) -> str:
    from training.config import load_config

    return load_config(rs.config, rs.overrides).registered_model


def _champion_step(rs: RetrainSettings, out: Path, progress: bool):
    """(report, the snapshot the creators' history ends at: this run's, or None for latest.json)."""
    from snap2caption_service.core.caption_archive import CaptionArchive
    from snap2caption_service.core.settings import KafkaSettings
    from training.config import load_config
    from training.feedback_snapshot import build_snapshot, mark_consumed, pending_events, read_snapshot
    from training.finetune import holdout_split
    from training.train_job import DatasetInput, champion_baseline, headline, run_job

    cfg = load_config(rs.config, rs.overrides)
    stream = KafkaSettings()
    bootstrap, topic = stream.kafka_bootstrap_servers, stream.topic_feedback
    waiting = pending_events(rs.snapshots, bootstrap, topic)
    if waiting < rs.min_new_events:
        log.info("%d new feedback events on %s (< %d): nothing to do", waiting, topic, rs.min_new_events)
        return {"status": "nothing_new", "waiting_events": waiting}, None

    snapshot = build_snapshot(rs.snapshots, CaptionArchive(rs.archive), bootstrap, topic, advance=False)
    if snapshot is None:
        return {"status": "nothing_new", "waiting_events": waiting}, None
    report = {
        "snapshot": snapshot.id,
        "snapshot_location": snapshot.location,
        "offsets": snapshot.offsets,
        "counts": snapshot.counts,
    }
    records = read_snapshot(snapshot.location)
    # Creators' edits are their own house style: their adapters learn them (step 5), not everyone's champion.
    records = [r for r in records if r.creator_id is None]
    if not records:
        mark_consumed(rs.snapshots, snapshot)  # nothing for the champion to learn; creators' records stay in the chain
        return {"status": "nothing_new", "champion_records": 0, **report}, snapshot

    train_records, eval_records = holdout_split(records, cfg.eval.holdout_fraction, cfg.seed)
    eval_records = eval_records[: cfg.eval.max_records]
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
            "timings_s": {k: round(v, 1) for k, v in outcome.timings.items()},
            "candidate": headline(outcome.candidate_metrics),
            "champion": headline(outcome.baseline_metrics),
        }
    )
    return report, snapshot


def watch(rs: RetrainSettings, interval_s: float) -> int:
    """Retrain whenever min_new_events have accumulated; a failed run is logged and retried later."""
    log.info("watching for >= %d new feedback events every %.0fs", rs.min_new_events, interval_s)
    while True:
        try:
            report = retrain(rs, progress=False)
            if report["status"] != "nothing_new" or any(c["status"] != "skipped" for c in report.get("creators", [])):
                log.info("retrain: %s", json.dumps(report))
        except KeyboardInterrupt:
            return 0
        except Exception:  # noqa: BLE001 - keep watching; the champion is untouched by a failed run
            log.exception("retrain failed; will try again in %.0fs", interval_s)
        try:
            time.sleep(interval_s)
        except KeyboardInterrupt:
            return 0


def _runs_dir() -> Path:
    from snap2caption_service.core.settings import get_settings

    return get_settings().data_dir / "runs"
