"""Thin per-run MLflow logging for training and evaluation: one call per thing a run records
(config and params, per-step metrics, dataset inputs, eval metrics + predictions table, the
adapter). Everything goes to the tracking server named by MLFLOW_TRACKING_URI
(``infra/mlflow.sh start`` prints it); there is deliberately no fallback to a local file
store, so a run that was not tracked fails instead of writing to ./mlruns unseen.

    with start_run("snap2caption-retrain", "retrain-2026-11-25", config) as run:
        log_dataset("feedback-snapshot", digest, "/data/snapshots/abc", 1200, "training")
        for step ...: log_step({"loss": loss, "lr": lr}, step)
        log_eval(metrics, "predictions.csv")                       # candidate
        log_eval(champion_metrics, "champion.csv", prefix="champion_")
        log_adapter(adapter_dir)                                   # -> artifact "adapter"
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from snap2caption_service.core.registry import tracking_uri

ADAPTER_ARTIFACT = "adapter"
# MLflow rejects longer param values; the whole config is logged as an artifact anyway.
_MAX_PARAM_CHARS = 6000


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """{"lora": {"r": 8}} -> {"lora.r": "8"}: nested config sections as MLflow params."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            text = str(value)
            out[name] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."
    return out


def start_run(
    experiment: str,
    run_name: str,
    config: Mapping | None = None,
    params: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
    uri: str | None = None,
) -> mlflow.ActiveRun:
    """Start a run (use it as a context manager: an exception inside marks the run FAILED).

    Logs the config as the ``config.yaml`` artifact and, flattened, as params, plus ``params``.
    """
    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=run_name, tags=dict(tags or {}))
    try:
        all_params = {**flatten(config or {}), **flatten(params or {})}
        if all_params:
            mlflow.log_params(all_params)
        if config is not None:
            mlflow.log_dict(dict(config), "config.yaml")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    return run


def log_step(metrics: Mapping[str, float], step: int) -> None:
    """Per-step training metrics (loss, learning rate, ...)."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


class _SnapshotDataset(MetaDataset):
    """A dataset known by its source and content digest, plus its row count as the profile
    (MetaDataset alone carries no profile, and the row count is what a reader wants first)."""

    def __init__(self, source, name: str, digest: str, num_rows: int):
        self._num_rows = num_rows
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self):
        return {"num_rows": self._num_rows}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def log_dataset(
    name: str, digest: str, source: str | Path, num_rows: int, context: str, tags: Mapping[str, str] | None = None
) -> None:
    """Record a dataset input of the active run (shown under the run's "Datasets").

    ``source`` is where the data lives (a local snapshot folder, s3://..., https://...);
    ``digest`` its content hash; ``context`` e.g. "training" or "evaluation".
    """
    if not digest:
        raise ValueError(f"dataset {name!r} needs a content digest")
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 0:
        raise ValueError(f"dataset {name!r}: num_rows must be an int >= 0, got {num_rows!r}")
    raw = str(source)
    if "://" not in raw:
        raw = str(Path(raw).expanduser().resolve())
    with warnings.catch_warnings():
        # A plain path matches several local source classes; MLflow warns and picks one.
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(raw)
    mlflow.log_input(_SnapshotDataset(resolved, name, digest, num_rows), context=context, tags=dict(tags or {}))


def log_eval(metrics: Mapping[str, float], predictions_table: str | Path | None = None, prefix: str = "") -> None:
    """Eval metrics (``prefix`` + name, e.g. "champion_cider_d") and the predictions table,
    stored as ``eval/<table name>`` (or ``eval/<prefix>/...``)."""
    bad = {k: v for k, v in metrics.items() if not isinstance(v, numbers.Real) or not math.isfinite(v)}
    if bad:
        raise ValueError(f"eval metrics must be finite numbers; got {bad}")
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items()})
    if predictions_table is not None:
        path = Path(predictions_table)
        if not path.is_file():
            raise FileNotFoundError(f"predictions table {path} does not exist")
        mlflow.log_artifact(str(path), "eval/" + prefix.rstrip("_") if prefix else "eval")


def log_adapter(folder: str | Path, artifact_path: str = ADAPTER_ARTIFACT) -> str:
    """Upload a PEFT adapter folder (adapter_config.json + weights) as a run artifact; returns
    the artifact path to register (``Registry.register(run_id, artifact_path)``)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    mlflow.log_artifacts(str(folder), artifact_path)
    return artifact_path
