"""Proof that per-creator adapters learn each creator's house style and only theirs (issue 17 §3,
the training half), with fewer events than `python -m training.prove_creators`: three styled
creators and two quiet ones; after `retrain` each styled creator's held-out captions adopt their
style (>= 80%), no creator's style shows in another's captions (<= 5%), the quiet creators get
the champion's answers, and every adapter's colour+shape accuracy is within 2 points of it.
"""

from __future__ import annotations

import uuid

import pytest

from stream_support import bootstrap  # noqa: F401  (fixture)
from training.prove_creators import QUIET, STYLES, run_proof

# Three creator fine-tunes and their evaluations plus five held-out passes: minutes on 2 cores.
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.mlflow,
    pytest.mark.quality,
    pytest.mark.timeout(2400),
    # Not passing yet (issue 17 stays open): every creator adapter trained so far loses 2.5-8.5
    # points of colour+shape on the guard scenes and the gate refuses it. Remove this
    # mark once demo-creator.yaml learns a style without that loss.
    pytest.mark.skip(
        reason="issue 17: creator adapters are refused by the colour+shape guard (README, Per-creator voices)"
    ),
]


def test_each_creator_gets_their_style_and_only_theirs(tmp_path, bootstrap, mlflow_uri, demo_model_dir, monkeypatch):
    from snap2caption_service.core.settings import get_settings

    tag = uuid.uuid4().hex[:8]
    topic = f"prove-creators-{tag}.feedback"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.setenv("SNAP2CAPTION_TOPIC_FEEDBACK", topic)
    monkeypatch.setenv("SNAP2CAPTION_REGISTERED_MODEL", f"prove-creators-{tag}")
    get_settings.cache_clear()
    try:
        report = run_proof(bootstrap, topic, tmp_path, events=80, held_out=100)
    finally:
        get_settings.cache_clear()
    print(report.table())
    assert {c.creator_id for c in report.checks} == set(STYLES) | set(QUIET)
    assert report.passed(), report.table()
