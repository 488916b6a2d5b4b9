"""The promotion gate (pure unit tests) and the registry + run logging against the real MLflow
tracking server started by infra/mlflow.sh (sqlite backend, artifacts served over HTTP)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
import yaml

from training.gate import GateDecision, GateRule, decide

# --- the gate, no server -------------------------------------------------------------------

RULE = GateRule(min_improvement=0.05, guarded={"bleu4": 0.01, "hashtag_f1": 0.02})
CHAMP = {"cider_d": 1.00, "bleu4": 0.30, "hashtag_f1": 0.50}


def test_first_version_is_promoted():
    d = decide({"cider_d": 0.2, "bleu4": 0.1, "hashtag_f1": 0.0}, None, RULE)
    assert d.promote and "first version" in d.reason


def test_promotes_when_primary_beats_margin_and_guards_hold():
    d = decide({"cider_d": 1.06, "bleu4": 0.295, "hashtag_f1": 0.49}, CHAMP, RULE)
    assert d.promote, d.reason
    assert "cider_d 1.0600 vs champion 1.0000" in d.reason


@pytest.mark.parametrize("cider", [1.05, 1.02, 1.0, 0.7])
def test_holds_when_primary_does_not_beat_margin(cider):
    d = decide({"cider_d": cider, "bleu4": 0.4, "hashtag_f1": 0.6}, CHAMP, RULE)
    assert not d.promote
    assert "not enough improvement" in d.reason and "needs > +0.0500" in d.reason


def test_zero_margin_still_needs_strict_improvement():
    rule = GateRule()
    assert not decide({"cider_d": 1.0}, {"cider_d": 1.0}, rule).promote
    assert decide({"cider_d": 1.0001}, {"cider_d": 1.0}, rule).promote


def test_holds_when_a_guarded_metric_regresses_beyond_tolerance():
    d = decide({"cider_d": 1.5, "bleu4": 0.28, "hashtag_f1": 0.50}, CHAMP, RULE)
    assert not d.promote
    assert d.reason == "guarded bleu4 regressed by 0.0200 (0.3000 -> 0.2800), tolerance 0.0100"
    both = decide({"cider_d": 1.0, "bleu4": 0.28, "hashtag_f1": 0.40}, CHAMP, RULE)
    assert not both.promote and both.reason.count(";") == 2  # primary + two guards, all named


def test_lower_is_better_metrics():
    rule = GateRule(
        primary_metric="cider_d", guarded={"caption_words_mean": 2.0}, lower_is_better=frozenset({"caption_words_mean"})
    )
    champ = {"cider_d": 1.0, "caption_words_mean": 12.0}
    assert decide({"cider_d": 1.1, "caption_words_mean": 13.9}, champ, rule).promote
    assert decide({"cider_d": 1.1, "caption_words_mean": 5.0}, champ, rule).promote  # shorter: fine
    held = decide({"cider_d": 1.1, "caption_words_mean": 14.5}, champ, rule)
    assert not held.promote and "caption_words_mean regressed by 2.5000" in held.reason


@pytest.mark.parametrize("config", ["demo-lora.yaml", "demo-retrain.yaml", "llava-1.5-7b-lora.yaml"])
def test_shipped_rules_refuse_a_candidate_whose_alt_text_gets_worse(config):
    from training.config import load_config

    rule = load_config(Path(__file__).resolve().parent.parent / "training" / "configs" / config).gate_rule()
    tolerance = rule.guarded["alt_text_lint_pass"]
    champ = {"cider_d": 1.0, **{m: 0.9 for m in rule.guarded}}
    better = {**champ, "cider_d": 2.0}
    assert decide({**better, "alt_text_lint_pass": 0.9 - tolerance}, champ, rule).promote
    assert decide({**better, "alt_text_lint_pass": 1.0}, champ, rule).promote  # higher is better
    held = decide({**better, "alt_text_lint_pass": 0.9 - tolerance - 0.02}, champ, rule)
    assert not held.promote and "guarded alt_text_lint_pass regressed" in held.reason


def test_missing_metrics_raise_and_non_finite_values_hold():
    with pytest.raises(ValueError, match=r"candidate metrics lack \['hashtag_f1'\]"):
        decide({"cider_d": 2.0, "bleu4": 0.5}, CHAMP, RULE)
    with pytest.raises(ValueError, match="champion metrics lack"):
        decide({"cider_d": 2.0, "bleu4": 0.5, "hashtag_f1": 0.5}, {"cider_d": 1.0}, RULE)
    d = decide({"cider_d": math.nan, "bleu4": 0.5, "hashtag_f1": 0.5}, None, RULE)
    assert not d.promote and "not a finite number" in d.reason


def test_rule_from_config_yaml():
    section = yaml.safe_load("""
