"""Feedback to the training topic: POST /feedback reaches caption.feedback (key =
feedback_id), shipped from the feedback log; feedback sent while the broker is down arrives
after it comes back, exactly once and in order. This test runs its own broker (another port and
data dir) so it can stop it without disturbing the shared one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

import httpx
import pytest

from conftest import png_bytes, start_service, stop_service
from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import FeedbackRecord
from stream_support import KAFKA_SH, create_topics, ensure_broker, free_port_pair, read_topic, topic_env, wait_for


@pytest.mark.kafka
@pytest.mark.service
def test_feedback_sent_while_broker_is_down_arrives_once_in_order(tmp_path, tiny_model_dir):
    """...and feedback left waiting at SIGTERM goes out after the restart, also once."""
    kafka_env = {
        "KAFKA_PORT": str(free_port_pair()),
        "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
        "KAFKA_HEAP": "-Xms128m -Xmx384m",
    }

    def kafka(cmd: str):
        subprocess.run(
            ["bash", str(KAFKA_SH), cmd],
            env={**os.environ, **kafka_env},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    bootstrap = ensure_broker(kafka_env)
    topics = topic_env("feedback")
    topic = topics["SNAP2CAPTION_TOPIC_FEEDBACK"]
    create_topics(bootstrap, {"SNAP2CAPTION_TOPIC_FEEDBACK": topic}, partitions=1)  # one order to check
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SNAP2CAPTION_TOPIC_FEEDBACK": topic,
        "SNAP2CAPTION_FEEDBACK_DRAIN_TIMEOUT_S": "3",
    }
    svc = start_service(tmp_path, tiny_model_dir, env)
    log = tmp_path / "data" / "feedback.jsonl"

    def waiting() -> int:
        """Bytes of the feedback log the publisher's cursor has not passed."""
        cursor_file = log.with_name(log.name + ".cursor")
        cursor = json.loads(cursor_file.read_text()) if cursor_file.exists() else {"offset": 0, "done": []}
        return log.stat().st_size - cursor["offset"] - sum(e - s for s, e in cursor["done"])

    sent: list[str] = []
    # Feedback must name captions the service really returned (it 404s unknown request ids).
    request_ids = [
        httpx.post(
            svc.url + "/generate-caption",
            timeout=120,
            json={"image": base64.b64encode(png_bytes((i * 30, 80, 120))).decode()},
        ).json()["request_id"]
        for i in range(10)
    ]

    def post(i: int) -> float:
        t0 = time.monotonic()
        r = httpx.post(
            svc.url + "/feedback",
            timeout=30,
            json={
                "request_id": request_ids[i],
                "rating": "up" if i % 2 else "down",
                "creator_id": "c1",
                "edited_caption": f"edit number {i}",
            },
        )
        assert r.status_code == 202, r.text
        sent.append(r.json()["feedback_id"])
        return time.monotonic() - t0

    try:
        for i in range(3):
            post(i)
        assert len(read_topic(bootstrap, topic, 3, timeout=60, settle=0.5)) == 3

        kafka("stop")
        slowest = max(post(i) for i in range(3, 8))
        assert slowest < 5, "feedback must not wait for an absent broker"
        time.sleep(2)
        assert waiting() > 0  # queued on disk while the broker is away

        kafka("start")
        wait_for(lambda: waiting() == 0, 60, "the feedback log to be shipped")

        # SIGTERM while the broker is away: the drain starts at the signal, gives up at its
        # deadline (3 s) and says what is left; the next start (same data dir, the locks
        # released) ships it, once.
        kafka("stop")
        post(8)
        post(9)
        stop_service(svc.proc)
        assert "feedback publisher stopped;" in svc.log() and "not yet on" in svc.log(), svc.log()[-3000:]
        kafka("start")
        svc = start_service(tmp_path, tiny_model_dir, env)
        wait_for(lambda: waiting() == 0, 60, "the rest of the feedback log to be shipped")
        records = read_topic(bootstrap, topic, len(sent), timeout=120, settle=3)
    finally:
        stop_service(svc.proc)
        subprocess.run(
            ["bash", str(KAFKA_SH), "stop"], env={**os.environ, **kafka_env}, capture_output=True, timeout=120
        )

    assert [r.key.decode() for r in records] == sent  # exactly once each, in the order received
    for record, feedback_id in zip(records, sent):
        event = cloudevents.from_kafka(record.value, record.headers)
        assert event.type == "com.snap2caption.caption.feedback" and event.id == feedback_id
        assert FeedbackRecord.model_validate(event.json()).feedback_id == feedback_id
