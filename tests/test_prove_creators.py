"""Proof that per-creator adapters learn each creator's house style and only theirs (issue 17 §3,
the training half), as `python -m training.prove_creators` runs it: three styled
creators and two quiet ones; after `retrain` each styled creator's held-out captions adopt their
style (>= 80%), no creator's style shows in another's captions (<= 5%), the quiet creators get
the champion's answers, and every adapter's colour+shape accuracy is within 2 points of it.
"""

from __future__ import annotations

import uuid

import pytest

from stream_support import bootstrap  # noqa: F401  (fixture)
from training.prove_creators import QUIET, STYLES, run_proof

# Three creator fine-tunes and their evaluations plus five held-out passes: about 4 minutes on an
# idle 2-core machine. The proof's own numbers (160 events, 150 held-out scenes): with 80 events
# creator-weekend's adapter lost 3 points on the guard scenes and was refused
# (docs/notes/retraining-gate.md), so the test runs what the issue asks of the proof.
pytestmark = [pytest.mark.kafka, pytest.mark.mlflow, pytest.mark.quality, pytest.mark.timeout(2400)]


def test_each_creator_gets_their_style_and_only_theirs(tmp_path, bootstrap, mlflow_uri, demo_model_dir, monkeypatch):
    from snap2caption_service.core.settings import get_settings

    tag = uuid.uuid4().hex[:8]
    topic = f"prove-creators-{tag}.feedback"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.setenv("SNAP2CAPTION_TOPIC_FEEDBACK", topic)
    monkeypatch.setenv("SNAP2CAPTION_REGISTERED_MODEL", f"prove-creators-{tag}")
    get_settings.cache_clear()
    try:
        report = run_proof(bootstrap, topic, tmp_path, events=160, held_out=150)
    finally:
        get_settings.cache_clear()
    print(report.table())
    assert {c.creator_id for c in report.checks} == set(STYLES) | set(QUIET)
    assert report.passed(), report.table()
