"""`snap2caption train` with MLflow: a candidate is scored against the registered champion and
promoted over it (issue: `train` could not promote once a champion existed), against the real
tracking server started by infra/mlflow.sh and the cached demo model.

Each run is the CLI's own code path (snap2caption_service.cli.main) on a config small enough to
train and score in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.mlflow, pytest.mark.quality, pytest.mark.timeout(1200)]

# Synthetic scenes, the demo model's own distribution: the demo model captions them well, so a
# broken adapter scores far below it and a barely-trained one about the same.
CONFIG = {
    "name": "train-job-test",
    "base_model": "demo",
    "data": [{"kind": "synthetic", "scenes": 60, "seed": 31}],
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "optimizer": {"lr": 1.0e-6, "warmup_steps": 0},
    "steps": 1,
    "batch_size": 4,
    "precision": "fp32",
    "seed": 0,
    "eval": {"holdout_fraction": 0.2, "max_records": 12, "guard_scenes": 0, "batch_size": 12, "max_new_tokens": 48},
    "registration_rule": {"primary_metric": "cider_d", "min_improvement": 0.05},
    "mlflow_experiment": "train-job-tests",
}
# Run 1's overrides: an adapter wrecked by a huge learning rate, made champion anyway (the
# first version, with a rule that promotes anything), so that a sane run 2 really is better.
BROKEN_CHAMPION = ["optimizer.lr=0.5", "steps=4", "registration_rule.min_improvement=-1000"]


def write_config(tmp_path: Path) -> tuple[Path, str]:
    model = f"train-job-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "registered_model": model}))
    return path, model


def train(config: Path, out: Path, overrides: list[str] = ()) -> dict:
    """`snap2caption train --config ... [--set ...]`, in this process; returns its summary.json."""
    from snap2caption_service.cli import main

    argv = ["train", "--config", str(config), "--output-dir", str(out)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_second_train_is_scored_against_the_champion_and_promoted(mlflow_uri, demo_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from training.registry import Registry

    config, model = write_config(tmp_path)
    registry = Registry(model)

    first = train(config, tmp_path / "run1", BROKEN_CHAMPION)
    assert first["promoted"] and registry.champion().version == first["version"] == "1"
    assert registry.version("1").tags["gate_compared_with"] == "none"
    # Broken indeed: far below the demo model it was compared with.
    assert first["candidate"]["cider_d"] < first["baseline"]["cider_d"] - 1.0, first["decision"]

    second = train(config, tmp_path / "run2")
    v2 = registry.version("2")
    # Better than the champion it was scored against: promoted, the alias moved.
    assert v2.tags["gate_decision"] == "promoted", v2.tags
    assert registry.champion().version == "2" and registry.version("1").aliases == ()
    assert second["promoted"] and second["version"] == "2"
    # ... and that baseline was the champion, v1's adapter, not the bare demo model: the same
    # adapter on the same eval records scores what v1 scored when it was the candidate.
    assert v2.tags["gate_compared_with"] == "1"
    assert second["baseline"]["cider_d"] == pytest.approx(first["candidate"]["cider_d"], abs=1e-6)
    assert float(v2.tags["champion_metric.cider_d"]) == pytest.approx(first["candidate"]["cider_d"], abs=1e-6)
    assert "vs champion" in v2.tags["gate_reason"]
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(second["run_id"])
    assert run.data.tags["champion_version"] == "1"
    assert (first["compared_with"], second["compared_with"]) == ("base model", "champion v1")


@pytest.mark.parametrize("another_job_promotes", [False, True], ids=["champion-unchanged", "champion-changed"])
def test_promotion_is_refused_only_when_the_champion_changed_meanwhile(
    mlflow_uri, demo_model_dir, tmp_path, monkeypatch, another_job_promotes
):
    """A candidate the gate promotes replaces the champion it was scored against; if another job
    promoted a version while this one trained, the registry still refuses the promotion."""
    from training import train_job
    from training.gate import GateDecision
    from training.registry import ChampionChanged, Registry

    config, model = write_config(tmp_path)
    registry = Registry(model)
    first = train(config, tmp_path / "run1", BROKEN_CHAMPION)
    assert registry.champion().version == "1"

    real_run = train_job._run

    def run_while_another_job_promotes(*args, **kwargs):
        outcome = real_run(*args, **kwargs)
        other = registry.register(first["run_id"])  # v2: another job's candidate
        registry.apply_gate(other.version, GateDecision(True, "another job"), expected_champion="1")
        return outcome

    if another_job_promotes:
        monkeypatch.setattr(train_job, "_run", run_while_another_job_promotes)
    promote_anything = ["registration_rule.min_improvement=-1000"]
    if not another_job_promotes:
        second = train(config, tmp_path / "run2", promote_anything)
        assert second["promoted"] and registry.champion().version == second["version"] == "2"
        assert registry.version("2").tags["gate_compared_with"] == "1"
        return
    with pytest.raises(ChampionChanged, match="now version 2, not 1"):
        train(config, tmp_path / "run2", promote_anything)
    assert registry.champion().version == "2"
    v3 = registry.version("3")  # registered, but neither champion nor claiming it was promoted
    assert v3.aliases == () and v3.tags.get("gate_decision") == "aborted", v3.tags  # a verdict, not silence
    assert "ChampionChanged" in v3.tags["gate_error"]
