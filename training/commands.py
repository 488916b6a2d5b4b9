"""`snap2caption train` and `snap2caption retrain`: argument parsing and the top of each job.

Registered on the main command by snap2caption_service/cli.py; the work is in train_job.py
(one job) and retrain.py (snapshot -> job from the champion -> gate).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from snap2caption_service.core.settings import RegistrySettings
from training.retrain import RetrainDefaults

log = logging.getLogger(__name__)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a LoRA adapter from a YAML config (torchrun for several processes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  snap2caption train --config training/configs/demo-lora.yaml\n"
        "  snap2caption train --config training/configs/demo-lora.yaml --set steps=50 --set lora.r=8\n"
        "  torchrun --nproc_per_node 2 -m snap2caption_service train --config ... --train-only\n"
        "With MLFLOW_TRACKING_URI set (infra/mlflow.sh start prints it) the run is logged, the adapter\n"
        "registered and the gate applied; without it, summary.json in the output folder has the verdict.",
    )
    p.add_argument("--config", required=True, help="YAML training config (see training/configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, dotted (repeatable): --set lora.r=8",
    )
    p.add_argument("--output-dir", help="default: <data_dir>/runs/<name>-<time>")
    p.add_argument("--resume-adapter", help="adapter folder, or 'champion' (from the MLflow registry)")
    p.add_argument("--train-only", action="store_true", help="skip evaluation, gate and registration")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow even if MLFLOW_TRACKING_URI is set")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "retrain",
        help="snapshot new feedback, fine-tune from the champion, evaluate, gate; then each creator's adapter",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs KAFKA_BOOTSTRAP_SERVERS (the caption.feedback topic) and MLFLOW_TRACKING_URI.\n"
        "examples:\n  snap2caption retrain                      # once, now\n"
        "  snap2caption retrain --min-new-events 500 # only if 500 feedback events are waiting\n"
        "  snap2caption retrain --watch 300 --min-new-events 500   # check every 5 minutes",
    )
    defaults = RetrainDefaults()
    p.add_argument(
        "--config",
        default=defaults.retrain_config,
        help="training config for the fine-tune [SNAP2CAPTION_RETRAIN_CONFIG, default demo-retrain.yaml]",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument(
        "--snapshots",
        default=defaults.snapshots,
        help="snapshot root, folder or s3://bucket/prefix [SNAP2CAPTION_SNAPSHOTS, default <data_dir>/snapshots]",
    )
    p.add_argument(
        "--archive", help="caption archive the service writes [SNAP2CAPTION_ARCHIVE, default <data_dir>/archive]"
    )
    p.add_argument(
        "--min-new-events",
        type=int,
        default=defaults.retrain_min_events,
        help="do nothing unless this many feedback events are new [SNAP2CAPTION_RETRAIN_MIN_EVENTS, 1]",
    )
    p.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="keep running: check for new feedback every SECONDS and retrain when enough arrived",
    )
    p.add_argument("--output-dir", help="default: <data_dir>/runs/retrain-<time>")
    p.add_argument(
        "--creator-config",
        default=defaults.creator_config,
        help="training config for creator adapters [SNAP2CAPTION_CREATOR_CONFIG, default demo-creator.yaml]",
    )
    p.add_argument(
        "--creator-set", action="append", default=[], metavar="KEY=VALUE", help="override a creator config field"
    )
    p.add_argument(
        "--creator-min-events",
        type=int,
        default=defaults.creator_min_events,
        help="train a creator's adapter once this many of their feedback records are new "
        "[SNAP2CAPTION_CREATOR_MIN_EVENTS, 50]",
    )
    p.add_argument(
        "--creator-min-eval-records",
        type=int,
        default=defaults.creator_min_eval_records,
        help="hold a creator with fewer held-out records [SNAP2CAPTION_CREATOR_MIN_EVAL_RECORDS, 8]",
    )
    p.add_argument("--no-creators", action="store_true", help="retrain the champion only, no creator adapters")
    p.set_defaults(func=cmd_retrain)


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.finetune import finetune, read_records
    from training.train_job import Baseline, default_output_dir, run_job

    cfg = load_config(args.config, args.set)
    out = Path(args.output_dir) if args.output_dir else default_output_dir(cfg)
    resume = args.resume_adapter or cfg.resume_adapter
    track = bool(RegistrySettings().mlflow_tracking_uri) and not args.no_track and not args.train_only
    # Registered, the candidate competes with the champion (what is served), whatever it started from.
    champion = _champion_to_beat(cfg.registered_model, out) if track else None
    if resume == "champion":
        resume = champion.adapter if champion else _champion_adapter(cfg.registered_model, out / "champion")
    if args.train_only:
        train_records, eval_records = read_records(cfg)
        result = finetune(cfg, out, resume, train_records, eval_records)
        if result.adapter_dir is not None:
            from training.loop import distributed_from_env

            summary = {
                "adapter_dir": str(result.adapter_dir),
                "steps": result.steps,
                "world_size": distributed_from_env().world_size,
                "samples_per_s": round(result.samples_per_s, 2),
                "wall_s": round(result.train_wall_s, 1),
                "final_loss": result.final_loss,
                "losses": result.losses,
            }
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
        return 0
    # Without a registry there is no champion: the candidate competes with what it started from.
    baseline = champion or Baseline(adapter=resume, champion_version=None)
    outcome = run_job(cfg, out, baseline=baseline, resume_adapter=resume, track=track)
    if outcome is None:
        return 0
    print(json.dumps(outcome.summary(), indent=2))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from snap2caption_service.core.settings import get_settings
    from training.retrain import RetrainSettings, retrain, watch

    if args.archive:
        os.environ["SNAP2CAPTION_ARCHIVE"] = args.archive
        get_settings.cache_clear()
    settings = get_settings()
    rs = RetrainSettings(
        config=args.config,
        overrides=args.set,
        snapshots=args.snapshots or str(settings.data_dir / "snapshots"),
        archive=settings.archive_location,
        min_new_events=args.min_new_events,
        output_dir=args.output_dir,
        creators=not args.no_creators,
        creator_config=args.creator_config,
        creator_overrides=args.creator_set,
        creator_min_events=args.creator_min_events,
        creator_min_eval_records=args.creator_min_eval_records,
    )
    if args.watch:
        return watch(rs, args.watch)
    report = retrain(rs)
    print(json.dumps(report, indent=2))
    failed = [c["creator_id"] for c in report.get("creators", []) if c["status"] == "failed"]
    if report.get("creators_error"):
        failed.append("(all: " + report["creators_error"] + ")")
    if failed:
        print(f"creator runs failed (their adapters unchanged): {', '.join(failed)}", file=sys.stderr)
    return 0 if report["status"] in ("promoted", "held", "nothing_new") and not failed else 1


def _champion_to_beat(model_name: str, out: Path):
    """The registry's champion as the baseline (the base model if there is none yet); read only
    on the process that evaluates (torchrun rank 0), the others just train."""
    from training.loop import distributed_from_env
    from training.train_job import champion_baseline

    if not distributed_from_env().is_main:
        return None
    baseline = champion_baseline(model_name, out / "champion")
    if baseline.champion_version is None:
        print(
            f"no champion registered under {model_name}: the candidate is scored against the base model",
            file=sys.stderr,
        )
    return baseline


def _champion_adapter(model_name: str, dst: Path) -> str | None:
    from training.registry import Registry

    registry = Registry(model_name)
    if registry.champion() is None:
        print(f"no champion registered under {model_name}: training from the base model", file=sys.stderr)
        return None
    return str(registry.download("champion", dst))