registration_rule:
  primary_metric: cider_d
  min_improvement: 0.05
  guarded: {bleu4: 0.01, hashtag_f1: 0.02}
  lower_is_better: [caption_words_mean]
""")["registration_rule"]
    rule = GateRule.from_dict(section)
    assert rule == GateRule(
        min_improvement=0.05,
        guarded={"bleu4": 0.01, "hashtag_f1": 0.02},
        lower_is_better=frozenset({"caption_words_mean"}),
    )
    assert GateRule.from_dict(rule.to_dict()) == rule
    assert GateRule.from_dict(None) == GateRule() and GateRule().primary_metric == "cider_d"
    with pytest.raises(ValueError, match="unknown keys"):
        GateRule.from_dict({"min_improvment": 0.1})
    with pytest.raises(ValueError, match="guarded.bleu4 must be a finite number >= 0"):
        GateRule.from_dict({"guarded": {"bleu4": -0.1}})
    with pytest.raises(ValueError, match="min_improvement must be a finite number"):
        GateRule.from_dict({"min_improvement": "a lot"})


def test_tracking_refuses_to_run_without_a_server(monkeypatch):
    from training.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError, match="infra/mlflow.sh start"):
        tracking_uri()
    with pytest.raises(RuntimeError, match="not a tracking server URL"):
        tracking_uri("sqlite:///mlflow.db")


# --- against the real server ---------------------------------------------------------------


def make_adapter(folder: Path, marker: str) -> Path:
    """A PEFT-adapter-shaped folder; the registry treats its files as opaque."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "marker": marker, "base_model_name_or_path": "llava-base"})
    )
    (folder / "adapter_model.safetensors").write_bytes(marker.encode() * 64)
    return folder


def logged_run(tmp_path: Path, marker: str, metrics: dict | None = None) -> str:
    """One training run through the tracking helpers; returns its run id."""
    from training.tracking import log_adapter, log_eval, start_run

    with start_run("registry-tests", f"run-{marker}", {"lora": {"r": 8}}) as run:
        if metrics:
            log_eval(metrics)
        log_adapter(make_adapter(tmp_path / f"adapter-{marker}", marker))
    return run.info.run_id


def new_registry():
    from training.registry import Registry

    return Registry(name=f"test-captioner-{uuid.uuid4().hex[:8]}")


@pytest.mark.mlflow
def test_script_is_idempotent_and_reports_status(mlflow_server):
    assert mlflow_server.start() == mlflow_server.uri  # already running: same URI, no second server
    status = mlflow_server.status()
    assert status.returncode == 0 and f"MLFLOW_TRACKING_URI={mlflow_server.uri}" in status.stdout
    assert (mlflow_server.data_dir / "mlflow.db").is_file()


