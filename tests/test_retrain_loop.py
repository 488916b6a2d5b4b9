"""Proof that the feedback loop closes, on real services (issue: feedback-driven retraining §7).

The demo-model service captions 240 photos; creators edit every caption to one house style
(thumbs-down + edit over HTTP -> caption.feedback on the real broker); `retrain` snapshots the
topic, fine-tunes a LoRA adapter, evaluates it against the demo model and registers it in the
real MLflow server. The new champion must adopt the style on >= 80% of held-out scenes with
colour+shape accuracy down by <= 2 points, the restarted service must serve it, and a round of
shuffled (wrong) edits must be refused by the gate. training/prove_loop.py is the same run as a
script (make prove-loop).
"""

from __future__ import annotations

import uuid

import pytest

from conftest import start_service, stop_service
from stream_support import bootstrap  # noqa: F401  (fixture)
from training.prove_loop import PHRASE, run_proof

# Two fine-tunes plus four evaluations: ~6 min on 2 idle cores, much longer on a busy machine.
pytestmark = [pytest.mark.kafka, pytest.mark.service, pytest.mark.quality, pytest.mark.timeout(2400)]


def test_feedback_retrain_promote_serve_and_refuse(tmp_path, bootstrap, mlflow_uri, demo_model_dir, monkeypatch):
    from snap2caption_service.core.settings import get_settings

    tag = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SNAP2CAPTION_TOPIC_FEEDBACK": f"loop-{tag}.feedback",
        "SNAP2CAPTION_REGISTERED_MODEL": f"loop-{tag}",
        "SNAP2CAPTION_ARCHIVE": str(tmp_path / "archive"),
        "SNAP2CAPTION_MAX_NEW_TOKENS": "128",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    for sub in ("first", "second"):
        (tmp_path / sub).mkdir()
    svc = start_service(tmp_path / "first", demo_model_dir, env)
    running = [svc]

    def restart_with_mlflow() -> str:
        stop_service(running[-1].proc)
        # No explicit model: with MLFLOW_TRACKING_URI set, the service must pick the champion.
        again = start_service(
            tmp_path / "second", demo_model_dir, {**env, "SNAP2CAPTION_MODEL": "", "MLFLOW_TRACKING_URI": mlflow_uri}
        )
        running.append(again)
        return again.url

    try:
        report = run_proof(
            svc.url,
            bootstrap,
            env["SNAP2CAPTION_TOPIC_FEEDBACK"],
            tmp_path,
            events=240,
            restart_service=restart_with_mlflow,
        )
    finally:
        for s in running:
            stop_service(s.proc)
        get_settings.cache_clear()
    print(report.table())
    assert report.retrain["status"] == "promoted", report.retrain
    assert report.adoption >= 0.80, report.table()
    assert report.accuracy_drop <= 0.02, report.table()
    assert report.served_version == f"loop-{tag}:v{report.retrain['version']}"
    assert report.served_caption.startswith(PHRASE.strip()), report.served_caption
    assert report.degraded["status"] == "held", report.degraded
    assert report.champion_after_degraded == report.retrain["version"]
    assert report.passed()