@pytest.mark.mlflow
def test_run_records_params_metrics_datasets_and_artifacts(mlflow_uri, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from training.caption_metrics import PredictionRow, evaluate, write_predictions_table
    from training.tracking import log_adapter, log_dataset, log_eval, log_step, start_run

    rows = [
        PredictionRow(
            "img-1",
            "a red circle on blue",
            "a red circle on a blue background",
            ("#red", "#circle"),
            ("#red", "#circle", "#blue"),
        ),
        PredictionRow("img-2", "coffee first", "coffee first questions later", ("#coffee",), ("#coffee",)),
    ]
    metrics = evaluate(rows)
    table = write_predictions_table(rows, tmp_path / "predictions.csv")
    config = {"base_model": "demo", "lora": {"r": 8, "alpha": 16}, "registration_rule": {"min_improvement": 0.05}}
    with start_run("tracking-tests", "full-run", config, params={"seed": 3}, tags={"trigger": "test"}) as run:
        for step, loss in enumerate([2.0, 1.5, 1.2]):
            log_step({"loss": loss, "lr": 1e-4}, step)
        log_dataset("feedback-snapshot", "a1b2c3d4", tmp_path / "snapshot", 120, "training")
        log_dataset("eval-set", "e5f6a7b8", "s3://snap2caption/eval/v1", 2, "evaluation")
        log_eval(metrics, table)
        log_eval(metrics, table, prefix="champion_")
        log_adapter(make_adapter(tmp_path / "adapter", "full"))

    client = MlflowClient(tracking_uri=mlflow_uri)
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["lora.r"] == "8" and got.data.params["seed"] == "3"
    assert got.data.params["registration_rule.min_improvement"] == "0.05"
    assert got.data.tags["trigger"] == "test"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5, 1.2]
    assert got.data.metrics["cider_d"] == pytest.approx(metrics["cider_d"])
    assert got.data.metrics["champion_hashtag_recall"] == pytest.approx(metrics["hashtag_recall"])

    inputs = {d.dataset.name: d for d in got.inputs.dataset_inputs}
    assert set(inputs) == {"feedback-snapshot", "eval-set"}
    train = inputs["feedback-snapshot"]
    assert train.dataset.digest == "a1b2c3d4" and json.loads(train.dataset.profile) == {"num_rows": 120}
    assert str(tmp_path / "snapshot") in train.dataset.source
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "training"
    assert {t.key: t.value for t in inputs["eval-set"].tags}["mlflow.data.context"] == "evaluation"

    def listing(path=None):
        return sorted(f.path for f in client.list_artifacts(run.info.run_id, path))

    assert listing() == ["adapter", "config.yaml", "eval"]
    assert listing("adapter") == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    assert listing("eval") == ["eval/champion", "eval/predictions.csv"]
    config_back = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    assert config_back == config
    # Uploaded through the server (mlflow-artifacts:/ proxy) into the server's own data dir.
    assert got.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = list((mlflow_server.data_dir / "artifacts").rglob("predictions.csv"))
    assert stored, "artifacts did not land in the server's artifact root"


@pytest.mark.mlflow
def test_run_fails_loudly_on_bad_input(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from training.tracking import log_adapter, log_eval, start_run

    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        with start_run("tracking-tests", "bad-adapter") as run:
            log_adapter(tmp_path)
    assert MlflowClient(tracking_uri=mlflow_uri).get_run(run.info.run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="finite numbers"):
        with start_run("tracking-tests", "bad-metric"):
            log_eval({"cider_d": float("nan")})


@pytest.mark.mlflow
def test_gate_lifecycle(mlflow_uri, tmp_path):
    reg = new_registry()
    assert reg.champion() is None and reg.aliases() == {}

    # v1: no champion yet -> champion.
    v1 = reg.register(logged_run(tmp_path, "v1"), tags={"eval_set": "e5f6a7b8"})
    assert v1.version == "1" and v1.tags["eval_set"] == "e5f6a7b8" and not v1.aliases
    m1 = {"cider_d": 1.0, "bleu4": 0.30, "hashtag_f1": 0.50}
    out = reg.apply_gate(v1.version, decide(m1, None, RULE), m1, RULE, expected_champion=None)
    assert out.aliases == ("champion",) and out.tags["gate_decision"] == "promoted"
    assert out.tags["metric.cider_d"] == "1.0" and out.tags["gate_compared_with"] == "none"
    assert json.loads(out.tags["gate_rule"])["min_improvement"] == 0.05

    # v2: beats the margin, guards hold -> champion; v1 loses the alias.
    v2 = reg.register(logged_run(tmp_path, "v2"))
    m2 = {"cider_d": 1.2, "bleu4": 0.295, "hashtag_f1": 0.55}
    reg.apply_gate(v2.version, decide(m2, m1, RULE), m2, RULE, expected_champion="1")
    assert reg.champion().version == "2" and reg.version("1").aliases == ()
    assert reg.version("2").tags["champion_metric.cider_d"] == "1.0"

    # v3: worse -> challenger, with the reason; champion unchanged.
    v3 = reg.register(logged_run(tmp_path, "v3"))
    m3 = {"cider_d": 1.1, "bleu4": 0.35, "hashtag_f1": 0.6}
    reg.apply_gate(v3.version, decide(m3, m2, RULE), m3, RULE)
    info3 = reg.version("3")
    assert info3.aliases == ("challenger",) and info3.tags["gate_decision"] == "challenger"
    assert "not enough improvement" in info3.tags["gate_reason"]

    # v4: better CIDEr-D but a guarded metric regresses -> challenger (moves from v3).
    v4 = reg.register(logged_run(tmp_path, "v4"))
    m4 = {"cider_d": 1.5, "bleu4": 0.20, "hashtag_f1": 0.55}
    reg.apply_gate(v4.version, decide(m4, m2, RULE), m4, RULE)
    assert reg.aliases() == {"champion": "2", "challenger": "4"}
    assert reg.version("4").tags["gate_reason"].startswith("guarded bleu4 regressed by 0.0950")

    # The served adapter is v2's files.
    adapter = reg.download("champion", tmp_path / "download")
    assert json.loads((adapter / "adapter_config.json").read_text())["marker"] == "v2"
    assert reg.download(4, tmp_path / "download-4").joinpath("adapter_model.safetensors").read_bytes() == b"v4" * 64
    with pytest.raises(LookupError, match="no version with alias 'canary'"):
        reg.resolve("canary")


@pytest.mark.mlflow
def test_register_refuses_a_run_without_adapter(mlflow_uri):
    from training.tracking import start_run

    with start_run("registry-tests", "no-adapter") as run:
        pass
    with pytest.raises(FileNotFoundError, match="no PEFT adapter under artifact path 'adapter'"):
        new_registry().register(run.info.run_id)


def champion_and_candidate(tmp_path):
    reg = new_registry()
    v1 = reg.register(logged_run(tmp_path, "champ"))
    reg.apply_gate(v1.version, GateDecision(True, "first version"), {"cider_d": 1.0})
    v2 = reg.register(logged_run(tmp_path, "cand"))
    better = decide({"cider_d": 2.0}, {"cider_d": 1.0}, GateRule())
    assert better.promote
    return reg, v2, better


@pytest.mark.mlflow
def test_failure_midway_leaves_champion_untouched(mlflow_uri, tmp_path):
    from mlflow.exceptions import MlflowException

    from training.registry import ChampionChanged

    reg, v2, better = champion_and_candidate(tmp_path)
    # The server rejects a metric name too long for a tag key (250 chars), after the gate tags
    # were written: a real mid-way failure, before the alias move.
    with pytest.raises(MlflowException, match="exceeds the maximum length"):
        reg.apply_gate(v2.version, better, {"cider_d": 2.0, "per_row_" + "x" * 300: 1.0})
    assert reg.aliases() == {"champion": "1"}
    tags = reg.version(v2.version).tags
    assert tags["gate_decision"] == "failed" and "maximum length" in tags["gate_error"]

    # Evaluated against a champion that is no longer the champion: refused, and the refusal is
    # the version's verdict (a version never stays without one after the gate ran).
    with pytest.raises(ChampionChanged, match="re-run the evaluation"):
        reg.apply_gate(v2.version, better, {"cider_d": 2.0}, expected_champion="7")
    assert reg.aliases() == {"champion": "1"}
    tags = reg.version(v2.version).tags
    assert tags["gate_decision"] == "aborted" and "ChampionChanged" in tags["gate_error"]


@pytest.mark.mlflow
def test_concurrent_promotion_wins_and_late_one_aborts(mlflow_uri, tmp_path, monkeypatch):
    from training.registry import ChampionChanged, Registry

    reg, v2, better = champion_and_candidate(tmp_path)
    v3 = reg.register(logged_run(tmp_path, "other-retrain"))
    other = Registry(name=reg.name)  # another retrain job, with its own client
    real_set_tag = reg.client.set_model_version_tag

    def set_tag_while_other_job_promotes(*args, **kwargs):
        if args[2] == "gate_reason":
            other.apply_gate(v3.version, GateDecision(True, "other job's win"), expected_champion="1")
        return real_set_tag(*args, **kwargs)

    monkeypatch.setattr(reg.client, "set_model_version_tag", set_tag_while_other_job_promotes)
    with pytest.raises(ChampionChanged, match="now version 3"):
        reg.apply_gate(v2.version, better, {"cider_d": 2.0}, expected_champion="1")
    assert reg.aliases() == {"champion": "3"}
    tags = reg.version(v2.version).tags
    assert tags["gate_decision"] == "aborted" and "re-run the evaluation" in tags["gate_error"]


@pytest.mark.mlflow
def test_server_down_midway_leaves_champion_untouched(mlflow_uri, mlflow_server, tmp_path, monkeypatch):
    reg, v2, better = champion_and_candidate(tmp_path)
    # Without this the client retries a refused connection with backoff for minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # The real server really goes away after the gate's second tag write.
    real_set_tag, written = reg.client.set_model_version_tag, []

    def set_tag_then_maybe_stop_server(*args, **kwargs):
        result = real_set_tag(*args, **kwargs)
        written.append(args[2])
        if len(written) == 2:
            mlflow_server.stop()
        return result

    monkeypatch.setattr(reg.client, "set_model_version_tag", set_tag_then_maybe_stop_server)
    try:
        with pytest.raises(Exception, match="(?i)connection|max retries"):
            reg.apply_gate(v2.version, better, {"cider_d": 2.0}, expected_champion="1")
    finally:
        mlflow_server.start()  # same data dir and port: later tests see the same server
    assert written == ["gate_decision", "gate_reason"]
    assert reg.aliases() == {"champion": "1"}
    v2_now = reg.version(v2.version)
    assert v2_now.aliases == () and v2_now.tags["gate_decision"] == "pending"


def _no_demo(data_dir, progress):
    raise AssertionError("the demo model is not needed here")


@pytest.mark.mlflow
def test_a_bento_that_packages_the_champion_serves_it_without_downloading(mlflow_uri, tmp_path, monkeypatch):
    """`import-model --champion` bakes the champion into the Bento; a pod started with MLflow
    configured then serves those weights instead of downloading and merging the adapter. A
    Bento holding another version still gets the champion from the registry."""
    from snap2caption_service.core.model_loading import champion_choice
    from snap2caption_service.core.model_store import StoredCaptioner
    from snap2caption_service.core.registry import RegistryReader
    from snap2caption_service.core.settings import Settings

    reg = new_registry()
    v1 = reg.register(logged_run(tmp_path, "champ"))
    reg.apply_gate(v1.version, GateDecision(True, "first version"), {"cider_d": 1.0})
    settings = Settings(data_dir=tmp_path / "data", registered_model=reg.name)

    def packaged(version):
        return StoredCaptioner(
            tag=f"snap2caption-captioner:{version}",
            path=tmp_path / "bento-weights",
            version=version,
            source="",
            base_model="",
            adapter="",
        )

    def no_download(self, *a, **k):
        raise AssertionError("downloaded although the Bento holds the champion")

    with monkeypatch.context() as m:
        m.setattr(RegistryReader, "download", no_download)
        same = champion_choice(settings, _no_demo, packaged(f"{reg.name}:v1"))
    assert (same.ref, same.adapter, same.version) == (str(tmp_path / "bento-weights"), "", f"{reg.name}:v1")

    older = champion_choice(settings, _no_demo, packaged(f"{reg.name}:v0"))
    assert older.version == f"{reg.name}:v1" and older.ref == "llava-base"
    assert json.loads((Path(older.adapter) / "adapter_config.json").read_text())["marker"] == "champ"
